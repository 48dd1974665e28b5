"""Safe loading: which files are checked against the manifest before loading, what the refusals say, and
how official file layouts (nested, DDP-prefixed) become a flat state dict."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from safetensors.torch import save_file

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Good torch files and a manifest pinning them: a single-file entry, a two-file directory entry, a file
    name shared by two entries, and an unpinned entry."""
    monkeypatch.delenv("SKINAPP_MANIFEST", raising=False)
    _hashing._memory.clear()
    paths = {}
    for name, value in (("single.pth", 1.0), ("weights.pth", 2.0), ("shared.pth", 3.0), ("loose.pth", 4.0)):
        paths[name] = tmp_path / name
        torch.save({"w": torch.full((3,), value)}, paths[name])
    blob = {name: p.read_bytes() for name, p in paths.items()}

    def spec(name, pinned=True):
        return {"filename": name, "url": None, "size": len(blob[name]) if pinned else None,
                "sha256": _sha(blob[name]) if pinned else None}

    def entry(name, specs, **extra):
        return {"name": name, "kind": "sam", "origin": "trained", "description": name, "licence": "MIT",
                "files": specs, **extra}

    data = {"checkpoints": [
        entry("single", [spec("single.pth")]),
        entry("folder", [{"filename": "config.json", "url": None, "size": None, "sha256": None},
                         spec("weights.pth")], directory="folder"),
        entry("shared_a", [spec("shared.pth")]),
        entry("shared_b", [spec("shared.pth")]),
        entry("loose", [spec("loose.pth", pinned=False)]),
    ]}
    with ckpt.use_manifest(data):
        yield paths


def _tamper(path, keep_size=True):
    """Replace the file by another loadable state dict: same size (other values), or one byte longer."""
    size = path.stat().st_size
    torch.save({"w": torch.full((3,), -7.0)}, path)
    if not keep_size:
        path.write_bytes(path.read_bytes() + b"\0")
    assert path.stat().st_size == size + (0 if keep_size else 1)
    return path.read_bytes()


def test_a_pinned_single_file_is_checked_by_default_with_the_fix_in_the_message(files):
    assert torch.equal(ckpt.load_state_dict(files["single.pth"])["w"], torch.full((3,), 1.0))
    good = files["single.pth"].read_bytes()
    bad = _tamper(files["single.pth"])
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.load_state_dict(files["single.pth"])
    assert str(err.value) == (
        f"SHA-256 mismatch for {files['single.pth']}: expected {_sha(good)}, got {_sha(bad)}. The file was refused "
        "before loading: it is corrupt or not the file the manifest pins; fetch it again.")
    assert (err.value.expected, err.value.actual) == (_sha(good), _sha(bad))


def test_a_wrong_size_is_refused_before_hashing(files, monkeypatch):
    size = files["single.pth"].stat().st_size
    _tamper(files["single.pth"], keep_size=False)
    monkeypatch.setattr("skinapp.checkpoints._loading.cached_sha256",
                        lambda path: pytest.fail("a file of the wrong size was hashed"))
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.load_state_dict(files["single.pth"])
    assert str(err.value) == (
        f"size mismatch for {files['single.pth']}: expected {size} bytes, got {size + 1} bytes. The file was refused "
        "before loading: it is truncated or not the file the manifest pins; fetch it again.")


def test_name_picks_the_entry_and_the_file_of_a_directory_entry(files):
    _tamper(files["weights.pth"])
    with pytest.raises(ckpt.ChecksumMismatchError, match="weights.pth: expected"):
        ckpt.load_state_dict(files["weights.pth"], name="folder")  # the default mode checks a named entry
    assert set(ckpt.load_state_dict(files["weights.pth"])) == {"w"}, "a directory's file name alone is not checked"
    with pytest.raises(ckpt.ManifestError) as err:
        ckpt.load_state_dict(files["single.pth"], name="folder")
    assert str(err.value) == (f"cannot verify {files['single.pth']}: 0 matching files in checkpoint 'folder'; "
                              "pass name=")
    assert set(ckpt.load_state_dict(files["single.pth"], name="single")) == {"w"}
    _tamper(files["single.pth"])
    with pytest.raises(ckpt.ChecksumMismatchError, match="single.pth: expected"):
        ckpt.load_state_dict(files["single.pth"], verify=True, name="single")


