"""``python -m skinapp.analyze``'s run.json: a resumed run refuses another setup (found by a new user: a second run
into the same folder with other prompts mixed two setups in predictions.csv), ``--restart`` starts over."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from skinapp import analyze
from skinapp.batch_setup import (
    SetupMismatchError,
    check_setup,
    describe_setup,
    discard_outputs,
    weights_identity,
    write_setup,
)
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.provenance import WeightsInfo
from skinapp.synthetic import make_skin_photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(2):
        Image.fromarray(make_skin_photo(seed=seed, size=(96, 128)).pixels).save(folder / f"p{seed}.png")
    return folder


def _run(photos: Path, out: Path, *extra: str) -> int:
    return analyze.main([str(photos), "--out", str(out), "--profile", "tiny", "--device", "cpu", "--no-overlays",
                         *extra])


def _predictions(out: Path) -> list[dict]:
    with (out / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_run_json_records_the_setup_and_an_equal_setup_resumes(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos, out) == 0
    setup = json.loads((out / "run.json").read_text())
    assert setup["class_names"] and setup["models"] and set(setup["models"].values()) == {"untrained"}
    assert setup["prompts"] == list(DEFAULT_PROMPTS) and setup["phrases"] == [] and setup["clip"] is None
    assert setup["profile"] == "tiny"
    first = _predictions(out)
    progress = (out / "progress.rank0.jsonl").read_text()
    assert _run(photos, out, "--prompts", " . ".join(DEFAULT_PROMPTS)) == 0  # the same prompts spelled out
    assert (out / "progress.rank0.jsonl").read_text() == progress, "nothing analysed again"
    assert _predictions(out) == first


def test_other_prompts_are_refused_in_one_line_and_restart_starts_over(photos, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert _run(photos, out, "--prompts", "lesion . arm") == 0
    before = _predictions(out)
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert _run(photos, out, "--prompts", "lesion . leg") == 2
    assert capsys.readouterr().err == (
        f"ERROR: {out} holds results of another setup (differs: concept prompts); --restart discards the results "
        f"in {out} and starts over; another --out keeps both.\n")
    assert _predictions(out) == before
    with caplog.at_level(logging.INFO, logger="skinapp.analyze"):
        assert _run(photos, out, "--prompts", "lesion . leg", "--restart") == 0
    assert "rank 0: 2 analysed, 0 failed, 0 already done" in caplog.text
    assert json.loads((out / "run.json").read_text())["prompts"] == ["lesion", "leg"]
    records = [json.loads(line) for line in (out / "progress.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 2, "the old records were discarded, each photo analysed once with the new prompts"
    assert (out / "notes.txt").read_text() == "mine", "--restart removes only what the batch wrote"


def test_progress_without_run_json_is_refused(photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "progress.rank0.jsonl").write_text(json.dumps({"photo": str(photos / "p0.png"), "status": "error",
                                                          "reason": "x"}) + "\n")
    assert _run(photos, out) == 2
    assert capsys.readouterr().err == (
        f"ERROR: {out} holds results but no run.json, so their setup is unknown; --restart discards the results in "
        f"{out} and starts over; another --out keeps both.\n")
    assert not (out / "run.json").exists()


def test_each_compared_field_is_named_when_it_differs(tmp_path):
    setup = {"class_names": ["a", "b"], "models": {"fusion": "sha256:00", "vit_tiny": "untrained"},
             "clip": {"choice": "CLIP", "weights": "sha256:11"}, "prompts": ["lesion"], "phrases": ["veil"],
             "profile": "full", "device": "cpu"}
    write_setup(tmp_path, setup)
    check_setup(tmp_path, {**setup, "profile": "auto", "device": "cuda:0"})  # not compared: the weights are
    changes = {"class_names": ["b", "a"], "models": {"fusion": "sha256:01", "vit_tiny": "untrained"},
               "clip": {"choice": "CLIP", "weights": "sha256:12"}, "prompts": ["lesion", "arm"], "phrases": []}
    words = {"class_names": "class names", "models": "analysis model weights", "clip": "CLIP weights",
             "prompts": "concept prompts", "phrases": "Explain phrases"}
    for key, value in changes.items():
        with pytest.raises(SetupMismatchError, match=rf"\(differs: {words[key]}\); --restart"):
            check_setup(tmp_path, {**setup, key: value})
    with pytest.raises(SetupMismatchError, match=r"differs: analysis model weights, concept prompts\)"):
        check_setup(tmp_path, {**setup, "models": changes["models"], "prompts": changes["prompts"]})
    (tmp_path / "run.json").write_text("{cut")
    with pytest.raises(SetupMismatchError, match="run.json cannot be read"):
        check_setup(tmp_path, setup)


def test_weights_are_identified_by_the_sha256_of_their_file(tmp_path):
    weights = tmp_path / "fusion.safetensors"
    weights.write_bytes(b"weights v1")
    digest = hashlib.sha256(b"weights v1").hexdigest()
    assert weights_identity(WeightsInfo("fusion", True, str(weights))) == f"sha256:{digest}"
    assert weights_identity(WeightsInfo("gdino", True, f"{weights} (3 unused checkpoint keys)")) == f"sha256:{digest}"
    assert weights_identity(WeightsInfo("fusion", False, str(weights))) == "untrained"
    weights.write_bytes(b"weights v2, other size")
    assert weights_identity(WeightsInfo("fusion", True, str(weights))) == \
        f"sha256:{hashlib.sha256(b'weights v2, other size').hexdigest()}"
    folder = tmp_path / "dermlip"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(b"clip")
    before = weights_identity(WeightsInfo("clip", True, f"{folder} (open_clip hf-hub format)"))
    assert weights_identity(WeightsInfo("clip", True, str(folder))) == before, "the hash stamps left are not weights"
    (folder / "open_clip_model.safetensors").write_bytes(b"clip, fine-tuned")
    assert weights_identity(WeightsInfo("clip", True, f"{folder} (open_clip hf-hub format)")) != before
    assert weights_identity(WeightsInfo("clip", True, "hub:somewhere")) == "source:hub:somewhere"


def test_restart_removes_only_the_batch_files(tmp_path):
    for name in ("progress.rank0.jsonl", "progress.rank1.jsonl", "predictions.csv", "concepts.json", "errors.csv",
                 "phrases.csv", "run.json", "overlays/a_1234abcd.png", "heatmaps/b_1234abcd.png", "mine.csv",
                 "overlays/readme.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert discard_outputs(tmp_path) == 9
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "mine.csv", "overlays", "overlays/readme.txt"]


def test_two_ranks_refuse_another_setup_together_and_restart_together(photos, tmp_path):
    """torchrun: every rank compares run.json before rank 0 writes it; a refusal ends both ranks (no rank left
    waiting at the barrier), and --restart clears the folder before either rank appends."""
    out = tmp_path / "out"

    def torchrun(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                   "-m", "skinapp.analyze", str(photos), "--out", str(out), "--profile", "tiny", "--no-overlays",
                   *extra]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})

    assert torchrun("--prompts", "lesion . arm").returncode == 0
    refused = torchrun("--prompts", "lesion . leg")
    assert refused.returncode != 0
    assert refused.stderr.count("ERROR: ") == 2 and "(differs: concept prompts)" in refused.stderr
    again = torchrun("--prompts", "lesion . leg", "--restart")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 already done" in again.stderr and "1 already done" not in again.stderr
    photos_done = [json.loads(line)["photo"] for r in (0, 1)
                   for line in (out / f"progress.rank{r}.jsonl").read_text().splitlines()]
    assert sorted(photos_done) == sorted(str(p) for p in photos.iterdir()), "each photo once, after the restart"
    assert json.loads((out / "run.json").read_text())["prompts"] == ["lesion", "leg"]


def _analyzer(tmp_path: Path) -> SimpleNamespace:
    """What describe_setup reads of an Analyzer: two CLIP choices (the batch explains with the first), trained
    DermLIP weights in a file, an untrained analysis model."""
    dermlip = tmp_path / "dermlip.safetensors"
    dermlip.write_bytes(b"dermlip weights")
    clips = {"DermLIP": SimpleNamespace(weights=WeightsInfo("dermlip", True, str(dermlip))),
             "CLIP": SimpleNamespace(weights=WeightsInfo("clip", False, "random init (tiny profile)"))}
    return SimpleNamespace(clip_choices=["DermLIP", "CLIP"], clips=clips, class_names=("mel", "nev"),
                           analysis_weights=[WeightsInfo("fusion", False, "random init")],
                           default_prompts=("lesion", "arm"), device="cpu")


def test_run_json_names_the_clip_model_the_phrases_use_with_its_weights(tmp_path):
    """With Explain phrases the batch scores them with the analyzer's first CLIP choice; run.json names it and
    the SHA-256 of its weights file, so a resume with other CLIP weights is refused."""
    analyzer = _analyzer(tmp_path)
    setup = describe_setup(analyzer, "auto", None, ["blue veil", "dots"])
    assert setup == {"class_names": ["mel", "nev"], "models": {"fusion": "untrained"},
                     "clip": {"choice": "DermLIP",
                              "weights": "sha256:" + hashlib.sha256(b"dermlip weights").hexdigest()},
                     "prompts": ["lesion", "arm"], "phrases": ["blue veil", "dots"], "profile": "auto",
                     "device": "cpu"}
    assert describe_setup(analyzer, "auto", "Leg. arm", None)["clip"] is None, "no phrases: no CLIP model used"
    assert describe_setup(analyzer, "auto", "Leg. arm", None)["prompts"] == ["leg", "arm"]
    assert describe_setup(analyzer, "auto", "", None)["prompts"] == ["lesion", "arm"], "blank --prompts: defaults"


def test_an_empty_progress_file_is_no_result_but_one_record_is(tmp_path):
    setup = {"class_names": ["a"], "prompts": ["lesion"]}
    (tmp_path / "notes.txt").write_text("mine")
    check_setup(tmp_path, setup)  # an existing folder without batch results is a fine --out
    (tmp_path / "progress.rank1.jsonl").write_text("")  # a rank that stopped before its first photo
    check_setup(tmp_path, setup)  # nothing recorded: nothing to mix, no refusal
    (tmp_path / "progress.rank0.jsonl").write_text("\n")
    with pytest.raises(SetupMismatchError, match="holds results but no run.json"):
        check_setup(tmp_path, setup)


def test_run_json_is_written_into_missing_folders_one_field_per_line(tmp_path):
    out = tmp_path / "runs" / "today"
    setup = {"class_names": ["a", "b"], "prompts": ["lesion"], "clip": None}
    write_setup(out, setup)
    text = (out / "run.json").read_text()
    assert json.loads(text) == setup
    assert '\n "class_names": [' in text and '\n "clip": null' in text, "readable and diffable by hand"
    assert [p.name for p in out.iterdir()] == ["run.json"], "no temporary file left"


def test_restart_of_a_folder_not_yet_there_removes_nothing(tmp_path, caplog):
    assert discard_outputs(tmp_path / "new") == 0
    assert not (tmp_path / "new").exists()
    (tmp_path / "predictions.csv").write_text("x")
    (tmp_path / "progress.rank0.jsonl").write_text("{}\n")
    with caplog.at_level(logging.INFO, logger="skinapp.batch_setup"):
        assert discard_outputs(tmp_path) == 2
    assert [r.getMessage() for r in caplog.records] == ["--restart: removed 2 files of the earlier run"]


def test_a_weights_folder_is_identified_by_its_weight_files_only(tmp_path):
    """Hidden files (a hub's .lock, .DS_Store) and a partial download (*.tmp) are not weights: they leave the
    identity as it was; a new weights file changes it."""
    folder = tmp_path / "dermlip"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(b"clip")
    info = WeightsInfo("clip", True, str(folder))
    before = weights_identity(info)
    (folder / ".DS_Store").write_bytes(b"finder")
    (folder / "open_clip_config.json.tmp").write_bytes(b"half a download")
    assert weights_identity(info) == before
    (folder / "open_clip_config.json").write_bytes(b"{}")
    assert weights_identity(info) != before
