"""``python -m skinapp.analyze``: the app's Analyzer over many photos; resumable; COCO + CSV; torchrun shards."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from skinapp.batch import analyse_photos, collect_photos, read_records, shard, write_summaries
from skinapp.pipeline import Analyzer
from skinapp.synthetic import make_skin_photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for seed, colour in enumerate(["dark_brown", "red", "blue_grey"]):
        Image.fromarray(make_skin_photo(seed=seed, lesion_colour=colour).pixels).save(folder / f"p{seed}.png")
    (folder / "sub").mkdir()
    Image.fromarray(make_skin_photo(seed=7).pixels).save(folder / "sub" / "p7.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not a photo suffix")
    return folder


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_collect_photos_from_folders_globs_and_csv(photos, tmp_path):
    from_folder = collect_photos([photos])
    assert [p.name for p in from_folder] == ["broken.jpg", "p0.png", "p1.png", "p2.png", "p7.jpg"]
    assert collect_photos([str(photos / "p*.png"), photos / "p0.png"]) == from_folder[1:4]
    listing = tmp_path / "list.csv"
    listing.write_text("image,label\n" + os.path.relpath(photos / "p1.png", tmp_path) + ",x\n")
    assert collect_photos([listing]) == [photos / "p1.png"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_photos([tmp_path / "absent"])
    assert shard(from_folder, 1, 2) == from_folder[1::2]
    link = tmp_path / "linked.png"
    link.symlink_to(photos / "p0.png")
    assert collect_photos([link]) == [link], "a symlinked photo is listed by the path given, not its target"


def test_a_folder_without_photos_is_a_usage_error_before_models_load(tmp_path, capsys):
    """Found by a new user: an empty folder ran, exited 0 and said "0 photos analysed, 0 errors"."""
    from skinapp import analyze

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    assert analyze.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--profile", "tiny"]) == 2
    assert capsys.readouterr().err == (f"ERROR: no photos found in {tmp_path / 'empty'} (photo files end in .jpg, "
                                       ".jpeg, .png, .bmp, .tif, .tiff, .webp, .gif).\n")
    assert not (tmp_path / "out").exists()


def test_outputs_resume_and_errors(analyzer, photos, tmp_path):
    out = tmp_path / "out"
    paths = collect_photos([photos])
    assert analyse_photos(analyzer, paths, out) == (4, 1, 0)
    totals = write_summaries(out)
    assert totals == {"analysed": 4, "errors": 1}
    rows = _rows(out / "predictions.csv")
    assert [Path(r["photo"]).name for r in rows] == ["p0.png", "p1.png", "p2.png", "p7.jpg"]
    direct = analyzer.analyze(photos / "p1.png")
    row = rows[1]
    assert row["image_key"] == direct.image_key and row["predicted_class"] == direct.prediction.predicted
    for name, p in direct.class_probabilities().items():
        assert float(row[f"p_{name}"]) == pytest.approx(p, abs=1e-6)
    assert row["banner"] == "True" and row["trained"] == "False"  # demo mode says so in every row
    assert _rows(out / "errors.csv") == [{"photo": str(photos / "broken.jpg"),
                                         "reason": "This file is not an image we can read (try JPEG or PNG)."}]
    coco = COCO(str(out / "concepts.json"))
    image_id = next(i["id"] for i in coco.dataset["images"] if i["image_key"] == direct.image_key)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    assert len(anns) == len(direct.concepts)
    for ann, mask, phrase in zip(anns, direct.concepts.masks, direct.concepts.phrases):
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
        assert coco.loadCats(ann["category_id"])[0]["name"] == phrase
    assert len(list((out / "overlays").glob("*.png"))) == 4
    overlay = np.asarray(Image.open(next((out / "overlays").glob(f"*_{direct.image_key[:8]}.png"))))
    np.testing.assert_array_equal(overlay, direct.decisive_image)  # one banner strip, not a second one on top
    # resume: nothing is redone; a record cut by a kill is redone
    assert analyse_photos(analyzer, paths, out) == (0, 0, 5)
    progress = out / "progress.rank0.jsonl"
    lines = progress.read_text().splitlines()
    progress.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2] + "\n")
    assert analyse_photos(analyzer, paths, out) == (1, 0, 4)
    assert len(read_records(out)) == 5


def test_a_broken_link_among_the_photos_is_an_error_row_not_skipped(analyzer, tmp_path, caplog):
    """Known defect: a dangling symlink in the input folder was skipped without a word (not analysed, not in
    errors.csv). Now it is listed, and errors.csv says it is a broken link; the log names no file."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_skin_photo(seed=3).pixels).save(folder / "ok.png")
    gone = folder / "gone.jpg"
    gone.symlink_to(tmp_path / "moved-away.jpg")
    assert collect_photos([folder]) == [gone, folder / "ok.png"]
    assert collect_photos([str(folder / "*.jpg")]) == collect_photos([gone]) == [gone]
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        assert analyse_photos(analyzer, collect_photos([folder]), out) == (1, 1, 0)
    assert write_summaries(out) == {"analysed": 1, "errors": 1}
    assert _rows(out / "errors.csv") == [{"photo": str(gone), "reason": "The photo file is a broken link: the file "
                                          "it points to is missing (moved or deleted?)."}]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "photo 1 could not be analysed: InvalidImageError" in logged
    assert "gone" not in logged and "moved-away" not in logged and str(tmp_path) not in logged


