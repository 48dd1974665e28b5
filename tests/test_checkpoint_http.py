"""The URL downloader (skinapp/checkpoints/_http.py, SAM's files): requests sent, resumes, retries, mirrors, checks.

``requests.Session`` is replaced by a fake web that answers from bytes held here (a ``Range: bytes=N-`` request
gets ``206`` and ``Content-Range``, as a real server answers), can drop a body part-way or answer a scripted
status, and records every request; ``time.sleep`` records its pauses. No socket is opened. The same downloader
against a real HTTP server on 127.0.0.1 is tested in tests/test_checkpoints.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from skinapp import __version__
from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing, _http
from skinapp.checkpoints._errors import DownloadError

URL, MIRROR = "https://example.invalid/toy.bin", "https://mirror.example.invalid/toy.bin"
DATA = os.urandom(5000)
SHA, SIZE = hashlib.sha256(DATA).hexdigest(), len(DATA)
LOGGER = "skinapp.checkpoints._http"
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 410: "Gone", 416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


class _Web:
    """What the fake sessions answer: ``files`` (with Range support), ``script`` (answered first, in order),
    ``drop_after`` (body bytes sent before the connection closes, once), ``ignore_range``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {URL: DATA, MIRROR: DATA}
        self.script: dict[str, list[tuple[int, bytes, dict]]] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.gets: list[dict] = []
        self.user_agents: list[str | None] = []

    def answer(self, url: str, headers: dict) -> requests.Response:
        if self.script.get(url):
            status, body, extra = self.script[url].pop(0)
            return _response(url, status, body, extra)
        data = self.files[url]
        start = int(headers["Range"].removeprefix("bytes=").rstrip("-")) if "Range" in headers else 0
        if start and not self.ignore_range:
            status, body = 206, data[start:]
            extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        else:
            status, body, extra = 200, data, {}
        extra["Content-Length"] = str(len(body))
        return _response(url, status, body[:self.drop_after.pop(url, len(body))], extra)

    def session(self) -> _Session:
        return _Session(self)


class _Session:
    def __init__(self, web: _Web) -> None:
        self.web, self.headers = web, {}

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc) -> None:
        self.web.user_agents.append(self.headers.get("User-Agent"))

    def get(self, url, *, headers, stream, timeout):
        self.web.gets.append({"url": url, "headers": dict(headers), "stream": stream, "timeout": timeout})
        return self.web.answer(url, headers)


def _response(url: str, status: int, body: bytes, headers: dict) -> requests.Response:
    resp = requests.Response()
    resp.status_code, resp.url, resp.reason = status, url, _REASONS[status]
    resp.headers = CaseInsensitiveDict(headers)
    resp.raw = io.BytesIO(body)
    return resp