def test_an_ambiguous_or_unpinned_file_name_is_not_guessed(files):
    _tamper(files["shared.pth"])
    assert set(ckpt.load_state_dict(files["shared.pth"])) == {"w"}, "two entries share the name: no automatic check"
    with pytest.raises(ckpt.ManifestError) as err:
        ckpt.load_state_dict(files["shared.pth"], verify=True)
    assert str(err.value) == (f"cannot verify {files['shared.pth']}: 2 matching files in the manifest (file name "
                              "'shared.pth'); pass name=")
    with pytest.raises(ckpt.ChecksumMismatchError, match="shared.pth: expected"):
        ckpt.load_state_dict(files["shared.pth"], verify=True, name="shared_b")
    assert set(ckpt.load_state_dict(files["loose.pth"])) == {"w"}
    with pytest.raises(ckpt.ManifestError) as err:
        ckpt.load_state_dict(files["loose.pth"], verify=True)
    assert str(err.value) == (f"cannot verify {files['loose.pth']}: the manifest (file name 'loose.pth') pins no "
                              "SHA-256 for it")


def test_verify_false_skips_the_check_and_a_missing_file_names_itself(files, tmp_path):
    _tamper(files["single.pth"])
    assert set(ckpt.load_state_dict(files["single.pth"], verify=False)) == {"w"}
    absent = tmp_path / "absent.pth"
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.load_state_dict(absent, name="single")
    assert (str(err.value), err.value.name, err.value.looked_in) == (
        f"checkpoint file not found: {absent}", "single", (str(absent),))
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.load_state_dict(absent)
    assert err.value.name == "absent.pth"


def test_without_a_manifest_the_warning_names_the_file_and_why(tmp_path, caplog):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"w": torch.ones(2)}, path)
    with ckpt.use_manifest(tmp_path / "absent.json"), caplog.at_level(logging.WARNING):
        ckpt.load_state_dict(path)
    assert [r.getMessage() for r in caplog.records if r.name == "skinapp.checkpoints._loading"] == [
        f"sam_vit_b_01ec64.pth is loaded without a SHA-256 check: checkpoint manifest not found: "
        f"{tmp_path / 'absent.json'}"]


def test_load_tensors_unwraps_official_layouts(tmp_path):
    w, b = torch.arange(4.0), torch.ones(2)
    layouts = {
        "flat.pth": {"w": w, "b": b},
        "lightning.pth": {"state_dict": {"w": w, "b": b}, "model": {"other": torch.zeros(1)}, "epoch": 3},
        "gdino.pth": {"model": {"module.w": w, "module.b": b}, "optimizer": {}, "epoch": 3},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        state = ckpt.load_tensors(tmp_path / name, keep_non_tensors=False)
        assert list(state) == ["w", "b"], name
        assert torch.equal(state["w"], w) and torch.equal(state["b"], b), name
    assert list(ckpt.load_tensors(tmp_path / "lightning.pth", nested=("model",), keep_non_tensors=True)) == ["other"]


def test_load_tensors_refuses_non_tensor_values_unless_asked(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"w": torch.ones(1), "epoch": 3, "note": "x", "step": 9, "lr": 0.1}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        ckpt.load_tensors(path)
    assert str(err.value) == "mixed.pth is not a state dict of tensors (e.g. ['epoch', 'note', 'step'])"
    assert ckpt.load_tensors(path, keep_non_tensors=True)["epoch"] == 3


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(1)], path)
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        ckpt.load_state_dict(path)
    assert str(err.value) == f"{path} holds a list, not a state dict (mapping)"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        ckpt.load_state_dict(garbage)
    assert str(err.value).startswith(f"{garbage} was refused: it holds no state dict a safe load can read (it is "
                                     "damaged, or pickles Python objects rather than tensors). ")


