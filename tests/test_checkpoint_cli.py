"""``python -m skinapp.checkpoints``: the lines a user reads and the exit codes scripts rely on.

No download is made: the entries' URLs point at ``example.invalid``, and ``download`` is only asked for
files already present (kept, not fetched) or for entries it must refuse.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing
from skinapp.checkpoints.cli import EXIT_FAILED, EXIT_OK, EXIT_UNVERIFIED, EXIT_USAGE, main

URL = "https://example.invalid"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    model, cfg, vocab = os.urandom(3 * 2**20 // 2), b'{"hidden_size": 8}', b"[PAD]\n"
    data = {"checkpoints": [
        {"name": "toy_sam", "kind": "sam", "origin": "official", "description": "d", "licence": "MIT",
         "files": [{"filename": "toy_sam.pth", "url": f"{URL}/sam.pth", "size": len(model), "sha256": _sha(model)}]},
        {"name": "toy_bert", "kind": "text_encoder", "origin": "official", "description": "d", "licence": "MIT",
         "directory": "toy-bert",
         "files": [{"filename": "config.json", "url": f"{URL}/c.json", "size": None, "sha256": None},
                   {"filename": "vocab.txt", "url": f"{URL}/v.txt", "size": len(vocab), "sha256": _sha(vocab)}]},
        {"name": "toy_fusion", "kind": "fusion", "origin": "trained", "description": "d", "licence": "MIT",
         "how_to_get": "train it", "files": [{"filename": "f.safetensors", "url": None, "size": None,
                                              "sha256": None}]},
    ]}
    directory = tmp_path / "ckpts"
    directory.mkdir()
    for var in ("SKINAPP_OFFLINE", "SKINAPP_MANIFEST", "SKINAPP_TOY_SAM", "SKINAPP_TOY_BERT", "SKINAPP_TOY_FUSION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    _hashing._memory.clear()
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(data))
    return {"dir": directory, "manifest": str(manifest_path), "model": model, "cfg": cfg, "vocab": vocab}


def _run(toy, capsys, *args) -> tuple[int, list[str], str]:
    code = main(["--manifest", toy["manifest"], *args])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def test_list_shows_each_state_size_and_place(toy, capsys, monkeypatch):
    bert = toy["dir"] / "toy-bert"
    code, lines, _ = _run(toy, capsys, "list")
    assert code == EXIT_OK
    assert lines == [
        f"checkpoint dir: {toy['dir']}",
        f"{'toy_sam':24s} official      1.5 MiB  {'missing':45s} {toy['dir'] / 'toy_sam.pth'}",
        f"{'toy_bert':24s} official      0.0 MiB  {'missing':45s} {bert}",
        f"{'toy_fusion':24s} trained         ? MiB  {'missing':45s} {toy['dir'] / 'f.safetensors'}",
    ]
    bert.mkdir()
    (bert / "vocab.txt").write_bytes(toy["vocab"])
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"])
    (toy["dir"] / "f.safetensors").write_bytes(b"ours")
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    code, lines, _ = _run(toy, capsys, "list")
    assert lines[0] == f"checkpoint dir: {toy['dir']}  (offline: SKINAPP_OFFLINE=1)"
    assert [line.split(" MiB  ")[1].rsplit(" ", 1)[0].strip() for line in lines[1:]] == [
        "present, not checked (run verify)", "incomplete (1/2 files missing)",
        "present, UNVERIFIED (no pinned SHA-256)"]
    (bert / "config.json").write_bytes(toy["cfg"])
    assert _run(toy, capsys, "verify", "toy_sam")[0] == EXIT_OK  # leaves a stamp: "verified" without re-hashing
    (bert / "vocab.txt").write_bytes(b"[UNK]\n")
    assert _run(toy, capsys, "verify", "toy_bert")[0] == EXIT_FAILED
    code, lines, _ = _run(toy, capsys, "list")
    assert [line.split(" MiB  ")[1].rsplit(" ", 1)[0].strip() for line in lines[1:3]] == [
        "present, verified", "SHA-256 MISMATCH"]


def test_verify_prints_one_line_per_file_and_its_exit_code(toy, capsys):
    bert = toy["dir"] / "toy-bert"
    bert.mkdir()
    (bert / "config.json").write_bytes(toy["cfg"])
    (bert / "vocab.txt").write_bytes(toy["vocab"])
    code, lines, _ = _run(toy, capsys, "verify", "toy_bert")
    assert code == EXIT_UNVERIFIED, "config.json has no pinned hash"
    assert lines == [f"toy_bert: {bert / 'config.json'}: present, UNVERIFIED (no pinned SHA-256) "
                     f"(sha256 {_sha(toy['cfg'])})",
                     f"toy_bert: {bert / 'vocab.txt'}: verified (sha256 {_sha(toy['vocab'])})"]

    code, lines, _ = _run(toy, capsys, "verify", "--skip-missing")
    assert code == EXIT_UNVERIFIED
    assert lines == ["toy_sam: skipped (missing)", *[f"toy_bert: {x}" for x in (
        f"{bert / 'config.json'}: present, UNVERIFIED (no pinned SHA-256) (sha256 {_sha(toy['cfg'])})",
        f"{bert / 'vocab.txt'}: verified (sha256 {_sha(toy['vocab'])})")], "toy_fusion: skipped (missing)"]

    code, lines, _ = _run(toy, capsys, "verify", "toy_sam")
    assert (code, lines) == (EXIT_FAILED, [f"toy_sam: {toy['dir'] / 'toy_sam.pth'}: missing"])
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"])
    assert _run(toy, capsys, "verify", "toy_sam")[0] == EXIT_OK
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"][::-1])
    code, lines, _ = _run(toy, capsys, "verify", "toy_sam")
    assert (code, lines) == (EXIT_FAILED, [f"toy_sam: {toy['dir'] / 'toy_sam.pth'}: SHA-256 MISMATCH "
                                           f"(sha256 {_sha(toy['model'][::-1])})"])


def test_verify_all_fails_on_a_missing_checkpoint_even_when_the_rest_is_good(toy, capsys):
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"])
    assert _run(toy, capsys, "verify")[0] == EXIT_FAILED


def test_download_keeps_a_good_copy_and_reports_it(toy, capsys):
    other = toy["dir"].parent / "elsewhere"
    other.mkdir()
    (other / "toy_sam.pth").write_bytes(toy["model"])
    code, lines, _ = _run(toy, capsys, "download", "toy_sam", "--dir", str(other), "--retries", "0",
                          "--no-progress")
    assert (code, lines) == (EXIT_OK, [f"{_sha(toy['model'])}  {other / 'toy_sam.pth'}  verified"])
    assert not (toy["dir"] / "toy_sam.pth").exists(), "--dir is where it goes"


def test_download_of_a_kept_unpinned_file_is_reported_unverified(toy, capsys):
    bert = toy["dir"] / "toy-bert"
    bert.mkdir()
    (bert / "config.json").write_bytes(toy["cfg"])
    (bert / "vocab.txt").write_bytes(toy["vocab"])
    code, lines, _ = _run(toy, capsys, "download", "toy_bert", "--no-progress")
    assert code == EXIT_UNVERIFIED
    # an unpinned file's digest is printed, so the user can compare it with the publisher's and pin it
    assert lines == [f"{_sha(toy['cfg'])}  {bert / 'config.json'}  UNVERIFIED (no pinned SHA-256)",
                     f"{_sha(toy['vocab'])}  {bert / 'vocab.txt'}  verified"]


def test_download_refusals_are_one_error_line_and_a_failure_code(toy, capsys, monkeypatch):
    code, lines, err = _run(toy, capsys, "download", "toy_fusion")
    assert (code, lines) == (EXIT_FAILED, [])
    assert err.startswith("error: Checkpoint 'toy_fusion' (f.safetensors) is missing: d\n")
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    code, _, err = _run(toy, capsys, "download", "toy_sam")
    assert code == EXIT_FAILED and "Downloading is disabled by SKINAPP_OFFLINE=1." in err


def test_a_bad_manifest_or_name_is_a_usage_error(toy, capsys, tmp_path):
    code, lines, err = _run(toy, capsys, "verify", "no_such")
    assert (code, lines, err) == (EXIT_USAGE, [], "error: unknown checkpoint 'no_such'; known: toy_bert, toy_fusion, "
                                                  "toy_sam\n")
    absent = tmp_path / "absent.json"
    assert main(["--manifest", str(absent), "list"]) == EXIT_USAGE
    assert capsys.readouterr().err == f"error: checkpoint manifest not found: {absent}\n"
    with pytest.raises(SystemExit) as done:
        main(["--manifest", toy["manifest"]])  # a command is required
    assert done.value.code == 2 and "required" in capsys.readouterr().err


def test_the_manifest_option_does_not_outlive_the_command(toy, capsys, monkeypatch):
    monkeypatch.delenv("SKINAPP_MANIFEST", raising=False)
    assert _run(toy, capsys, "list")[0] == EXIT_OK
    assert "sam_vit_b" in ckpt.manifest(), "the repository manifest is back after the command"


def test_verify_all_fails_when_an_early_checkpoint_is_missing_or_tampered(toy, capsys):
    """The exit code sums up every checkpoint, not the last one checked."""
    bert = toy["dir"] / "toy-bert"
    bert.mkdir()
    (bert / "config.json").write_bytes(toy["cfg"])
    (bert / "vocab.txt").write_bytes(toy["vocab"])
    (toy["dir"] / "f.safetensors").write_bytes(b"ours")
    assert _run(toy, capsys, "verify")[0] == EXIT_FAILED, "toy_sam (first) is missing"
    (toy["dir"] / "toy_sam.pth").write_bytes(toy["model"][::-1])
    assert _run(toy, capsys, "verify")[0] == EXIT_FAILED, "toy_sam (first) is tampered"


@pytest.mark.parametrize("argv, expected", [
    (["--help"], ["usage: python -m skinapp.checkpoints [-h] [--manifest MANIFEST] COMMAND ...",
                  "List, download and verify the checkpoints skinapp uses.",
                  "--manifest MANIFEST  manifest JSON to use instead of checkpoints/manifest.json",
                  "list                show every checkpoint: present/missing and verification state",
                  "download            download one checkpoint (resumable, SHA-256 checked)",
                  "verify              recompute SHA-256 of present files and report mismatches"]),
    (["download", "--help"], ["usage: python -m skinapp.checkpoints download [-h] [--dir DIR] [--retries RETRIES]",
                              "--dir DIR          destination directory (default: the checkpoint directory)",
                              "--retries RETRIES  retries per URL after a dropped connection",
                              "--no-progress      hide the progress bar"]),
    (["verify", "--help"], ["usage: python -m skinapp.checkpoints verify [-h] [--skip-missing] [name]",
                            "name            one checkpoint (default: all)",
                            "--skip-missing  do not fail on checkpoints that are absent"]),
])
def test_help_names_each_command_and_option(argv, expected, capsys, monkeypatch):
    """What `--help` tells a user (at a width where argparse does not wrap)."""
    monkeypatch.setenv("COLUMNS", "160")
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse's column alignment aside
    for line in expected:
        assert " ".join(line.split()) in text, f"{line!r} not in: {text}"


def test_verify_checks_a_trained_checkpoint_and_its_vit_against_its_sidecar(toy, capsys):
    """Our fusion classifier has no pin in the manifest: its sidecar's SHA-256 (and the end-to-end ViT's) is checked."""
    from skinapp.fusion import build_fusion, build_global_encoder, global_encoder_meta, save_fusion_checkpoint
    from skinapp.fusion.checkpoint import save_file

    directory = toy["dir"]
    vit = directory / "global_encoder.safetensors"
    save_file({k: v.contiguous() for k, v in build_global_encoder("tiny", seed=4).vit.state_dict().items()}, str(vit))
    weights = save_fusion_checkpoint(build_fusion("cross_attention", 2, "tiny"), directory / "f.safetensors",
                                     {"class_names": ["a", "b"],
                                      "global_encoder": global_encoder_meta("tiny", fine_tuned=vit)})
    side = weights.with_suffix(".json")
    good_side, good_vit = side.read_text(), vit.read_bytes()
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert (code, lines) == (EXIT_OK, [
        f"toy_fusion: {weights}: verified against f.json (sha256 {_sha(weights.read_bytes())})",
        f"toy_fusion: {side}: matches the class names, configuration and ViT bound into f.safetensors",
        f"toy_fusion: {vit}: verified against f.json (sha256 {_sha(good_vit)})"])

    vit.write_bytes(good_vit[:-1] + bytes([good_vit[-1] ^ 1]))
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_FAILED and lines[2] == (f"toy_fusion: {vit}: SHA-256 MISMATCH with f.json (it records "
                                                f"{_sha(good_vit)}) (sha256 {_sha(vit.read_bytes())})")
    vit.unlink()
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_FAILED and lines[2] == f"toy_fusion: {vit}: missing (named by f.json)"
    vit.write_bytes(good_vit)
    assert _run(toy, capsys, "verify", "toy_fusion")[0] == EXIT_OK

    side.write_text(json.dumps({**json.loads(good_side), "class_names": ["b", "a"]}))  # the weights' hash still fits
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_FAILED and lines[1].startswith(f"toy_fusion: {side}: REFUSED by the app: f.json does not "
                                                       "match the checkpoint f.safetensors it describes: class_names")
    state = ckpt.load_tensors(weights)  # the format of an older skinapp: no binding in the header
    save_file(state, str(weights))
    side.write_text(json.dumps({**json.loads(good_side), "sha256": _sha(weights.read_bytes())}))
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_UNVERIFIED and lines[1].startswith(f"toy_fusion: {side}: UNVERIFIED: {weights} was saved by "
                                                           "an older skinapp")

    side.write_text(json.dumps({**json.loads(good_side), "sha256": "0" * 64}))
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_FAILED and lines[0].startswith(f"toy_fusion: {weights}: SHA-256 MISMATCH with f.json (it "
                                                       f"records {'0' * 64})")
    side.write_text(json.dumps({k: v for k, v in json.loads(good_side).items() if k != "sha256"}))
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_UNVERIFIED and lines[0].startswith(f"toy_fusion: {weights}: present, UNVERIFIED (f.json "
                                                           "records no SHA-256)")
    side.unlink()
    code, lines, _ = _run(toy, capsys, "verify", "toy_fusion")
    assert code == EXIT_FAILED and lines == [f"toy_fusion: {side}: missing (the JSON sidecar recording the weights' "
                                             "SHA-256; copy it from the training run)"]