@pytest.fixture
def web(tmp_path, monkeypatch):
    """The fake web; pauses recorded, not slept; connecting a real socket fails the test."""
    fake = _Web()
    monkeypatch.setattr(_http.requests, "Session", fake.session)
    sleeps: list[float] = []
    monkeypatch.setattr(_http.time, "sleep", sleeps.append)

    def no_network(sock, address):
        raise AssertionError(f"a downloader test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    _hashing._memory.clear()
    fake.sleeps, fake.dest = sleeps, tmp_path / "ckpts" / "toy.bin"
    return fake


def _fetch(web, urls=(URL,), *, size=SIZE, sha256=SHA, retries=3, wait=0.5, progress=False) -> str:
    return _http.fetch(list(urls), web.dest, size=size, sha256=sha256, retries=retries, retry_wait_s=wait,
                       progress=progress)


def _ranges(web) -> list[str | None]:
    return [g["headers"].get("Range") for g in web.gets]


# --------------------------------------------------------------------------- a plain download


def test_a_download_is_one_streamed_identity_request_verified_stamped_and_renamed(web):
    assert _fetch(web) == SHA

    assert web.dest.read_bytes() == DATA and not web.dest.with_name("toy.bin.part").exists()
    assert web.gets == [{"url": URL, "headers": {"Accept-Encoding": "identity"}, "stream": True,
                         "timeout": (15, 60)}]
    assert web.user_agents == [f"skinapp-checkpoints/{__version__}"]
    assert _hashing.read_stamp(web.dest) == SHA
    assert (web.dest.parent / ".locks" / "toy.bin.lock").exists()  # lock files stay, in their own folder


def test_no_url_is_refused_before_anything_is_written(web):
    with pytest.raises(ValueError, match="^no URL to download toy.bin from$"):
        _fetch(web, urls=())
    assert not web.dest.parent.exists()


def test_a_file_another_process_finished_while_we_waited_is_not_fetched_again(web):
    web.dest.parent.mkdir(parents=True)
    web.dest.write_bytes(DATA)
    _hashing.write_stamp(web.dest, SHA)
    assert _fetch(web) == SHA and web.gets == []

    web.dest.write_bytes(DATA)  # rewritten: the stamp no longer vouches for it
    assert _fetch(web) == SHA and len(web.gets) == 1


def test_an_unpinned_file_is_accepted_and_its_digest_returned(web):
    assert _fetch(web, size=None, sha256=None) == SHA
    assert web.dest.read_bytes() == DATA and _hashing.read_stamp(web.dest) == SHA


def test_the_progress_bar_names_the_file_and_can_be_turned_off(web, capsys):
    _fetch(web, progress=False)
    assert capsys.readouterr().err == ""
    web.dest.unlink()
    _fetch(web, progress=True)
    assert "toy.bin" in capsys.readouterr().err


# --------------------------------------------------------------------------- interrupted transfers


def test_a_dropped_connection_is_resumed_after_a_pause_growing_with_each_attempt(web, caplog):
    web.script[URL] = [(200, DATA[:1000], {"Content-Length": str(len(DATA))}),
                       (206, DATA[1000:3000], {"Content-Range": f"bytes 1000-4999/{len(DATA)}",
                                               "Content-Length": "4000"})]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _fetch(web, wait=0.5) == SHA

    assert _ranges(web) == [None, "bytes=1000-", "bytes=3000-"] and web.sleeps == [0.5, 1.0]
    assert [r.getMessage() for r in caplog.records] == [
        "download of toy.bin.part interrupted (attempt 1/4): connection closed after 1000 of 5000 bytes",
        "download of toy.bin.part interrupted (attempt 2/4): connection closed after 3000 of 5000 bytes"]


def test_an_unpinned_file_cut_short_is_noticed_from_its_content_length(web):
    web.drop_after[URL] = 1200
    assert _fetch(web, size=None, sha256=None) == SHA
    assert _ranges(web) == [None, "bytes=1200-"]


def test_a_content_length_that_is_not_a_number_is_not_trusted(web):
    web.script[URL] = [(200, DATA, {"Content-Length": "lots"})]
    assert _fetch(web, size=None, sha256=None) == SHA


def test_a_part_file_from_an_earlier_run_is_resumed(web):
    web.dest.parent.mkdir(parents=True)
    web.dest.with_name("toy.bin.part").write_bytes(DATA[:2000])
    assert _fetch(web) == SHA and _ranges(web) == ["bytes=2000-"]


def test_a_complete_part_file_is_checked_without_a_request(web):
    web.dest.parent.mkdir(parents=True)
    web.dest.with_name("toy.bin.part").write_bytes(DATA)
    assert _fetch(web) == SHA and web.gets == []


def test_a_part_file_longer_than_the_pinned_size_is_started_over(web, caplog):
    web.dest.parent.mkdir(parents=True)
    part = web.dest.with_name("toy.bin.part")
    part.write_bytes(DATA + b"extra")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _fetch(web, progress=True) == SHA  # the bar is on: it starts again from 0 too
    assert _ranges(web) == [None]
    assert [r.getMessage() for r in caplog.records] == [f"{part} is larger than the expected 5000 bytes; starting over"]


def test_a_server_ignoring_range_is_read_again_from_byte_zero(web, caplog):
    web.dest.parent.mkdir(parents=True)
    web.dest.with_name("toy.bin.part").write_bytes(b"x" * 2000)  # whatever it was is overwritten
    web.ignore_range = True
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _fetch(web, progress=True) == SHA  # the bar is on: it starts again from 0 too
    assert [r.getMessage() for r in caplog.records] == [
        "server ignored the Range request for toy.bin.part (HTTP 200); restarting from byte 0"]


@pytest.mark.parametrize(("answer", "why", "sleeps"), [
    ((416, b"", {"Content-Range": f"bytes */{len(DATA)}"}), "server refused Range bytes=2000- (416)", [0.5]),
    ((206, DATA[1000:], {"Content-Range": "bytes 1000-4999/5000"}),
     "server answered Range bytes=2000- with 'bytes 1000-4999/5000'", None),
    ((206, DATA[2000:], {}), "server answered Range bytes=2000- with None", None),  # no Content-Range
], ids=["range refused", "another offset", "no content-range"])
def test_a_resume_the_server_does_not_honour_discards_the_part_file_and_starts_over(web, caplog, answer, why,
                                                                                    sleeps):
    web.dest.parent.mkdir(parents=True)
    web.dest.with_name("toy.bin.part").write_bytes(DATA[:2000])
    web.script[URL] = [answer]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _fetch(web) == SHA
    assert _ranges(web) == ["bytes=2000-", None]
    if sleeps is not None:
        assert web.sleeps == sleeps
    assert [r.getMessage() for r in caplog.records] == [
        f"download of toy.bin.part interrupted (attempt 1/4): {why}; discarded the partial file"]


def test_a_pinned_file_cut_short_is_noticed_by_its_size_when_the_server_sends_no_length(web):
    web.script[URL] = [(200, DATA[:1000], {})]
    assert _fetch(web) == SHA
    assert _ranges(web) == [None, "bytes=1000-"]


def test_the_progress_bar_counts_bytes_in_kib_from_where_a_resume_starts(web, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            bars.append({**kwargs, "counted": 0})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def update(self, n):
            bars[-1]["counted"] += n

    monkeypatch.setattr(_http, "tqdm", Bar)
    web.dest.parent.mkdir(parents=True)
    web.dest.with_name("toy.bin.part").write_bytes(DATA[:2000])
    _fetch(web, progress=True)
    assert bars == [{"total": SIZE, "initial": 2000, "desc": "toy.bin", "unit": "B", "unit_scale": True,
                     "unit_divisor": 1024, "disable": False, "counted": SIZE - 2000}]


# --------------------------------------------------------------------------- errors, retries and mirrors


def test_without_settings_a_url_is_tried_four_times_pausing_one_second_more_each_time_with_a_bar(web, capsys):
    web.script[URL] = [(500, b"", {})] * 4
    with pytest.raises(DownloadError, match="500 Server Error"):
        _http.fetch([URL], web.dest, size=SIZE, sha256=SHA)
    assert len(web.gets) == 4 and web.sleeps == [1.0, 2.0, 3.0]
    capsys.readouterr()
    assert _http.fetch([URL], web.dest, size=SIZE, sha256=SHA) == SHA
    assert "toy.bin" in capsys.readouterr().err


@pytest.mark.parametrize("status, attempts", [(404, 1), (403, 1), (400, 1), (410, 1), (500, 3), (503, 3),
                                              (408, 3), (429, 3)])
def test_client_errors_go_to_the_next_mirror_at_once_others_are_retried(web, status, attempts):
    web.script[URL] = [(status, b"", {})] * 3
    assert _fetch(web, urls=(URL, MIRROR), retries=2) == SHA
    assert [g["url"] for g in web.gets] == [URL] * attempts + [MIRROR]


def test_when_every_url_fails_the_error_lists_each_distinct_failure_and_keeps_the_part_file(web):
    web.script[URL] = [(404, b"", {})]
    web.script[MIRROR] = [(500, b"", {})] * 2
    with pytest.raises(DownloadError) as err:
        _fetch(web, urls=(URL, MIRROR), retries=1)
    assert str(err.value) == (
        f"could not download toy.bin: {URL}: 404 Client Error: Not Found for url: {URL}; "
        f"{MIRROR}: 500 Server Error: Internal Server Error for url: {MIRROR}.")  # no data came: no .part to name
    assert not web.dest.exists() and not web.dest.with_name("toy.bin.part").exists()


def test_a_failure_after_some_data_says_where_the_part_file_is_kept(web):
    web.drop_after[URL] = 1000
    web.script[URL] = []
    web.files[URL] = DATA

    def then_errors(url, headers, answer=web.answer):
        if web.gets[-1]["headers"].get("Range"):
            return _response(url, 503, b"", {})
        return answer(url, headers)

    web.answer = then_errors
    with pytest.raises(DownloadError) as err:
        _fetch(web, retries=1)
    part = web.dest.with_name("toy.bin.part")
    assert part.stat().st_size == 1000
    assert str(err.value) == (
        f"could not download toy.bin: {URL}: connection closed after 1000 of 5000 bytes; {URL}: 503 Server Error: "
        f"Service Unavailable for url: {URL}. Partial data is kept in {part}; run the download again to resume.")


def _cannot_connect(url: str, cause: OSError) -> requests.ConnectionError:
    """What requests raises when the connection cannot be made (a DNS failure, a refusal), chained as it is."""
    host = url.split("/")[2]
    try:
        try:
            raise cause
        except socket.gaierror as dns:
            raise urllib3.exceptions.NameResolutionError(host, None, dns) from dns
        except OSError as other:
            raise urllib3.exceptions.NewConnectionError(None, f"Failed to establish a new connection: {other}") \
                from other
    except urllib3.exceptions.NewConnectionError as failed:
        return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, url, failed))


