"""Resumable, verified HTTP download of one file hosted outside the Hugging Face Hub (SAM's official URLs).

Files on the Hub go through ``huggingface_hub`` (:mod:`._hub`). This module keeps only what that library does
not offer as public API for an arbitrary URL: mirrors, a ``.part`` file kept across runs, and our pins.

Data is streamed into ``<dest>.part``; an interrupted transfer keeps it, and the next attempt asks for
the rest with an HTTP ``Range`` header (a server that ignores Range and answers 200 makes us start
over). The finished ``.part`` is checked (size, SHA-256) and only then renamed atomically to ``dest``;
a file that fails the check is deleted and :class:`ChecksumMismatchError` raised. A ``.locks/<name>.lock`` lock
(the ``filelock`` package, as huggingface_hub uses) lets one process at a time write ``dest``; the others
wait and find it done.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import requests
import urllib3
from filelock import FileLock
from tqdm.auto import tqdm

from skinapp import __version__
from skinapp.checkpoints import _reach
from skinapp.checkpoints._errors import ChecksumMismatchError, DownloadError, UnreachableError
from skinapp.checkpoints._hashing import read_stamp, sha256_file, write_stamp

log = logging.getLogger(__name__)

_CHUNK = 1 << 16  # bytes per read; an interrupted read loses at most this much
_TIMEOUT = (15, 60)  # connect, read (seconds)


class _TransferInterruptedError(Exception):
    """The server closed the connection before the whole body arrived."""


def fetch(urls: Sequence[str], dest: Path, *, size: int | None, sha256: str | None, retries: int = 3,
          retry_wait_s: float = 1.0, progress: bool = True) -> str:
    """Download ``dest`` from the first of ``urls`` that works; return its SHA-256.

    Args:
        urls: the URL and its mirrors, tried in order.
        dest: final path; partial data lives in ``dest.part`` until verified.
        size / sha256: expected values from the manifest (None: not checked; the digest is still
            computed and returned).
        retries: extra attempts per URL after a dropped connection or a server error; each resumes.
        retry_wait_s: pause before retry n is ``n * retry_wait_s``.
        progress: show a tqdm progress bar.

    Raises:
        ChecksumMismatchError: the finished file has the wrong size or SHA-256 (nothing is left behind).
        UnreachableError: no URL's server could be reached at all (DNS failure, refused, no route, connect
            timeout); such a URL is tried once, without retries.
        DownloadError: every URL failed; partial data stays in ``dest.part`` for the next call.
    """
    if not urls:
        raise ValueError(f"no URL to download {dest.name} from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    locks = dest.parent / ".locks"  # like huggingface_hub's cache: lock files stay, in their own folder
    locks.mkdir(exist_ok=True)
    with FileLock(locks / f"{dest.name}.lock"), requests.Session() as session:
        if sha256 is not None and dest.is_file() and read_stamp(dest) == sha256:
            return sha256  # another process finished it while we waited for the lock
        session.headers["User-Agent"] = f"skinapp-checkpoints/{__version__}"
        errors, down = _transfer_any(session, urls, part, size, retries, retry_wait_s, progress)
        if len(down) == len(urls):  # no server could be reached: one short line, nothing to resume
            raise UnreachableError(dest.name, {_reach.host_of(url): why for url, why in down.items()})
        if errors is not None:
            kept = (f" Partial data is kept in {part}; run the download again to resume." if part.exists()
                    else "")
            raise DownloadError(f"could not download {dest.name}: {errors}.{kept}")
        return _accept(part, dest, size, sha256)


def _transfer_any(session: requests.Session, urls: Sequence[str], part: Path, size: int | None, retries: int,
                  retry_wait_s: float, progress: bool) -> tuple[str | None, dict[str, str]]:
    """Try each URL with retries: (None on success, else a summary of the errors; {url: why} for the URLs
    whose server could not be reached at all, which are not retried)."""
    errors: list[str] = []
    down: dict[str, str] = {}
    for url in urls:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(attempt * retry_wait_s)
            try:
                _transfer(session, url, part, size, progress)
                return None, {}
            except (requests.RequestException, _TransferInterruptedError) as err:
                why = _unreachable_why(err)
                if why is not None:  # DNS failure, refused, no route: retrying in seconds will not help
                    down[url] = why
                    errors.append(f"cannot reach {_reach.host_of(url)} ({why})")
                    log.warning("download of %s: %s", part.name.removesuffix(".part"), errors[-1])
                    break
                errors.append(f"{url}: {err}")
                log.warning("download of %s interrupted (attempt %d/%d): %s", part.name, attempt + 1,
                            retries + 1, err)
                if _is_client_error(err):
                    break  # 404 and friends: retrying the same URL will not help; try the next mirror
    return "; ".join(dict.fromkeys(errors)), down  # distinct errors, in order


def _transfer(session: requests.Session, url: str, part: Path, size: int | None, progress: bool) -> None:
    """One request: append the missing bytes to ``part`` (or rewrite it when the server ignores Range)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s is larger than the expected %d bytes; starting over", part, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size and part.exists():
        return  # a previous attempt finished the body; _accept verifies it
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=_TIMEOUT) as resp:
        if resp.status_code == 416 and offset:
            part.unlink()  # our partial data does not fit the remote file: start over on the next attempt
            raise _TransferInterruptedError(f"server refused Range bytes={offset}- (416); "
                                            "discarded the partial file")
        resp.raise_for_status()
        if offset and resp.status_code == 206 and not _range_starts_at(resp, offset):
            part.unlink()
            got = resp.headers.get("Content-Range")
            raise _TransferInterruptedError(f"server answered Range bytes={offset}- with {got!r}; "
                                            "discarded the partial file")
        if offset and resp.status_code != 206:
            log.info("server ignored the Range request for %s (HTTP %d); restarting from byte 0",
                     part.name, resp.status_code)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = size if size is not None else (offset + int(length) if length and length.isdigit() else None)
        with open(part, "ab" if offset else "wb") as fh, tqdm(
                total=total, initial=offset, desc=part.name.removesuffix(".part"), unit="B", unit_scale=True,
                unit_divisor=1024, disable=not progress) as bar:
            for chunk in resp.iter_content(chunk_size=_CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:
        raise _TransferInterruptedError(f"connection closed after {received} of {total} bytes")


def _accept(part: Path, dest: Path, size: int | None, sha256: str | None) -> str:
    """Check the finished ``part`` and rename it to ``dest``; delete it and raise on a mismatch."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise ChecksumMismatchError(dest, str(size), str(actual_size), what="size")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise ChecksumMismatchError(dest, sha256, digest)
    os.replace(part, dest)
    write_stamp(dest, digest)
    return digest


def _range_starts_at(resp: requests.Response, offset: int) -> bool:
    content_range = resp.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def _unreachable_why(err: Exception) -> str | None:
    """A few words when ``err`` says the server could not be reached at all (no connection was made), else None.

    requests wraps urllib3's NameResolutionError / NewConnectionError (refused, no route) in ConnectionError,
    and a connect timeout in ConnectTimeout; an error after connecting (a dropped body) is not one of them.
    """
    if isinstance(err, requests.ConnectTimeout):
        return "timed out"
    if not isinstance(err, requests.ConnectionError):
        return None
    seen: BaseException | None = err
    for _ in range(8):  # ConnectionError -> MaxRetryError -> NewConnectionError -> OSError
        if seen is None:
            return None
        if isinstance(seen, urllib3.exceptions.NameResolutionError):
            return "DNS lookup failed"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            cause = seen.__cause__ or seen.__context__
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            return getattr(cause, "strerror", None) or "cannot connect"
        inner = getattr(seen, "reason", None) if isinstance(seen, urllib3.exceptions.MaxRetryError) else None
        seen = inner or (seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
    return None


def _is_client_error(err: Exception) -> bool:
    if not isinstance(err, requests.HTTPError) or err.response is None:
        return False
    return 400 <= err.response.status_code < 500 and err.response.status_code not in (408, 429)
