"""The checkpoint manifest: where it is read from, what a malformed one is told, and the settings around it.

A manifest error is what a user who edits ``checkpoints/manifest.json`` (or points ``SKINAPP_MANIFEST`` at
their own) reads, so the messages are compared whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _manifest

SHA = "ab" * 32


def _file(**extra) -> dict:
    return {"filename": "m.pth", "url": "https://example.invalid/m.pth", "size": 10, "sha256": SHA, **extra}


def _entry(**extra) -> dict:
    return {"name": "toy", "kind": "sam", "origin": "official", "description": "a toy", "licence": "MIT",
            "files": [_file()], **extra}


def _error(data) -> str:
    with pytest.raises(ckpt.ManifestError) as err:
        ckpt.manifest(data)
    return str(err.value)


def test_a_valid_entry_is_read_field_by_field():
    mirror = "http://mirror.invalid/m.pth"
    entries = ckpt.manifest({"checkpoints": [
        _entry(files=[_file(mirrors=[mirror])]),
        _entry(name="toy_dir", origin="trained", directory="toy-dir", how_to_get="train it",
               files=[_file(filename="a.json", url=None, size=None, sha256=None), _file(filename="b.bin")]),
    ]})
    assert list(entries) == ["toy", "toy_dir"]
    toy = entries["toy"]
    assert toy == ckpt.Entry(name="toy", kind="sam", origin="official", description="a toy", licence="MIT",
                             files=(ckpt.FileSpec("m.pth", "https://example.invalid/m.pth", 10, SHA, (mirror,)),),
                             directory=None, how_to_get=None)
    assert toy.files[0].urls == ("https://example.invalid/m.pth", mirror)
    assert (toy.env_var, toy.is_directory, toy.downloadable, toy.pinned) == ("SKINAPP_TOY", False, True, True)
    assert toy.location(Path("/base")) == Path("/base/m.pth")
    folder = entries["toy_dir"]
    assert (folder.origin, folder.directory, folder.how_to_get) == ("trained", "toy-dir", "train it")
    assert (folder.env_var, folder.is_directory, folder.downloadable, folder.pinned) == (
        "SKINAPP_TOY_DIR", True, False, False)
    assert folder.location(Path("/base")) == Path("/base/toy-dir")
    assert ckpt.get_entry("toy_dir", {"checkpoints": [_entry(name="toy_dir")]}).name == "toy_dir"


def test_origin_defaults_to_official_and_mirrors_alone_make_a_file_downloadable():
    raw = _entry(files=[_file(url=None, mirrors=["https://mirror.invalid/m.pth"])])
    del raw["origin"]
    entry = ckpt.manifest({"checkpoints": [raw]})["toy"]
    assert entry.origin == "official" and entry.downloadable
    assert entry.files[0].urls == ("https://mirror.invalid/m.pth",)


@pytest.mark.parametrize("data, message", [
    ({"version": 1}, "<dict>: expected an object with a 'checkpoints' list"),
    ({"checkpoints": {}}, "<dict>: expected an object with a 'checkpoints' list"),
    ({"checkpoints": ["toy"]}, "<dict>: every checkpoint must be an object, got 'toy'"),
    ({"checkpoints": [_entry(), _entry()]}, "<dict>: duplicate checkpoint name 'toy'"),
    ({"checkpoints": [_entry(name="Toy")]}, "<dict>: checkpoint 'Toy': name must match ^[a-z][a-z0-9_]*$"),
    ({"checkpoints": [_entry(name=7)]}, "<dict>: checkpoint 7: name must match ^[a-z][a-z0-9_]*$"),
    ({"checkpoints": [_entry(name="manifest")]},
     "<dict>: checkpoint 'manifest': name is reserved (SKINAPP_MANIFEST is a setting)"),
    ({"checkpoints": [_entry(kind="")]}, "<dict>: checkpoint 'toy': missing text field 'kind'"),
    ({"checkpoints": [_entry(description=None)]}, "<dict>: checkpoint 'toy': missing text field 'description'"),
    ({"checkpoints": [_entry(licence=3)]}, "<dict>: checkpoint 'toy': missing text field 'licence'"),
    ({"checkpoints": [_entry(origin="borrowed")]},
     "<dict>: checkpoint 'toy': origin must be one of ('official', 'trained')"),
    ({"checkpoints": [_entry(files=[])]}, "<dict>: checkpoint 'toy': 'files' must be a non-empty list"),
    ({"checkpoints": [_entry(files="m.pth")]}, "<dict>: checkpoint 'toy': 'files' must be a non-empty list"),
    ({"checkpoints": [_entry(files=[_file(), _file()], directory="d")]},
     "<dict>: checkpoint 'toy': duplicate file names"),
    ({"checkpoints": [_entry(files=[_file(), _file(filename="n.pth")])]},
     "<dict>: checkpoint 'toy': a multi-file checkpoint needs a 'directory' to land in"),
    ({"checkpoints": [_entry(directory="a/b")]},
     "<dict>: checkpoint 'toy': directory must be a bare name without directories, got 'a/b'"),
    ({"checkpoints": [_entry(files=["m.pth"])]}, "<dict>: checkpoint 'toy': every file must be an object"),
    ({"checkpoints": [_entry(files=[_file(mirrors="https://x/m.pth")])]},
     "<dict>: checkpoint 'toy': m.pth: 'mirrors' must be a list of URLs"),
    ({"checkpoints": [_entry(files=[_file(mirrors=["file:///m.pth"])])]},
     "<dict>: checkpoint 'toy': m.pth: URL must be http(s) or null, got 'file:///m.pth'"),
    ({"checkpoints": [_entry(files=[_file(url=5)])]},
     "<dict>: checkpoint 'toy': m.pth: URL must be http(s) or null, got 5"),
    ({"checkpoints": [_entry(files=[_file(size=True)])]},
     "<dict>: checkpoint 'toy': m.pth: size must be a non-negative integer or null"),
    ({"checkpoints": [_entry(files=[_file(size="10")])]},
     "<dict>: checkpoint 'toy': m.pth: size must be a non-negative integer or null"),
    ({"checkpoints": [_entry(files=[_file(sha256=SHA[:-1])])]},
     "<dict>: checkpoint 'toy': m.pth: sha256 must be 64 lower-case hex digits or null"),
    ({"checkpoints": [_entry(files=[_file(sha256=0)])]},
     "<dict>: checkpoint 'toy': m.pth: sha256 must be 64 lower-case hex digits or null"),
])
def test_a_malformed_manifest_is_refused_with_what_and_where(data, message):
    assert _error(data) == message


@pytest.mark.parametrize("filename, message", [
    ("", "must be a non-empty name, got ''"),
    ("..", "must be a non-empty name, got '..'"),
    (".", "must be a non-empty name, got '.'"),
    (None, "must be a non-empty name, got None"),
    ("a\\b.pth", "must be a bare name without directories, got 'a\\\\b.pth'"),
    ("/etc/passwd", "must be a bare name without directories, got '/etc/passwd'"),
])
def test_file_names_cannot_leave_the_checkpoint_directory(filename, message):
    assert _error({"checkpoints": [_entry(files=[_file(filename=filename)])]}) == (
        f"<dict>: checkpoint 'toy': filename {message}")


def test_edge_values_that_are_valid():
    entries = ckpt.manifest({"checkpoints": [_entry(files=[_file(size=0, url=None, sha256=None)]),
                                             _entry(name="t0", files=[_file(url="http://plain.invalid/m")])]})
    assert entries["toy"].files[0].size == 0 and entries["toy"].files[0].urls == ()
    assert entries["t0"].downloadable and not entries["toy"].downloadable


def test_unknown_name_lists_the_known_ones():
    data = {"checkpoints": [_entry(name="zeta"), _entry(name="alpha")]}
    with pytest.raises(ckpt.ManifestError) as err:
        ckpt.get_entry("beta", data)
    assert str(err.value) == "unknown checkpoint 'beta'; known: alpha, zeta"


def test_manifest_source_order_override_then_env_then_repository(tmp_path, monkeypatch):
    from_env, from_override = tmp_path / "env.json", tmp_path / "override.json"
    from_env.write_text(json.dumps({"checkpoints": [_entry(name="from_env")]}))
    from_override.write_text(json.dumps({"checkpoints": [_entry(name="from_override")]}))
    monkeypatch.delenv("SKINAPP_MANIFEST", raising=False)
    assert "sam_vit_b" in ckpt.manifest()  # the repository's checkpoints/manifest.json
    monkeypatch.setenv("SKINAPP_MANIFEST", str(from_env))
    assert list(ckpt.manifest()) == ["from_env"]
    with ckpt.use_manifest(from_override):
        assert list(ckpt.manifest()) == ["from_override"]
        with ckpt.use_manifest({"checkpoints": [_entry(name="inner")]}):
            assert list(ckpt.manifest()) == ["inner"]
        assert list(ckpt.manifest()) == ["from_override"], "the previous override comes back"
    assert list(ckpt.manifest()) == ["from_env"]
    with pytest.raises(RuntimeError), ckpt.use_manifest(from_override):
        raise RuntimeError("a failure inside the block")
    assert list(ckpt.manifest()) == ["from_env"], "restored after an exception too"


def test_set_manifest_keeps_its_own_copy_and_none_restores_the_default(monkeypatch):
    monkeypatch.delenv("SKINAPP_MANIFEST", raising=False)
    data = {"checkpoints": [_entry()]}
    ckpt.set_manifest(data)
    try:
        data["checkpoints"][0]["name"] = "changed_later"
        assert list(ckpt.manifest()) == ["toy"]
    finally:
        ckpt.set_manifest(None)
    assert "sam_vit_b" in ckpt.manifest()


def test_manifest_file_errors_name_the_file(tmp_path):
    absent, broken = tmp_path / "absent.json", tmp_path / "broken.json"
    broken.write_text("{not json")
    assert _error(absent) == f"checkpoint manifest not found: {absent}"
    assert _error(str(broken)).startswith(f"checkpoint manifest {broken} is not valid JSON: Expecting property name")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"checkpoints": [_entry(origin="x")]}))
    assert _error(bad) == f"{bad}: checkpoint 'toy': origin must be one of ('official', 'trained')"


def test_checkpoint_dir_setting(monkeypatch):
    monkeypatch.delenv("SKINAPP_CHECKPOINT_DIR", raising=False)
    assert ckpt.checkpoint_dir() == Path(__file__).resolve().parents[1] / "checkpoints"
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", "~/models")
    assert ckpt.checkpoint_dir() == Path.home() / "models"
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", "")
    assert ckpt.checkpoint_dir() == _manifest.DEFAULT_CHECKPOINT_DIR


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("0", False), ("false", False), ("no", False),
    ("1", True), ("true", True), (" TRUE ", True), ("Yes", True), ("on", True),
])
def test_offline_setting(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("SKINAPP_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("SKINAPP_OFFLINE", value)
    assert ckpt.offline() is expected


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_hub_file_is_read_with_main_as_its_default_revision_and_described_for_people():
    pinned = _file(hub={"repo_id": "org/model-1", "filename": "sub/m.pth", "revision": COMMIT})
    branch = _file(filename="n.pth", hub={"repo_id": "org/model-1", "filename": "n.pth"})
    entries = ckpt.manifest({"checkpoints": [_entry(files=[pinned]), _entry(name="other", files=[branch])]})
    hub = entries["toy"].files[0].hub
    assert (hub.repo_id, hub.filename, hub.revision, hub.pinned) == ("org/model-1", "sub/m.pth", COMMIT, True)
    assert hub.describe() == f"hf://org/model-1/sub/m.pth @ {COMMIT}"
    assert entries["toy"].files[0].source == f"hf://org/model-1/sub/m.pth @ {COMMIT}"
    hub = entries["other"].files[0].hub
    assert (hub.revision, hub.pinned) == ("main", False)
    assert hub.describe() == "hf://org/model-1/n.pth @ main (not pinned)"
    assert entries["other"].on_hub and entries["other"].downloadable


@pytest.mark.parametrize("hub, message", [
    ("org/model", "'hub' must be an object with repo_id, filename and revision"),
    ({"repo_id": "model", "filename": "m.pth"}, "hub repo_id must look like 'owner/name', got 'model'"),
    ({"repo_id": 5, "filename": "m.pth"}, "hub repo_id must look like 'owner/name', got 5"),
    ({"repo_id": "o/m", "filename": ""}, "hub filename must be a path inside the repository, got ''"),
    ({"repo_id": "o/m", "filename": 3}, "hub filename must be a path inside the repository, got 3"),
    ({"repo_id": "o/m", "filename": "a//m.pth"}, "hub filename must be a path inside the repository, got 'a//m.pth'"),
    ({"repo_id": "o/m", "filename": "./m.pth"}, "hub filename must be a path inside the repository, got './m.pth'"),
    ({"repo_id": "o/m", "filename": "../m.pth"},
     "hub filename must be a path inside the repository, got '../m.pth'"),
    ({"repo_id": "o/m", "filename": "m.pth", "revision": ""}, "hub revision must be a commit hash or a branch name"),
    ({"repo_id": "o/m", "filename": "m.pth", "revision": 7}, "hub revision must be a commit hash or a branch name"),
])
def test_a_malformed_hub_location_is_refused_with_the_file_it_belongs_to(hub, message):
    assert _error({"checkpoints": [_entry(files=[_file(hub=hub)])]}) == f"<dict>: checkpoint 'toy': m.pth: {message}"


@pytest.mark.parametrize("hubs", [
    [{"repo_id": "o/m", "filename": "a.bin"}, None],  # one file not on the Hub
    [{"repo_id": "o/m", "filename": "a.bin"}, {"repo_id": "o/other", "filename": "b.bin"}],  # two repositories
    [{"repo_id": "o/m", "filename": "a.bin"}, {"repo_id": "o/m", "filename": "b.bin", "revision": COMMIT}],
    [{"repo_id": "o/m", "filename": "a.bin"}, {"repo_id": "o/m", "filename": "weights/b.bin"}],  # another name
])
def test_a_hub_directory_entry_is_one_repository_snapshot(hubs):
    files = [_file(filename=name, **({"hub": hub} if hub else {})) for name, hub in zip(("a.bin", "b.bin"), hubs)]
    assert _error({"checkpoints": [_entry(files=files, directory="d")]}) == (
        "<dict>: checkpoint 'toy': the files of a Hub directory entry must all come from one repo and revision, "
        "under their own names")
    good = [_file(filename=name, hub={"repo_id": "o/m", "filename": name}) for name in ("a.bin", "b.bin")]
    assert ckpt.manifest({"checkpoints": [_entry(files=good, directory="d")]})["toy"].on_hub


@pytest.mark.parametrize("env, hub, expected", [
    ({}, True, None),
    ({"SKINAPP_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}, True, "SKINAPP_OFFLINE=1"),
    ({"SKINAPP_OFFLINE": "yes"}, False, "SKINAPP_OFFLINE=1"),
    ({"HF_HUB_OFFLINE": " Yes "}, True, "HF_HUB_OFFLINE=1"),
    ({"HF_HUB_OFFLINE": "1"}, False, None),  # the Hub's switch does not stop other downloads
    ({"HF_HUB_OFFLINE": "0"}, True, None),
    ({"hf_hub_offline": "1"}, True, None),  # environment names are case-sensitive
])
def test_offline_reason_names_the_setting_that_forbids_downloads(monkeypatch, env, hub, expected):
    for name in ("SKINAPP_OFFLINE", "HF_HUB_OFFLINE", "hf_hub_offline"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _manifest.offline_reason(hub=hub) == expected
    if not hub:
        assert _manifest.offline_reason() == expected  # hub=False is the default
