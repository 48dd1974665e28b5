"""Checkpoints already on disk are checked against their pinned size and SHA-256 before their first load.

Corrupt (same size, one byte flipped), truncated and swapped files are refused with a message that says
what to do; the check is cached per version of the file (size, mtime, ctime, inode), so a second start
does not re-read gigabytes, while a file swapped in with its old mtime restored is still caught.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
from test_checkpoints import server  # noqa: F401 (fixture: local HTTP server)

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing

REPO_MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "manifest.json"
#: environment variables that would point the app at other checkpoint files (cleared in the start-up tests)
CHECKPOINT_ENV = ("SKINAPP_MANIFEST", "SKINAPP_SAM_VIT_B", "SKINAPP_GROUNDINGDINO_SWINT_OGC",
                  "SKINAPP_BERT_BASE_UNCASED", "SKINAPP_VIT_B16_AUGREG2", "SKINAPP_FUSION_CLASSIFIER",
                  "SKINAPP_CLIP_VIT_B16_OPENAI", "SKINAPP_CLIP_FINETUNED")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(name: str, filename: str, data: bytes, url: str = "https://example.invalid/never-fetched.pth") -> dict:
    return {"name": name, "kind": "sam", "origin": "official", "description": f"test entry {name}",
            "licence": "Apache-2.0",
            "files": [{"filename": filename, "url": url, "size": len(data), "sha256": _sha(data)}]}


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """Two pinned single-file entries whose good files lie in a temporary checkpoint directory."""
    good_a = os.urandom(300_000)
    good_b = os.urandom(300_000)  # same size as a: a swap is not caught by the size alone
    directory = tmp_path / "ckpts"
    directory.mkdir()
    (directory / "model_a.pth").write_bytes(good_a)
    (directory / "model_b.pth").write_bytes(good_b)
    data = {"version": 1, "checkpoints": [_entry("model_a", "model_a.pth", good_a),
                                          _entry("model_b", "model_b.pth", good_b)]}
    for var in ("SKINAPP_MODEL_A", "SKINAPP_MODEL_B", "SKINAPP_OFFLINE", "SKINAPP_MANIFEST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    _hashing._memory.clear()
    with ckpt.use_manifest(data):
        yield {"dir": directory, "a": good_a, "b": good_b, "path_a": directory / "model_a.pth", "tmp": tmp_path}


@pytest.fixture
def hash_calls(monkeypatch):
    """Counts full reads of a file for hashing."""
    calls: list[str] = []
    real = _hashing.sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(_hashing, "sha256_file", counting)
    return calls


def test_good_file_resolves_and_is_hashed_once_per_version(pinned, hash_calls):
    assert ckpt.resolve("model_a") == pinned["path_a"]
    assert hash_calls == ["model_a.pth"]
    assert ckpt.resolve("model_a") == pinned["path_a"]  # same process: in-memory cache
    _hashing._memory.clear()  # a new process: the stamp written beside the file is used
    assert ckpt.resolve("model_a") == pinned["path_a"]
    assert hash_calls == ["model_a.pth"]
    assert (pinned["dir"] / "model_a.pth.sha256").is_file()  # the stamp the README documents


def test_unwritable_stamp_falls_back_to_the_in_process_cache(pinned, hash_calls, monkeypatch, caplog):
    nowhere = pinned["tmp"] / "no-such-dir"
    monkeypatch.setattr(_hashing, "stamp_path", lambda path: nowhere / (path.name + ".sha256"))

    assert ckpt.resolve("model_a") == pinned["path_a"]
    assert ckpt.resolve("model_a") == pinned["path_a"]

    assert hash_calls == ["model_a.pth"]  # hashed once: the second start of the same process asks memory
    assert f"could not write verification stamp {nowhere / 'model_a.pth.sha256'}: " in caplog.text
    pinned["path_a"].write_bytes(pinned["b"])  # a new version of the file is not served from memory
    with pytest.raises(ckpt.ChecksumMismatchError, match="SHA-256 mismatch"):
        ckpt.resolve("model_a")
    assert hash_calls == ["model_a.pth", "model_a.pth"]


def test_status_without_recompute_hashes_nothing(pinned, hash_calls):
    assert ckpt.status("model_a").files[0].state is ckpt.FileState.NOT_CHECKED
    ckpt.resolve("model_a")
    assert ckpt.status("model_a").files[0].state is ckpt.FileState.VERIFIED
    assert hash_calls == ["model_a.pth"]  # only resolve read the file


def test_a_stamp_with_a_non_text_digest_is_ignored(pinned):
    ckpt.resolve("model_a")
    stamp = pinned["dir"] / "model_a.pth.sha256"
    record = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**record, "sha256": 12345}))
    assert _hashing.read_stamp(pinned["path_a"]) is None


def test_corrupt_file_is_refused_with_a_clear_message_and_left_in_place(pinned):
    ckpt.resolve("model_a")  # verified and stamped while good
    data = bytearray(pinned["a"])
    data[len(data) // 2] ^= 0x01  # same size, one bit
    pinned["path_a"].write_bytes(bytes(data))

    with pytest.raises(ckpt.ChecksumMismatchError, match="refused before loading") as err:
        ckpt.resolve("model_a")

    message = str(err.value)
    assert err.value.expected == _sha(pinned["a"]) and err.value.actual == _sha(bytes(data))
    for needle in (str(pinned["path_a"]), "python -m skinapp.checkpoints download model_a", "SKINAPP_MODEL_A"):
        assert needle in message, needle
    assert pinned["path_a"].read_bytes() == bytes(data)  # refused, not deleted: the user decides


def test_truncated_file_is_refused_by_its_size_without_reading_it(pinned, hash_calls):
    pinned["path_a"].write_bytes(pinned["a"][:-1000])

    with pytest.raises(ckpt.ChecksumMismatchError, match=r"size mismatch .*expected 300000 bytes, got 299000 bytes"):
        ckpt.resolve("model_a")
    assert hash_calls == []


def test_swapped_file_is_refused_even_with_its_old_mtime_restored(pinned):
    ckpt.resolve("model_a")  # stamp of the good file
    before = pinned["path_a"].stat()
    swapped = pinned["tmp"] / "swap.pth"
    swapped.write_bytes(pinned["b"])  # another valid checkpoint of the same size
    os.replace(swapped, pinned["path_a"])
    os.utime(pinned["path_a"], ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -r`: size and mtime as before
    assert pinned["path_a"].stat().st_mtime_ns == before.st_mtime_ns

    with pytest.raises(ckpt.ChecksumMismatchError, match=re.escape(_sha(pinned["b"]))):
        ckpt.resolve("model_a")


def test_rewritten_in_place_with_old_mtime_is_refused(pinned):
    ckpt.resolve("model_a")
    before = pinned["path_a"].stat()
    with open(pinned["path_a"], "r+b") as fh:  # same inode, same size
        fh.write(b"\0" * 16)
    os.utime(pinned["path_a"], ns=(before.st_atime_ns, before.st_mtime_ns))

    with pytest.raises(ckpt.ChecksumMismatchError, match="SHA-256 mismatch .*refused before loading"):
        ckpt.resolve("model_a")


def test_bad_explicit_path_is_refused_not_replaced(pinned, monkeypatch):
    elsewhere = pinned["tmp"] / "elsewhere.pth"
    elsewhere.write_bytes(pinned["b"])
    monkeypatch.setenv("SKINAPP_MODEL_A", str(elsewhere))

    with pytest.raises(ckpt.ChecksumMismatchError, match=re.escape("($SKINAPP_MODEL_A)")):
        ckpt.resolve("model_a", download=True)
    assert elsewhere.read_bytes() == pinned["b"]


def test_unverified_resolution_is_only_for_reporting(pinned):
    pinned["path_a"].write_bytes(pinned["b"])
    assert ckpt.resolve("model_a", verify=False) == pinned["path_a"]
    assert ckpt.status("model_a", recompute=True).mismatched


def test_bad_copy_in_checkpoint_dir_is_downloaded_again_when_asked(server, tmp_path, monkeypatch, caplog):  # noqa: F811
    state, base = server
    good = os.urandom(200_000)
    state.files["/m.pth"] = good
    directory = tmp_path / "ckpts"
    directory.mkdir()
    (directory / "model_a.pth").write_bytes(good[:150_000] + b"x" * 50_000)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    monkeypatch.delenv("SKINAPP_OFFLINE", raising=False)
    monkeypatch.delenv("SKINAPP_MODEL_A", raising=False)
    with ckpt.use_manifest({"checkpoints": [_entry("model_a", "model_a.pth", good, url=f"{base}/m.pth")]}):
        with pytest.raises(ckpt.ChecksumMismatchError, match="refused before loading") as refused:
            ckpt.resolve("model_a")  # download=False: refused
        assert state.requests == []
        with caplog.at_level(logging.WARNING, logger="skinapp.checkpoints._resolve"):
            assert ckpt.resolve("model_a", download=True).read_bytes() == good
        assert [r.getMessage() for r in caplog.records if r.name == "skinapp.checkpoints._resolve"][0] == (
            f"{refused.value}; downloading it again")
    assert len(state.requests) == 1


def test_official_file_name_is_checked_by_the_loader_however_it_was_found(tmp_path, monkeypatch):
    """`--sam-checkpoint somewhere/sam_vit_b_01ec64.pth` (no resolve) is still checked against the real manifest."""
    monkeypatch.delenv("SKINAPP_MANIFEST", raising=False)
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"w": torch.zeros(3)}, fake)
    other = tmp_path / "my_sam.pth"
    torch.save({"w": torch.zeros(3)}, other)

    with ckpt.use_manifest(REPO_MANIFEST):
        with pytest.raises(ckpt.ChecksumMismatchError, match="size mismatch .*expected 375042383 bytes"):
            ckpt.load_tensors(fake)
        assert set(ckpt.load_tensors(other)) == {"w"}  # not an official file name: loaded as it is
        assert set(ckpt.load_state_dict(fake, verify=False)) == {"w"}  # an explicit opt-out


def test_app_refuses_to_start_on_a_tampered_official_checkpoint(tmp_path, monkeypatch):
    from skinapp.pipeline import Analyzer

    for var in CHECKPOINT_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path))
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"\0" * 1024)

    with ckpt.use_manifest(REPO_MANIFEST), \
            pytest.raises(ckpt.ChecksumMismatchError, match="Checkpoint 'sam_vit_b' .* refused before loading"):
        Analyzer.create(profile="auto", device="cpu", warmup=False)


def test_without_a_manifest_the_loader_warns_instead_of_checking(tmp_path, caplog):
    """The package used without the repository's manifest: loading works, and the log says it was not checked."""
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"w": torch.ones(2)}, path)
    with ckpt.use_manifest(tmp_path / "absent.json"):
        assert set(ckpt.load_tensors(path)) == {"w"}
        with pytest.raises(ckpt.ManifestError, match="manifest not found"):
            ckpt.load_state_dict(path, verify=True)  # an explicit check cannot be skipped
    assert "sam_vit_b_01ec64.pth is loaded without a SHA-256 check" in caplog.text


def test_app_start_on_a_tampered_checkpoint_is_one_log_line(tmp_path, monkeypatch, caplog):
    """`python app.py` says why it does not start in one line (exit status 2), no traceback."""
    import app

    for var in CHECKPOINT_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-before"))
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"\0" * 1024)
    with ckpt.use_manifest(REPO_MANIFEST), caplog.at_level(logging.ERROR, logger="skinapp.app"):
        status = app.main(["--profile", "auto", "--no-warmup", "--temp-dir", str(tmp_path / "tmp"),
                           "--data-dir", str(tmp_path / "data")])
    assert status == 2
    refusals = [r for r in caplog.records if r.name == "skinapp.app"]
    assert len(refusals) == 1 and refusals[0].getMessage().startswith("not starting: size mismatch for ")
    assert "SKINAPP_SAM_VIT_B" in refusals[0].getMessage()
    assert refusals[0].exc_info is None