def test_safetensors_are_read_to_the_cpu_by_suffix(tmp_path):
    weights = {"w": torch.arange(3.0)}
    save_file(weights, str(tmp_path / "m.safetensors"))
    loaded = ckpt.load_state_dict(tmp_path / "m.safetensors")
    assert type(loaded) is dict and loaded["w"].device.type == "cpu" and torch.equal(loaded["w"], weights["w"])


def test_a_file_saved_on_another_device_is_loaded_to_the_cpu(tmp_path):
    """A checkpoint written on a GPU / Apple machine records its tensors' device; this app maps them to the CPU
    (built here without such a device: the location tag of a CPU file rewritten to "mps")."""
    import zipfile

    cpu_file, mps_file = tmp_path / "cpu.pth", tmp_path / "mps.pth"
    torch.save({"w": torch.arange(3.0)}, cpu_file)
    with zipfile.ZipFile(cpu_file) as zin, zipfile.ZipFile(mps_file, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, data.replace(b"cpu", b"mps") if name.endswith("data.pkl") else data)
    with pytest.raises(RuntimeError, match="mps"):
        torch.load(mps_file, weights_only=True)  # control: the file really names another device
    loaded = ckpt.load_state_dict(mps_file)
    assert loaded["w"].device.type == "cpu" and torch.equal(loaded["w"], torch.arange(3.0))


def test_a_pickle_is_refused_even_when_torch_is_told_to_allow_it(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch.load's safe default off; the app's explicit
    weights_only=True is not a default, so a pickle that would run code is still refused, with the fix."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('pwned')",)

    evil = tmp_path / "evil.pth"
    torch.save({"payload": Payload()}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        ckpt.load_state_dict(evil)
    assert not marker.exists()
    message = str(err.value)
    assert message == (f"{evil} was refused: it holds a Python object or function (exec) besides tensors. A safe "
                       "load (torch.load with weights_only=True) does not read code or objects, because loading them "
                       "would run code from the file. Do not load it any other way; use a safetensors file or a "
                       "weights-only state dict from a trusted source instead (e.g. the publisher's download: "
                       "python -m skinapp.checkpoints download NAME).")


def test_refusals_never_pass_on_torchs_advice_to_turn_the_safe_load_off(tmp_path):
    """torch.load's own message says 'Re-running torch.load with weights_only set to False will likely succeed'
    and how to allow-list the object: advice that runs the file's code. None of it reaches the user."""
    import datetime
    import warnings

    evil = tmp_path / "dated.pth"  # a harmless object, but not one a weights-only load rebuilds
    torch.save({"w": torch.ones(1), "saved": datetime.date(2026, 1, 2)}, evil)
    script = tmp_path / "script.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    for path, what in ((evil, "a Python object or function (datetime.date) besides tensors"),
                       (script, "a TorchScript program, not a state dict"),
                       (garbage, "no state dict a safe load can read")):
        with pytest.raises(ckpt.UnsafeCheckpointError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt.load_state_dict(path)
        message = str(err.value)
        assert f"it holds {what}" in message, message
        for advice in ("weights_only=False", "weights_only` set to `False", "add_safe_globals", "safe_globals",
                       "trusted source.\n", "WeightsUnpickler"):
            assert advice not in message, (path.name, advice)
        assert "use a safetensors file or a weights-only state dict from a trusted source" in message
        assert err.value.__cause__ is None and err.value.__suppress_context__  # not even in a traceback


def test_a_single_file_entry_checks_a_renamed_copy_and_logs_the_check(files, tmp_path, caplog):
    copy = tmp_path / "renamed" / "my-sam.pth"
    copy.parent.mkdir()
    copy.write_bytes(files["single.pth"].read_bytes())
    with caplog.at_level(logging.DEBUG, logger="skinapp.checkpoints._loading"):
        assert set(ckpt.load_state_dict(copy, name="single")) == {"w"}
    assert [r.getMessage() for r in caplog.records if r.name == "skinapp.checkpoints._loading"] == [
        f"{copy}: SHA-256 verified"]
    _tamper(copy)
    with pytest.raises(ckpt.ChecksumMismatchError, match="my-sam.pth: expected"):
        ckpt.load_state_dict(copy, name="single")