def test_phrases_add_heatmaps_and_similarities(analyzer, photos, tmp_path):
    out = tmp_path / "out"
    analyse_photos(analyzer, [photos / "p0.png"], out, phrases=["irregular streaks", "blue-whitish veil"],
                   overlays=False)
    write_summaries(out)
    rows = _rows(out / "phrases.csv")
    direct = analyzer.explain(photos / "p0.png", ["irregular streaks", "blue-whitish veil"])
    assert [r["phrase"] for r in rows] == direct.phrases
    np.testing.assert_allclose([float(r["clip_similarity"]) for r in rows], direct.similarities, rtol=1e-5)
    sheet = np.asarray(Image.open(next((out / "heatmaps").glob("*.png"))))
    th, tw = direct.overlays[0][0].shape[:2]
    assert sheet.shape == (2 * th, 4 * tw, 3) and not (out / "overlays").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_share_the_photos_and_rank0_merges(photos, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "skinapp.analyze", str(photos), "--out", str(out), "--profile", "tiny", "--no-overlays"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [[json.loads(line)["photo"] for line in (out / f"progress.rank{r}.jsonl").read_text().splitlines()]
                for r in (0, 1)]
    everything = [str(p) for p in collect_photos([photos])]
    assert sorted(per_rank[0]) == everything[0::2] and sorted(per_rank[1]) == everything[1::2]
    assert len(_rows(out / "predictions.csv")) == 4 and len(_rows(out / "errors.csv")) == 1


def test_batched_encoders_equal_one_by_one(analyzer, photos, tmp_path):
    """--batch-size: SAM embeddings, ViT tokens and CLIP passes in batches give the one-by-one results."""
    import dataclasses

    import torch

    from skinapp.batch_encode import default_batch_size, prefill
    from skinapp.concepts.detector import build_detector
    from skinapp.concepts.extractor import GroundedSamExtractor
    from skinapp.concepts.segmenter import build_segmenter

    torch.manual_seed(0)
    grounded = GroundedSamExtractor(build_detector("tiny", bf16_scope="off"),
                                    build_segmenter("tiny", encoder_bf16=False), cache_size=8)
    Image.fromarray(make_skin_photo(seed=9, size=(300, 420)).pixels).save(tmp_path / "small.png")
    paths = [photos / "p1.png", tmp_path / "small.png"]  # two sizes: each padded differently in SAM's batch
    assert default_batch_size("cpu") == 1 and default_batch_size("cuda") > 1

    def run(batched: bool):
        grounded.clear()
        service = Analyzer(dataclasses.replace(analyzer.models, extractor=grounded), cache_size=8)
        choice = service.clip_choices[0]
        if batched:
            n_embed = grounded.segmenter.n_embed
            assert prefill(service, [*paths, photos / "broken.jpg"], clip_choice=choice) == 2
            assert grounded.segmenter.n_embed == n_embed + 2
        results = [service.analyze(p, prompts="lesion . arm", box_threshold=0.0, text_threshold=0.0) for p in paths]
        explained = [service.explain(p, ["lesion"], clip_choice=choice) for p in paths]
        return results, explained

    (one, one_x), (many, many_x) = run(False), run(True)
    for a, b, ax, bx in zip(one, many, one_x, many_x):
        assert a.concepts.phrases == b.concepts.phrases and len(a.concepts) > 0
        ious = [(m & n).sum() / max((m | n).sum(), 1) for m, n in zip(a.concepts.masks, b.concepts.masks)]
        assert min(ious) >= 0.99
        assert np.abs(a.concepts.features.numpy() - b.concepts.features.numpy()).max() < 1e-4
        assert np.abs(a.prediction.probs - b.prediction.probs).max() < 1e-4
        assert np.abs(ax.similarities - bx.similarities).max() < 1e-4
        assert max(np.abs(ax.maps[m] - bx.maps[m]).max() for m in ax.maps) < 1e-3


def test_missing_checkpoints_for_the_full_profile_are_one_log_line(photos, tmp_path, monkeypatch, caplog):
    """`python -m skinapp.analyze --profile full` without the official checkpoints: exit status 2 and one error
    line saying which file is missing, no traceback (as `python app.py`)."""
    import logging

    from skinapp import analyze

    for var in [v for v in os.environ if v.startswith("SKINAPP_") and v != "SKINAPP_MANIFEST"]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    with caplog.at_level(logging.ERROR, logger="skinapp.analyze"):
        status = analyze.main([str(photos), "--out", str(tmp_path / "out"), "--profile", "full"])
    assert status == 2
    [refusal] = [r for r in caplog.records if r.name == "skinapp.analyze"]
    assert refusal.getMessage().startswith("not starting: Checkpoint '") and "is missing" in refusal.getMessage()
    assert refusal.exc_info is None and not (tmp_path / "out").exists()


def test_batch_reads_the_architecture_configs_like_the_app(photos, tmp_path, caplog):
    """`SKINAPP_MODEL_CONFIGS` applies to the batch command as to `python app.py`: an unreadable file stops it with
    one line (exit 2) before any photo is analysed."""
    import logging

    from skinapp import analyze

    absent = tmp_path / "absent.json"
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.ERROR, logger="skinapp.analyze"):
        mp.setenv("SKINAPP_MODEL_CONFIGS", str(absent))
        status = analyze.main([str(photos), "--out", str(tmp_path / "out"), "--profile", "tiny"])
    assert status == 2
    [refusal] = [r for r in caplog.records if r.name == "skinapp.analyze"]
    assert refusal.getMessage().startswith(f"not starting: SKINAPP_MODEL_CONFIGS={absent}: ")
    assert refusal.exc_info is None and not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_one_usage_error(photos, tmp_path, capsys):
    """Found by a new user: ``--out`` naming an existing file ended in FileExistsError's traceback."""
    from skinapp import analyze

    out = tmp_path / "results.csv"
    out.write_text("kept")
    assert analyze.main([str(photos), "--out", str(out), "--profile", "tiny"]) == 2
    assert capsys.readouterr().err == f"ERROR: --out {out} is a file; the batch writes a folder there.\n"
    assert out.read_text() == "kept"


@pytest.mark.parametrize(("value", "says"), [("0", "must be at least 1; got 0"), ("two", "not a whole number: 'two'")])
def test_a_batch_size_below_one_is_a_usage_error_not_the_default(value, says, capsys):
    """Found by a new user: ``--batch-size 0`` silently ran with the default."""
    from skinapp import analyze

    with pytest.raises(SystemExit) as done:
        analyze.parse_args(["p.jpg", "--out", "o", "--batch-size", value])
    assert done.value.code == 2 and says in capsys.readouterr().err
