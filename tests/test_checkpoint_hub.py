"""Hugging Face Hub files (skinapp/checkpoints/_hub.py): where the cache is, what is found there, what ``fetch``
asks ``huggingface_hub`` for, and what it does with the answer.

``huggingface_hub.hf_hub_download`` is replaced by a fake that lays files out as the library does (a blob named by
its SHA-256, a snapshot link to it) and records its arguments; ``try_to_load_from_cache`` is the real one, reading
cache folders written here. Connecting a socket fails the test. The real library against a local Hub stand-in is
tested in tests/test_provisioning.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

import huggingface_hub
import huggingface_hub.utils
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing, _hub
from skinapp.checkpoints._errors import DownloadError

REPO, REV = "org/toy-weights", "c" * 40
GOOD, OTHER = b"the pinned weights" * 100, b"other weights, same size!" * 72
LOGGER = "skinapp.checkpoints._hub"
_ENABLE_BARS = huggingface_hub.utils.enable_progress_bars


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(filename: str = "toy.bin", hub_filename: str = "model.bin", data: bytes = GOOD, *, pinned: bool = True,
          revision: str = REV) -> ckpt.FileSpec:
    return ckpt.FileSpec(filename=filename, url=None, size=len(data) if pinned else None,
                         sha256=_sha(data) if pinned else None, hub=ckpt.HubFile(REPO, hub_filename, revision))


def _put_in_cache(cache: Path, hub_filename: str, data: bytes, revision: str = REV) -> Path:
    """A file laid out as huggingface_hub caches it: blobs/<sha256> and snapshots/<commit>/<name> linking to it."""
    repo = cache / "models--org--toy-weights"
    blob = repo / "blobs" / _sha(data)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / revision / hub_filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


class _FakeHub:
    """``hf_hub_download``: serves ``files`` (hub file name -> bytes) or raises ``error``; records each call."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"model.bin": GOOD}
        self.error: BaseException | None = None
        self.calls: list[dict] = []
        self.bars_disabled: list[bool] = []

    def __call__(self, repo_id, filename, *, revision, endpoint, library_name, cache_dir=None, local_dir=None):
        self.calls.append({"repo_id": repo_id, "filename": filename, "revision": revision, "endpoint": endpoint,
                           "library_name": library_name, "cache_dir": cache_dir, "local_dir": local_dir})
        self.bars_disabled.append(huggingface_hub.utils.are_progress_bars_disabled())
        if self.error is not None:
            raise self.error
        if local_dir is not None:
            path = Path(local_dir) / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.files[filename])
            return str(path)
        link = Path(cache_dir) / "models--org--toy-weights" / "snapshots" / revision / filename
        if link.exists():  # as the library does: a file already in the snapshot is returned, not fetched
            return str(link)
        return str(_put_in_cache(Path(cache_dir), filename, self.files[filename], revision))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hub cache under tmp_path, downloads allowed, ``hf_hub_download`` faked, no network."""
    fake = _FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)

    def no_network(sock, address):
        raise AssertionError(f"a Hub test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    for var in ("HF_ENDPOINT", "SKINAPP_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    _hashing._memory.clear()
    yield {"fake": fake, "cache": tmp_path / "cache", "tmp": tmp_path}
    _ENABLE_BARS()


# --------------------------------------------------------------------------- the cache and what is in it


def test_the_cache_is_hf_hub_cache_then_hf_home_hub_then_the_library_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", "/library/default/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub-cache")
    monkeypatch.setenv("HF_HOME", "~/hf-home")
    assert _hub.hub_cache_dir() == tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", "")  # empty means not set
    assert _hub.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", "")
    assert _hub.hub_cache_dir() == Path("/library/default/hub")


def test_a_cached_file_is_found_by_its_snapshot_path_and_a_missing_one_is_none(hub):
    link = _put_in_cache(hub["cache"], "model.bin", GOOD)

    assert _hub.cached_file(_spec()) == link
    assert _hub.cached_file(_spec(hub_filename="other.bin")) is None
    assert _hub.cached_file(_spec(revision="d" * 40)) is None
    (hub["cache"] / "models--org--toy-weights" / ".no_exist" / REV).mkdir(parents=True)
    (hub["cache"] / "models--org--toy-weights" / ".no_exist" / REV / "gone.bin").touch()  # known to be absent
    assert _hub.cached_file(_spec(hub_filename="gone.bin")) is None
    Path(os.path.realpath(link)).unlink()  # a snapshot link whose blob is gone is not a file
    assert _hub.cached_file(_spec()) is None


def test_an_entry_is_in_the_cache_only_when_every_file_is(hub):
    def entry(*specs, directory=None):
        return ckpt.Entry(name="toy", kind="sam", origin="official", description="", licence="",
                          files=specs, directory=directory)

    config, vocab = _spec("config.json", "config.json"), _spec("vocab.txt", "vocab.txt")
    assert _hub.cached_location(entry(config, vocab, directory="toy")) is None
    link = _put_in_cache(hub["cache"], "config.json", GOOD)
    assert _hub.cached_location(entry(config, vocab, directory="toy")) is None  # vocab.txt is still missing
    _put_in_cache(hub["cache"], "vocab.txt", GOOD)
    assert _hub.cached_location(entry(config, vocab, directory="toy")) == link.parent
    assert _hub.cached_location(entry(config)) == link
    url_only = ckpt.FileSpec(filename="config.json", url="https://example.invalid/c", size=None, sha256=None)
    assert _hub.cached_location(entry(url_only)) is None  # not a Hub entry: the cache is not looked at


# --------------------------------------------------------------------------- fetch: what is asked for


def test_fetch_asks_for_the_pinned_revision_into_the_cache_through_the_endpoint(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.invalid")
    path = _hub.fetch(_spec())

    assert path == hub["cache"] / "models--org--toy-weights" / "snapshots" / REV / "model.bin"
    assert path.read_bytes() == GOOD
    assert hub["fake"].calls == [{"repo_id": REPO, "filename": "model.bin", "revision": REV,
                                  "endpoint": "http://mirror.invalid", "library_name": "skinapp",
                                  "cache_dir": hub["cache"], "local_dir": None}]
    monkeypatch.setenv("HF_ENDPOINT", "")  # empty: the library's default endpoint
    _hub.fetch(_spec())
    assert hub["fake"].calls[1]["endpoint"] is None


def test_fetch_into_a_folder_places_the_file_under_its_manifest_name(hub):
    folder = hub["tmp"] / "mine"
    path = _hub.fetch(_spec(), local_dir=folder)

    assert path == folder / "toy.bin" and path.read_bytes() == GOOD
    assert hub["fake"].calls[0]["local_dir"] == folder / ".hub" and hub["fake"].calls[0]["cache_dir"] is None
    assert not (folder / ".hub" / "model.bin").exists()
    assert _hashing.read_stamp(path) == _sha(GOOD)  # checked, and the check remembered


@pytest.mark.parametrize("env, setting", [("SKINAPP_OFFLINE", "SKINAPP_OFFLINE=1"),
                                          ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE=1")])
def test_fetch_offline_is_refused_without_asking_the_library(hub, monkeypatch, env, setting):
    monkeypatch.setenv(env, "1")
    with pytest.raises(DownloadError, match=rf"^could not download hf://{REPO}/model.bin @ c{{40}}: {setting} "
                                            "forbids downloads from the Hugging Face Hub$"):
        _hub.fetch(_spec())
    assert hub["fake"].calls == []


def test_progress_false_hides_the_library_bars_only_during_the_download_they_show_by_default(hub):
    _hub.fetch(_spec(), progress=False)
    assert hub["fake"].bars_disabled == [True] and not huggingface_hub.utils.are_progress_bars_disabled()
    _hub.fetch(_spec(filename="x.bin"))  # by default the library's bars show
    assert hub["fake"].bars_disabled == [True, False]


def test_bars_disabled_by_the_environment_are_not_re_enabled(hub, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    enabled = []  # enable_progress_bars() would only warn that the environment disabled them
    monkeypatch.setattr(huggingface_hub.utils, "enable_progress_bars", lambda *a: enabled.append(a))
    _hub.fetch(_spec(), progress=False)
    assert hub["fake"].bars_disabled == [True] and enabled == []


# --------------------------------------------------------------------------- fetch: failures


@pytest.mark.parametrize("error, said", [
    (OSError("No space left on device\n  while writing the blob"), "OSError: No space left on device"),
    (OSError(), "OSError: OSError"),
    (ValueError("  malformed answer  "), "ValueError: malformed answer"),
    (EntryNotFoundError("404 Client Error: Entry Not Found"),
     "EntryNotFoundError: 404 Client Error: Entry Not Found"),
])
def test_a_failed_download_is_one_line_naming_the_file_and_the_cause(hub, error, said):
    hub["fake"].error = error
    with pytest.raises(DownloadError) as err:
        _hub.fetch(_spec())
    assert str(err.value) == f"could not download hf://{REPO}/model.bin @ {REV}: {said}"
    assert err.value.__cause__ is error


def test_an_unexpected_error_is_not_disguised_as_a_download_failure(hub):
    hub["fake"].error = KeyError("a bug")
    with pytest.raises(KeyError, match="a bug"):
        _hub.fetch(_spec(), progress=False)
    assert not huggingface_hub.utils.are_progress_bars_disabled()  # the bars are back even so


# --------------------------------------------------------------------------- fetch: the check of what arrived


def test_a_served_file_of_the_wrong_size_is_refused_and_deleted(hub):
    hub["fake"].files["model.bin"] = GOOD[:-1]
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        _hub.fetch(_spec())
    link = hub["cache"] / "models--org--toy-weights" / "snapshots" / REV / "model.bin"
    assert str(err.value) == (f"size mismatch for {link}: expected {len(GOOD)} bytes, got {len(GOOD) - 1} bytes. "
                              f"hf://{REPO}/model.bin @ {REV} served a different file; it was deleted and not used.")
    assert not link.is_symlink() and list((link.parents[2] / "blobs").iterdir()) == []


def test_a_served_file_with_other_bytes_is_refused_and_deleted(hub):
    hub["fake"].files["model.bin"] = OTHER
    assert len(OTHER) == len(GOOD)
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        _hub.fetch(_spec(), local_dir=hub["tmp"] / "mine")
    assert (err.value.expected, err.value.actual) == (_sha(GOOD), _sha(OTHER))
    assert str(err.value).endswith(f"hf://{REPO}/model.bin @ {REV} served a different file; it was deleted and "
                                   "not used.")
    assert not (hub["tmp"] / "mine" / "toy.bin").exists()


def test_an_unpinned_file_is_accepted_with_its_digest_logged_as_not_verified(hub, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = _hub.fetch(_spec(pinned=False))
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"{path} downloaded with SHA-256 {_sha(GOOD)}; the manifest pins no hash, so it is NOT verified"]


def test_a_pinned_file_is_accepted_silently_and_its_check_remembered(hub, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = _hub.fetch(_spec())
    assert [r for r in caplog.records if r.name == LOGGER] == []
    assert _hashing.read_stamp(path) == _sha(GOOD)


def test_a_bad_copy_already_in_the_cache_is_deleted_and_downloaded_again(hub, caplog):
    stale = _put_in_cache(hub["cache"], "model.bin", OTHER)
    stale_blob = Path(os.path.realpath(stale))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = _hub.fetch(_spec())

    assert path == stale and path.read_bytes() == GOOD and not stale_blob.exists()
    assert len(hub["fake"].calls) == 1
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"{stale} in the Hugging Face cache does not match its pins; downloading it again"]


def test_a_good_copy_in_the_cache_is_kept(hub):
    link = _put_in_cache(hub["cache"], "model.bin", GOOD)
    blob = Path(os.path.realpath(link))
    assert _hub.fetch(_spec()) == link
    assert blob.exists() and link.is_symlink()


def test_a_bad_cached_copy_leaves_nothing_behind_when_the_new_download_fails(hub):
    stale = _put_in_cache(hub["cache"], "model.bin", OTHER)
    hub["fake"].error = OSError("connection refused")
    with pytest.raises(DownloadError, match="OSError: connection refused"):
        _hub.fetch(_spec())
    assert not stale.is_symlink() and list(stale.parents[2].joinpath("blobs").iterdir()) == []
