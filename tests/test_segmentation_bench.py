"""The real-data segmentation benchmark: its metrics, its reader, a CI-sized run, and the extractor's quality floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinapp.bench import segmentation as seg
from skinapp.bench.seg_methods import LesionMethod, central_component, otsu_lstar

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _data(name: str) -> Path:
    folder = DATA / name
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder.resolve()} not found (CI has the real data; a user's clone may not)")
    return folder


def test_iou_and_dice_match_their_definitions():
    truth = np.zeros((40, 50), bool)
    truth[10:30, 10:30] = True                      # 400 px
    shifted = np.zeros_like(truth)
    shifted[10:30, 20:40] = True                    # 400 px, 200 shared
    iou, dice = seg.iou_dice([truth, shifted, np.zeros_like(truth)], truth)
    np.testing.assert_allclose(iou, [1.0, 200 / 600, 0.0])
    np.testing.assert_allclose(dice, [1.0, 2 * 200 / 800, 0.0])
    assert seg.iou_dice([], truth)[0].size == 0


def test_reader_keeps_masked_rows_and_checks_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("image,mask,dx\na.png,a_mask.png,nv\nb.png,,nv\n")
    samples = seg.read_samples(tmp_path)
    assert [s.image.name for s in samples] == ["a.png"] and samples[0].mask == tmp_path / "a_mask.png"
    (tmp_path / "labels.csv").write_text("image,dx\na.png,nv\n")
    with pytest.raises(ValueError, match="mask"):
        seg.read_samples(tmp_path)


def test_scores_rank_and_misses_on_a_planted_photo(tmp_path):
    rgb = np.full((64, 80, 3), (200, 160, 140), np.uint8)
    rgb[20:40, 30:50] = (90, 60, 50)
    truth = np.zeros((64, 80), np.uint8)
    truth[20:40, 30:50] = 255
    Image.fromarray(rgb).save(tmp_path / "p.png")
    Image.fromarray(truth).save(tmp_path / "p_mask.png")
    (tmp_path / "labels.csv").write_text("image,mask\np.png,p_mask.png\n")
    wrong = np.zeros((64, 80), bool)
    wrong[:5, :5] = True
    methods = [LesionMethod("second_right", "test", lambda im: [wrong, truth.astype(bool)]),
               LesionMethod("none", "test", lambda im: []), LesionMethod("otsu", "baseline", otsu_lstar)]
    results = seg.run([tmp_path], methods, side=None)
    by = {r.method: r for r in results}
    assert by["second_right"].top1_iou == 0.0 and by["second_right"].best_iou == 1.0
    assert by["second_right"].best_rank == 2
    assert by["none"].n_lesions == 0 and by["none"].best_rank is None
    assert by["otsu"].top1_iou > 0.9
    summary = {s["method"]: s for s in seg.summarise(results)}
    assert summary["none"]["misses"] == 1 and summary["second_right"]["top1_over_0.5"] == 0
    json_path, md_path = seg.write(results, seg.summarise(results), ["a note"], tmp_path / "out", {"side": 0})
    assert json.loads(json_path.read_text())["summary"][0]["images"] == 1
    assert "| p.png |" in md_path.read_text() and "_a note_" in md_path.read_text()


def test_central_component_ignores_speckle():
    mask = np.zeros((100, 100), bool)
    mask[49:51, 49:51] = True          # 4 px at the very centre: speckle
    mask[20:45, 20:45] = True          # the real blob, off-centre
    out = central_component(mask)
    assert out[30, 30] and not out[50, 50]


def test_cli_ci_sized_run(tmp_path):
    ham = _data("ham10000")
    assert seg.main(["--data", str(ham), "--limit", "2", "--side", "256", "--out", str(tmp_path), "--no-grounded"]) == 0
    report = json.loads((tmp_path / "segmentation.json").read_text())
    methods = {s["method"] for s in report["summary"]}
    assert {"colour_fallback", "otsu_lstar", "chan_vese"} <= methods
    for row in report["summary"]:
        assert row["images"] == 2 and 0.0 <= row["top1_iou"] <= row["best_iou"] <= 1.0


@pytest.mark.slow
def test_weight_free_extractor_finds_real_lesions():
    """Quality floor on the real photos (every masked photo of PAD-UFES-20 and HAM10000, 256 px): every photo
    gets a lesion concept, the first-ranked one beats the Otsu-on-L* baseline on average, and the floors sit
    a few hundredths under the measured level (PAD 0.51, HAM 0.77 at 256 px) so that losing a step fails:
    without the outline choice (hull / opening) PAD drops to 0.44, without the hysteresis rim growth HAM
    drops to 0.60; the old extractor scored 0.15 on PAD."""
    pad, ham = _data("pad_ufes_20"), _data("ham10000")
    methods, _ = seg.default_methods(grounded=False)
    methods = [m for m in methods if m.name in ("colour_fallback", "otsu_lstar")]
    summary = {(s["dataset"], s["method"]): s for s in seg.summarise(seg.run([pad, ham], methods, side=256))}
    for dataset, floor in (("pad_ufes_20", 0.48), ("ham10000", 0.72)):
        ours, otsu = summary[(dataset, "colour_fallback")], summary[(dataset, "otsu_lstar")]
        print(f"{dataset}: ours {ours['top1_iou']:.3f} vs Otsu {otsu['top1_iou']:.3f}, misses {ours['misses']}")
        assert ours["misses"] == 0, dataset
        assert ours["top1_iou"] > floor and ours["top1_iou"] > otsu["top1_iou"] + 0.05, dataset


def test_command_errors_are_one_line_and_stop_before_timing(tmp_path, caplog, capsys):
    """Found by a new user: a missing folder, a photo listed but absent and an --out that is a file each ended
    in a traceback; a side too small for any extractor ran into the image loader's error."""
    missing = tmp_path / "nowhere"
    assert seg.main(["--data", str(missing), "--out", str(tmp_path / "o"), "--no-grounded"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"error: [Errno 2] No such file or directory: '{missing / 'labels.csv'}'"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("image,mask\nphoto.png,photo_mask.png\n")
    caplog.clear()
    assert seg.main(["--data", str(data), "--out", str(tmp_path / "o"), "--no-grounded", "--side", "128"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "photo.png" in errors[0] and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as done:
        seg.main(["--data", str(data), "--side", "8"])
    assert done.value.code == 2 and "0 (as stored) or at least 64 pixels; got 8" in capsys.readouterr().err
