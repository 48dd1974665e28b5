"""What a user reads when a checkpoint is missing or refused, and what ``verify`` / ``status`` report.

The messages are compared whole: they are the app's only help when a model cannot be loaded (what is
missing, where it was looked for, how to get it). Nothing here downloads: download URLs point at
``example.invalid`` and are never fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing

URL = "https://example.invalid/files"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(filename: str, data: bytes | None, url: str | None = None, pinned: bool = True) -> dict:
    return {"filename": filename, "url": url, "size": len(data) if data is not None and pinned else None,
            "sha256": _sha(data) if data is not None and pinned else None}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A manifest of four entries (one file, a directory, trained + pinned, trained + unpinned); nothing on disk."""
    model, cfg, vocab, trained = os.urandom(4000), b'{"hidden_size": 8}', b"[PAD]\n[UNK]\n", os.urandom(3000)
    data = {"checkpoints": [
        {"name": "toy_sam", "kind": "sam", "origin": "official", "description": "a tiny SAM", "licence": "Apache-2.0",
         "files": [_spec("toy_sam.pth", model, f"{URL}/sam.pth")]},
        {"name": "toy_bert", "kind": "text_encoder", "origin": "official", "description": "a tiny BERT",
         "licence": "Apache-2.0", "directory": "toy-bert",
         "files": [_spec("config.json", cfg, f"{URL}/config.json", pinned=False),
                   _spec("vocab.txt", vocab, f"{URL}/vocab.txt")]},
        {"name": "toy_fusion", "kind": "fusion", "origin": "trained", "description": "our fusion model",
         "licence": "MIT", "how_to_get": "Run python -m train.fusion to produce it.",
         "files": [_spec("toy_fusion.safetensors", trained)]},
        {"name": "toy_clip", "kind": "open_clip", "origin": "trained", "description": "our CLIP",
         "licence": "MIT", "files": [_spec("toy_clip.pt", None, pinned=False)]},
    ]}
    directory = tmp_path / "ckpts"
    directory.mkdir()
    for var in ("SKINAPP_OFFLINE", "SKINAPP_MANIFEST", "SKINAPP_TOY_SAM", "SKINAPP_TOY_BERT", "SKINAPP_TOY_FUSION",
                "SKINAPP_TOY_CLIP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    _hashing._memory.clear()
    with ckpt.use_manifest(data):
        yield {"dir": directory, "tmp": tmp_path, "model": model, "cfg": cfg, "vocab": vocab, "trained": trained}


# --------------------------------------------------------------------------- missing


def test_missing_file_message_says_what_where_and_how(toy):
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.resolve("toy_sam")
    where = toy["dir"] / "toy_sam.pth"
    assert str(err.value) == "\n".join([
        "Checkpoint 'toy_sam' (toy_sam.pth) is missing: a tiny SAM",
        "Looked in:",
        "  - $SKINAPP_TOY_SAM: not set",
        f"  - checkpoint dir: {where} (not found)",
        "Downloading was not requested (download=False).",
        "How to get it:",
        "  - python -m skinapp.checkpoints download toy_sam",
        "  - or skinapp.checkpoints.resolve('toy_sam', download=True)",
        f"  - or fetch {URL}/sam.pth to {where} (SHA-256 {_sha(toy['model'])})",
        "  - or set SKINAPP_TOY_SAM=/path/to/toy_sam.pth",
    ])
    assert err.value.name == "toy_sam"
    assert err.value.looked_in == ("$SKINAPP_TOY_SAM: not set", f"checkpoint dir: {where} (not found)")


def test_incomplete_directory_names_the_missing_files_and_each_destination(toy, monkeypatch):
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.resolve("toy_bert", download=True)
    where = toy["dir"] / "toy-bert"
    assert str(err.value) == "\n".join([
        "Checkpoint 'toy_bert' (toy-bert/) is missing: a tiny BERT",
        "Looked in:",
        "  - $SKINAPP_TOY_BERT: not set",
        f"  - checkpoint dir: {where} (missing config.json, vocab.txt)",
        "Downloading is disabled by SKINAPP_OFFLINE=1.",
        "How to get it:",
        "  - unset SKINAPP_OFFLINE, then python -m skinapp.checkpoints download toy_bert",  # not a circular hint
        "  - or skinapp.checkpoints.resolve('toy_bert', download=True)",
        f"  - or fetch {URL}/config.json to {where / 'config.json'} (SHA-256 not pinned)",
        f"  - or fetch {URL}/vocab.txt to {where / 'vocab.txt'} (SHA-256 {_sha(toy['vocab'])})",
        "  - or set SKINAPP_TOY_BERT=/path/to/toy-bert/",
    ])
    where.mkdir()
    (where / "config.json").write_bytes(toy["cfg"])
    with pytest.raises(ckpt.CheckpointMissing, match=r"\(missing vocab\.txt\)\n"):
        ckpt.resolve("toy_bert")


def test_trained_checkpoint_message_says_how_to_produce_it(toy):
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.resolve("toy_fusion", download=True)
    assert str(err.value) == "\n".join([
        "Checkpoint 'toy_fusion' (toy_fusion.safetensors) is missing: our fusion model",
        "Looked in:",
        "  - $SKINAPP_TOY_FUSION: not set",
        f"  - checkpoint dir: {toy['dir'] / 'toy_fusion.safetensors'} (not found)",
        "It has no download URL: it is one of our own trained checkpoints.",
        "How to get it:",
        "  - Run python -m train.fusion to produce it.",
        "  - or set SKINAPP_TOY_FUSION=/path/to/toy_fusion.safetensors",
    ])


def test_explicit_path_message_lists_only_that_path(toy, monkeypatch):
    absent = toy["tmp"] / "elsewhere" / "sam.pth"
    monkeypatch.setenv("SKINAPP_TOY_SAM", str(absent))
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.resolve("toy_sam", download=True)
    assert err.value.looked_in == (f"$SKINAPP_TOY_SAM: {absent} (not found)",)
    assert str(err.value).splitlines()[2:4] == [f"  - $SKINAPP_TOY_SAM: {absent} (not found)",
                                               "The explicit path was used, so nothing else was tried."]


# --------------------------------------------------------------------------- refused


def test_refusal_of_a_downloadable_file_says_how_to_replace_it(toy):
    bad = bytes(len(toy["model"]))
    (toy["dir"] / "toy_sam.pth").write_bytes(bad)
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.resolve("toy_sam")
    assert str(err.value) == (
        f"SHA-256 mismatch for {toy['dir'] / 'toy_sam.pth'}: expected {_sha(toy['model'])}, got {_sha(bad)}. "
        "Checkpoint 'toy_sam' (checkpoint dir) was refused before loading: the file is corrupt, truncated, or not "
        "the one the checkpoint manifest pins. Get it again with: python -m skinapp.checkpoints download toy_sam "
        "(replaces a bad copy in the checkpoint directory), or set SKINAPP_TOY_SAM to a good copy. Weights of your "
        "own need a manifest that pins them (SKINAPP_MANIFEST).")


def test_refusal_by_size_says_so_and_how_to_replace_it(toy):
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"][:-10])
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.resolve("toy_sam")
    assert str(err.value).startswith(
        f"size mismatch for {toy['dir'] / 'toy_sam.pth'}: expected 4000 bytes, got 3990 bytes. Checkpoint 'toy_sam' "
        "(checkpoint dir) was refused before loading: the file is corrupt, truncated, or not the one the checkpoint "
        "manifest pins. Get it again with:")


def test_refusal_of_a_trained_file_names_its_source_and_the_variable(toy, monkeypatch):
    wrong = toy["tmp"] / "fusion.safetensors"
    wrong.write_bytes(bytes(len(toy["trained"])))
    monkeypatch.setenv("SKINAPP_TOY_FUSION", str(wrong))
    with pytest.raises(ckpt.ChecksumMismatchError) as err:
        ckpt.resolve("toy_fusion", download=True)
    assert str(err.value).endswith(
        "Checkpoint 'toy_fusion' ($SKINAPP_TOY_FUSION) was refused before loading: the file is corrupt, truncated, "
        "or not the one the checkpoint manifest pins. Set SKINAPP_TOY_FUSION to a good copy. Weights of your own "
        "need a manifest that pins them (SKINAPP_MANIFEST).")
    assert wrong.read_bytes() == bytes(len(toy["trained"])), "a refused file is left for the user to replace"


def test_an_unpinned_file_does_not_stop_the_check_of_the_next_one(toy):
    where = toy["dir"] / "toy-bert"
    where.mkdir()
    (where / "config.json").write_bytes(b"anything: config.json is not pinned")
    (where / "vocab.txt").write_bytes(toy["vocab"][::-1])  # pinned, same size, wrong content
    with pytest.raises(ckpt.ChecksumMismatchError, match="vocab.txt: expected"):
        ckpt.resolve("toy_bert")
    (where / "vocab.txt").write_bytes(toy["vocab"])
    assert ckpt.resolve("toy_bert") == where


# --------------------------------------------------------------------------- verify and status


def test_verify_recomputes_the_file_at_the_given_path(toy):
    copy = toy["tmp"] / "copy.pth"
    copy.write_bytes(toy["model"])  # no stamp: only a recomputed digest can verify it

    assert ckpt.verify("toy_sam", path=copy) is True
    copy.write_bytes(toy["model"][::-1])
    assert ckpt.verify("toy_sam", path=copy) is False
    with pytest.raises(ckpt.CheckpointMissing, match="toy_sam.pth"):
        ckpt.verify("toy_sam")  # the checkpoint dir holds nothing


def test_verify_of_a_missing_file_raises_with_where_it_looked(toy):
    with pytest.raises(ckpt.CheckpointMissing) as err:
        ckpt.verify("toy_bert")
    where = toy["dir"] / "toy-bert"
    assert err.value.name == "toy_bert"
    assert err.value.looked_in == (f"checkpoint dir: {where} (missing config.json, vocab.txt)",)
    assert str(err.value).splitlines()[:3] == ["Checkpoint 'toy_bert' (toy-bert/) is missing: a tiny BERT",
                                               "Looked in:",
                                               f"  - checkpoint dir: {where} (missing config.json, vocab.txt)"]
    assert str(err.value).splitlines()[3] == "How to get it:", "verify adds no download note"


def test_verify_logs_each_mismatch_and_each_unpinned_file(toy, caplog):
    where = toy["dir"] / "toy-bert"
    where.mkdir()
    (where / "config.json").write_bytes(toy["cfg"])
    (where / "vocab.txt").write_bytes(b"not the vocabulary")
    with caplog.at_level(logging.WARNING, logger="skinapp.checkpoints._resolve"):
        assert ckpt.verify("toy_bert") is False
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "skinapp.checkpoints._resolve"]
    assert lines == [
        ("WARNING", f"{where / 'config.json'}: SHA-256 {_sha(toy['cfg'])}; the manifest pins no hash, so it is NOT "
                    "verified"),
        ("ERROR", f"{where / 'vocab.txt'}: SHA-256 mismatch: expected {_sha(toy['vocab'])}, got "
                  f"{_sha(b'not the vocabulary')}"),
    ]


def test_status_reports_where_it_looked_and_each_file(toy):
    copy = toy["tmp"] / "mine.pth"
    copy.write_bytes(toy["model"])
    st = ckpt.status("toy_sam", path=copy)
    assert (st.location, st.source, st.present, st.verified) == (copy, "argument", True, False)
    assert [(f.path, f.state, f.sha256) for f in st.files] == [(copy, ckpt.FileState.NOT_CHECKED, None)]
    st = ckpt.status("toy_sam", path=copy, recompute=True)
    assert [(f.path, f.state, f.sha256) for f in st.files] == [(copy, ckpt.FileState.VERIFIED, _sha(toy["model"]))]

    st = ckpt.status("toy_bert")
    assert (st.location, st.source, st.present) == (toy["dir"] / "toy-bert", "checkpoint dir", False)
    assert st.missing_files == ["config.json", "vocab.txt"]
    assert [f.path for f in st.files] == [st.location / "config.json", st.location / "vocab.txt"]