def test_a_server_that_cannot_be_reached_is_not_retried_and_said_in_a_few_words(web, caplog):
    def unreachable(url, headers):
        cause = (socket.gaierror(socket.EAI_NONAME, "Name or service not known") if url == URL
                 else ConnectionRefusedError(111, "Connection refused"))
        raise _cannot_connect(url, cause)

    web.answer = unreachable
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(ckpt.UnreachableError) as err:
        _fetch(web, urls=(URL, MIRROR), retries=3)

    assert [g["url"] for g in web.gets] == [URL, MIRROR] and web.sleeps == []  # once each, no pause
    assert str(err.value) == ("could not download toy.bin: cannot reach example.invalid (DNS lookup failed), "
                              "mirror.example.invalid (connection refused)")
    assert err.value.hosts == {"example.invalid": "DNS lookup failed", "mirror.example.invalid": "connection refused"}
    assert [r.getMessage() for r in caplog.records] == [
        "download of toy.bin: cannot reach example.invalid (DNS lookup failed)",
        "download of toy.bin: cannot reach mirror.example.invalid (connection refused)"]


def test_a_finished_file_of_the_wrong_size_is_deleted_and_refused(web):
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        _fetch(web, size=4000)
    assert str(err.value) == (f"size mismatch for {web.dest}: expected 4000, got 5000. The file was refused "
                              "(deleted if it was a download); fetch it again.")
    assert list(web.dest.parent.glob("toy.bin*")) == []


def test_a_finished_file_with_other_bytes_is_deleted_and_refused(web):
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        _fetch(web, sha256=other)
    assert (err.value.expected, err.value.actual, err.value.path) == (other, SHA, web.dest)
    assert list(web.dest.parent.glob("toy.bin*")) == []
