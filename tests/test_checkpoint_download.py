"""What ``download`` and ``resolve`` decide: where each file goes or is found, what is kept, what is logged.

The transfers are replaced by recording fakes of the two fetchers :mod:`skinapp.checkpoints._resolve` calls
(``_http.fetch`` for URL files, ``_hub.fetch`` for Hugging Face Hub files). Like the real ones, they create the
folders they write into and return the file's SHA-256 / path; unlike them they never open a socket (connect is
refused for the whole test). The transfers themselves are tested in tests/test_checkpoints.py (URL files, a
local server) and tests/test_provisioning.py (Hub files, a local Hub stand-in).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket

import pytest

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing, _reach, _resolve
from skinapp.checkpoints._errors import DownloadError

URL, MIRROR = "https://example.invalid/files", "https://mirror.example.invalid/files"
REPO, REV = "org/toy-weights", "b" * 40
LOGGER = "skinapp.checkpoints._resolve"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file(filename: str, data: bytes, url: str | None = None, *, pinned: bool = True, sized: bool = True,
          hub: bool = False, mirrors: tuple[str, ...] = ()) -> dict:
    spec = {"filename": filename, "url": url, "mirrors": list(mirrors),
            "size": len(data) if pinned and sized else None, "sha256": _sha(data) if pinned else None}
    if hub:
        spec["hub"] = {"repo_id": REPO, "filename": filename, "revision": REV}
    return spec


def _entry(name: str, files: list[dict], **extra) -> dict:
    return {"name": name, "kind": "sam", "origin": extra.pop("origin", "official"), "description": f"toy {name}",
            "licence": "Apache-2.0", "files": files, **extra}


class _Fetchers:
    """Stand-ins for ``_http.fetch`` and ``_hub.fetch`` that write the served bytes and record each call."""

    def __init__(self, served: dict[str, bytes], hub_cache) -> None:
        self.served = served  # URL or Hub description -> bytes
        self.hub_cache = hub_cache
        self.url_calls: list[tuple] = []
        self.hub_calls: list[tuple] = []
        self.hub_down: set[str] = set()  # file names whose Hub download fails

    def url(self, urls, dest, *, size, sha256, retries, retry_wait_s, progress):
        self.url_calls.append((tuple(urls), dest, {"size": size, "sha256": sha256, "retries": retries,
                                                   "retry_wait_s": retry_wait_s, "progress": progress}))
        data = self.served[urls[0]]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return _sha(data)

    def hub(self, spec, *, local_dir=None, progress):
        self.hub_calls.append((spec.filename, local_dir, progress))
        if spec.filename in self.hub_down:
            raise DownloadError(f"could not download {spec.hub.describe()}: ConnectionError: refused")
        path = (local_dir / spec.filename if local_dir is not None  # else where the Hub cache keeps it
                else self.hub_cache / "models--org--toy-weights" / "snapshots" / spec.hub.revision / spec.hub.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.served[spec.hub.describe()])
        return path


@pytest.fixture
def dl(tmp_path, monkeypatch):
    """A manifest of URL, Hub and trained entries; fake fetchers; an empty checkpoint directory; no network."""
    b = {k: os.urandom(n) for k, n in (("sam", 4000), ("cfg", 300), ("vocab", 200), ("free", 500), ("hub", 600),
                                       ("only", 700), ("hcfg", 100), ("hvocab", 150))}
    data = {"checkpoints": [
        _entry("toy_sam", [_file("toy_sam.pth", b["sam"], f"{URL}/sam.pth", mirrors=(f"{MIRROR}/sam.pth",))]),
        _entry("toy_bert", [_file("config.json", b["cfg"], f"{URL}/config.json", sized=False),
                            _file("vocab.txt", b["vocab"], f"{URL}/vocab.txt")], directory="toy-bert"),
        _entry("toy_free", [_file("toy_free.bin", b["free"], f"{URL}/free.bin", pinned=False)]),
        _entry("toy_hub", [_file("toy_hub.bin", b["hub"], f"{URL}/hub.bin", hub=True)]),
        _entry("toy_only", [_file("toy_only.bin", b["only"], hub=True)]),
        _entry("toy_hubdir", [_file("config.json", b["hcfg"], hub=True), _file("vocab.txt", b["hvocab"], hub=True)],
               directory="toy-hubdir"),
        _entry("toy_fusion", [_file("toy_fusion.safetensors", b"", pinned=False)], origin="trained",
               how_to_get="Run python -m train.fusion to produce it."),
    ]}
    served = {f"{URL}/sam.pth": b["sam"], f"{URL}/config.json": b["cfg"], f"{URL}/vocab.txt": b["vocab"],
              f"{URL}/free.bin": b["free"], f"{URL}/hub.bin": b["hub"]}
    for filename, key in (("toy_hub.bin", "hub"), ("toy_only.bin", "only"), ("config.json", "hcfg"),
                          ("vocab.txt", "hvocab")):
        served[f"hf://{REPO}/{filename} @ {REV}"] = b[key]
    fakes = _Fetchers(served, tmp_path / "hub-cache")
    monkeypatch.setattr(_resolve, "fetch", fakes.url)
    monkeypatch.setattr(_resolve._hub, "fetch", fakes.hub)

    def no_network(sock, address):
        raise AssertionError(f"a test of download decisions tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(_reach, "_probe", lambda host, port, timeout_s: None)  # every server answers
    directory = tmp_path / "ckpts"
    for var in ("SKINAPP_OFFLINE", "SKINAPP_MANIFEST", *(f"SKINAPP_{e['name'].upper()}" for e in data["checkpoints"])):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _hashing._memory.clear()
    with ckpt.use_manifest(data):
        yield {"fetch": fakes, "dir": directory, "tmp": tmp_path, **b}


def _messages(caplog, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


# --------------------------------------------------------------------------- files hosted at a URL


def test_a_url_file_is_fetched_with_its_pins_mirrors_and_the_callers_settings(dl, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        path = ckpt.download("toy_sam", retries=0, retry_wait_s=0.25, progress=False)

    assert path == dl["dir"] / "toy_sam.pth" and path.read_bytes() == dl["sam"]
    assert dl["fetch"].url_calls == [((f"{URL}/sam.pth", f"{MIRROR}/sam.pth"), path, {
        "size": 4000, "sha256": _sha(dl["sam"]), "retries": 0, "retry_wait_s": 0.25, "progress": False})]
    assert dl["fetch"].hub_calls == []
    assert _messages(caplog) == [f"downloading {URL}/sam.pth -> {path}"]  # pinned: no "NOT verified" warning


def test_defaults_are_three_retries_a_second_apart_with_a_progress_bar(dl):
    ckpt.download("toy_sam")
    assert ckpt.resolve("toy_bert", download=True) == dl["dir"] / "toy-bert"

    settings = {(c[2]["retries"], c[2]["retry_wait_s"], c[2]["progress"]) for c in dl["fetch"].url_calls}
    assert len(dl["fetch"].url_calls) == 3 and settings == {(3, 1.0, True)}
    assert dl["fetch"].hub_calls == []  # a directory of URL files is not looked for on the Hub


def test_a_directory_entry_lands_in_a_new_folder_of_ones_choice_and_is_kept_there(dl):
    dest = dl["tmp"] / "elsewhere" / "deeper"  # neither folder exists yet

    assert ckpt.download("toy_bert", dest_dir=dest) == dest / "toy-bert"
    assert (dest / "toy-bert" / "vocab.txt").read_bytes() == dl["vocab"]
    assert [c[1] for c in dl["fetch"].url_calls] == [dest / "toy-bert" / "config.json", dest / "toy-bert" / "vocab.txt"]
    assert ckpt.download("toy_bert", dest_dir=dest) == dest / "toy-bert"  # the folder exists: kept, not refetched
    assert len(dl["fetch"].url_calls) == 2 and not dl["dir"].exists()


def test_only_the_missing_file_of_a_directory_is_fetched_a_hash_pinned_file_of_unknown_size_is_kept(dl):
    (dl["dir"] / "toy-bert").mkdir(parents=True)
    (dl["dir"] / "toy-bert" / "config.json").write_bytes(dl["cfg"])  # first file: pinned SHA-256, no size

    assert ckpt.resolve("toy_bert", download=True) == dl["dir"] / "toy-bert"
    assert [c[0] for c in dl["fetch"].url_calls] == [(f"{URL}/vocab.txt",)]


def test_an_unpinned_download_logs_its_digest_as_not_verified(dl, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = ckpt.download("toy_free")

    assert _messages(caplog, logging.WARNING) == [
        f"{path} downloaded with SHA-256 {_sha(dl['free'])}; the manifest pins no hash, so it is NOT verified"]


# --------------------------------------------------------------------------- what is already there


def test_a_good_copy_is_kept_and_said_to_be_verified(dl, caplog):
    path = dl["dir"] / "toy_sam.pth"
    path.parent.mkdir()
    path.write_bytes(dl["sam"])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert ckpt.download("toy_sam") == path

    assert dl["fetch"].url_calls == []
    assert _messages(caplog) == [f"{path} already present and verified"]


def test_a_kept_unpinned_copy_is_said_to_be_present_not_verified(dl, caplog):
    path = dl["dir"] / "toy_free.bin"
    path.parent.mkdir()
    path.write_bytes(b"whatever the user put there")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert ckpt.download("toy_free") == path

    assert dl["fetch"].url_calls == [] and path.read_bytes() == b"whatever the user put there"
    assert _messages(caplog) == [f"{path} already present"]


def test_a_copy_of_the_wrong_size_is_fetched_again_without_hashing_it(dl, caplog, monkeypatch):
    path = dl["dir"] / "toy_sam.pth"
    path.parent.mkdir()
    path.write_bytes(dl["sam"][:3000])
    hashed = []
    monkeypatch.setattr(_resolve, "cached_sha256", lambda p: hashed.append(p) or _hashing.cached_sha256(p))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ckpt.download("toy_sam")

    assert hashed == [] and path.read_bytes() == dl["sam"] and len(dl["fetch"].url_calls) == 1
    assert _messages(caplog, logging.WARNING) == [f"{path} has 3000 bytes, not the pinned 4000; downloading it again"]


def test_a_same_size_copy_with_other_bytes_is_fetched_again(dl, caplog):
    path = dl["dir"] / "toy_sam.pth"
    path.parent.mkdir()
    tampered = bytes(reversed(dl["sam"]))
    path.write_bytes(tampered)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ckpt.download("toy_sam")

    assert path.read_bytes() == dl["sam"] and len(dl["fetch"].url_calls) == 1
    assert _messages(caplog, logging.WARNING) == [
        f"{path} does not match its pinned SHA-256 (got {_sha(tampered)}); downloading it again"]


# --------------------------------------------------------------------------- files on the Hugging Face Hub


def test_a_hub_file_goes_to_the_hub_cache_and_that_path_is_returned(dl, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        path = ckpt.download("toy_hub", progress=False)

    assert path == dl["tmp"] / "hub-cache" / "models--org--toy-weights" / "snapshots" / REV / "toy_hub.bin"
    assert path.read_bytes() == dl["hub"]
    assert dl["fetch"].hub_calls == [("toy_hub.bin", None, False)] and dl["fetch"].url_calls == []
    assert _messages(caplog) == [f"downloading hf://{REPO}/toy_hub.bin @ {REV}"] and not dl["dir"].exists()


def test_a_hub_file_is_placed_in_a_directory_of_ones_choice(dl):
    dest = dl["tmp"] / "mine"
    assert ckpt.download("toy_hub", dest_dir=dest) == dest / "toy_hub.bin"
    assert dl["fetch"].hub_calls == [("toy_hub.bin", dest, True)]


def test_a_hub_directory_is_one_snapshot_folder_in_the_hub_cache(dl):
    path = ckpt.download("toy_hubdir", progress=False)

    assert path == dl["tmp"] / "hub-cache" / "models--org--toy-weights" / "snapshots" / REV
    assert dl["fetch"].hub_calls == [("config.json", None, False), ("vocab.txt", None, False)]


def test_a_hub_directory_fetched_into_a_directory_of_ones_choice_is_that_folder(dl):
    dest = dl["tmp"] / "mine" / "deeper"
    assert ckpt.download("toy_hubdir", dest_dir=dest) == dest / "toy-hubdir"
    assert dl["fetch"].hub_calls == [("config.json", dest / "toy-hubdir", True),
                                     ("vocab.txt", dest / "toy-hubdir", True)]


def test_when_the_hub_fails_the_url_is_tried_and_the_failure_logged(dl, caplog):
    dl["fetch"].hub_down.add("toy_hub.bin")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        path = ckpt.download("toy_hub")

    assert path == dl["dir"] / "toy_hub.bin" and path.read_bytes() == dl["hub"]
    assert [c[0] for c in dl["fetch"].url_calls] == [(f"{URL}/hub.bin",)]
    assert _messages(caplog) == [f"downloading hf://{REPO}/toy_hub.bin @ {REV}",
                                 f"could not download hf://{REPO}/toy_hub.bin @ {REV}: ConnectionError: refused; "
                                 f"trying {URL}/hub.bin",
                                 f"downloading {URL}/hub.bin -> {path}"]


def test_when_the_hub_fails_and_there_is_no_url_the_hub_error_is_raised(dl):
    dl["fetch"].hub_down.add("toy_only.bin")
    with pytest.raises(DownloadError, match=r"^could not download hf://org/toy-weights/toy_only.bin @ b{40}: "
                                            "ConnectionError: refused$"):
        ckpt.download("toy_only")
    assert dl["fetch"].url_calls == []


# --------------------------------------------------------------------------- refusals


def test_download_of_a_trained_checkpoint_says_where_it_would_go_and_how_to_produce_it(dl):
    dest = dl["tmp"] / "mine"
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.download("toy_fusion", dest_dir=dest)

    looked = f"download into {dest / 'toy_fusion.safetensors'}"
    assert err.value.name == "toy_fusion" and err.value.looked_in == (looked,)
    assert str(err.value) == "\n".join([
        "Checkpoint 'toy_fusion' (toy_fusion.safetensors) is missing: toy toy_fusion", "Looked in:", f"  - {looked}",
        "It has no download URL: it is one of our own trained checkpoints.", "How to get it:",
        "  - Run python -m train.fusion to produce it.",
        "  - or set SKINAPP_TOY_FUSION=/path/to/toy_fusion.safetensors"])
    assert dl["fetch"].url_calls == dl["fetch"].hub_calls == []


def test_download_offline_is_refused_before_any_fetch(dl, monkeypatch):
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    with pytest.raises(ckpt.CheckpointMissing, match="Downloading is disabled by SKINAPP_OFFLINE=1.") as err:
        ckpt.download("toy_sam")

    assert err.value.looked_in == (f"download into {dl['dir'] / 'toy_sam.pth'}",)
    assert dl["fetch"].url_calls == dl["fetch"].hub_calls == []


# --------------------------------------------------------------------------- resolve: where else it looks


def test_a_hub_file_is_found_in_the_hub_cache_after_a_copy_in_the_checkpoint_dir(dl):
    cached = ckpt.download("toy_hub")

    assert ckpt.resolve("toy_hub") == cached and ckpt.status("toy_hub").source == "Hugging Face cache"
    dl["dir"].mkdir()
    (dl["dir"] / "toy_hub.bin").write_bytes(dl["hub"])
    assert ckpt.resolve("toy_hub") == dl["dir"] / "toy_hub.bin"
    assert ckpt.status("toy_hub").source == "checkpoint dir"


def test_a_bad_copy_in_the_hub_cache_is_refused_naming_the_cache_and_replaced_when_asked(dl):
    cached = ckpt.download("toy_hub")
    tampered = bytes(reversed(dl["hub"]))
    cached.write_bytes(tampered)

    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.resolve("toy_hub")
    assert str(err.value) == (
        f"SHA-256 mismatch for {cached}: expected {_sha(dl['hub'])}, got {_sha(tampered)}. Checkpoint 'toy_hub' "
        "(Hugging Face cache) was refused before loading: the file is corrupt, truncated, or not the one the "
        "checkpoint manifest pins. Get it again with: python -m skinapp.checkpoints download toy_hub (replaces a "
        "bad copy in the Hugging Face cache), or set SKINAPP_TOY_HUB to a good copy. Weights of your own need a "
        "manifest that pins them (SKINAPP_MANIFEST).")
    assert ckpt.resolve("toy_hub", download=True) == cached and cached.read_bytes() == dl["hub"]


def test_an_explicit_folder_is_taken_to_hold_the_file_under_its_name(dl, monkeypatch):
    folder = dl["tmp"] / "mine"
    folder.mkdir()
    (folder / "toy_sam.pth").write_bytes(dl["sam"])
    monkeypatch.setenv("SKINAPP_TOY_SAM", str(folder))
    assert ckpt.resolve("toy_sam") == folder / "toy_sam.pth"

    monkeypatch.setenv("SKINAPP_TOY_SAM", str(dl["tmp"] / "nowhere.pth"))
    with pytest.raises(ckpt.CheckpointMissing, match="The explicit path was used") as err:
        ckpt.resolve("toy_sam")
    assert err.value.name == "toy_sam"


def test_a_failed_download_is_said_in_the_missing_message_with_the_hub_cache_looked_in(dl):
    dl["fetch"].hub_down.add("toy_only.bin")
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.resolve("toy_only", download=True)

    where = dl["dir"] / "toy_only.bin"
    looked = ("$SKINAPP_TOY_ONLY: not set", f"checkpoint dir: {where} (not found)",
              f"Hugging Face cache: {dl['tmp'] / 'hub-cache'} (not there)")
    assert err.value.name == "toy_only" and err.value.looked_in == looked
    assert isinstance(err.value.__cause__, DownloadError)
    assert str(err.value) == "\n".join([
        "Checkpoint 'toy_only' (toy_only.bin) is missing: toy toy_only", "Looked in:", *(f"  - {x}" for x in looked),
        f"Downloading failed: could not download hf://{REPO}/toy_only.bin @ {REV}: ConnectionError: refused",
        "How to get it:", "  - python -m skinapp.checkpoints download toy_only",
        "  - or skinapp.checkpoints.resolve('toy_only', download=True)",
        f"  - or fetch hf://{REPO}/toy_only.bin @ {REV} to {where} (SHA-256 {_sha(dl['only'])})",
        "  - or set SKINAPP_TOY_ONLY=/path/to/toy_only.bin"])


# --------------------------------------------------------------------------- servers that cannot be reached


@pytest.fixture
def down(dl, monkeypatch):
    """The Hub at hub.example.invalid; ``down`` holds the hosts the probe finds unreachable (probes recorded)."""
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hosts: set[str] = set()
    probes: list[str] = []

    def probe(host, port, timeout_s):
        probes.append(host)
        return "DNS lookup failed" if host in hosts else None

    monkeypatch.setattr(_reach, "_probe", probe)
    return {"hosts": hosts, "probes": probes, **dl}


def test_a_hub_that_cannot_be_reached_is_skipped_for_the_files_url(down):
    down["hosts"].add("hub.example.invalid")
    path = ckpt.download("toy_hub", progress=False)
    assert path.read_bytes() == down["hub"]
    assert down["fetch"].hub_calls == [] and [c[0] for c in down["fetch"].url_calls] == [(f"{URL}/hub.bin",)]


def test_a_url_whose_server_cannot_be_reached_is_left_out_for_its_mirror(down):
    down["hosts"].add("example.invalid")
    down["fetch"].served[f"{MIRROR}/sam.pth"] = down["sam"]
    ckpt.download("toy_sam", progress=False)
    assert [c[0] for c in down["fetch"].url_calls] == [(f"{MIRROR}/sam.pth",)]


def test_a_file_no_server_of_which_answers_fails_at_once_naming_the_hosts(down):
    down["hosts"].update({"hub.example.invalid", "example.invalid"})
    with pytest.raises(ckpt.UnreachableError) as err:
        ckpt.download("toy_hub", progress=False)
    assert str(err.value) == "could not download toy_hub.bin: cannot reach hub.example.invalid, example.invalid (DNS " \
                             "lookup failed)"
    assert down["fetch"].hub_calls == down["fetch"].url_calls == []

    with pytest.raises(ckpt.CheckpointMissing) as missing:
        ckpt.resolve("toy_hubdir", download=True)  # a Hub directory: every file probed, none fetched
    assert isinstance(missing.value.__cause__, ckpt.UnreachableError) and down["fetch"].hub_calls == []
    assert down["probes"].count("hub.example.invalid") == 2  # once per download, not once per file
