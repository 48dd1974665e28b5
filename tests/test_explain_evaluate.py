"""The faithfulness-evaluation CLI end to end on synthetic photos with a tiny random CLIP."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from skinapp.explain.evaluate import main
from skinapp.explain.pipeline import METHODS
from skinapp.synthetic import make_skin_photo


def test_evaluate_cli_writes_csv_and_plots(tmp_path):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    for seed in (1, 2):
        photo = make_skin_photo(seed=seed)
        Image.fromarray(photo.pixels).save(images / f"case{seed}.png")
        Image.fromarray(photo.lesion_mask.astype(np.uint8) * 255).save(masks / f"case{seed}.png")
    (images / "notes.txt").write_text("not an image")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# dermoscopic criteria\nirregular streaks\n\nblue-whitish veil\n", encoding="utf-8")
    main(["--images", str(images), "--phrases", str(phrases), "--out", str(out), "--masks", str(masks),
          "--steps", "4", "--substrate", "mean"])
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * len(METHODS)
    assert {r["method"] for r in rows} == set(METHODS)
    for r in rows:
        assert 0.0 <= float(r["energy_in_mask"]) <= 1.0
        assert float(r["pointing_game"]) in (0.0, 1.0)
        assert np.isfinite(float(r["deletion_auc"])) and "untrained" in r["weights"]
    assert (out / "curves.png").stat().st_size > 0 and (out / "summary.csv").is_file()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["case1.png", "case2.png"]


def test_evaluate_cli_rejects_bad_arguments(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(tmp_path / "missing"), "--phrases", str(tmp_path / "empty.txt"), "--out", str(tmp_path)])
    assert exc.value.code == 2 and "missing is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(tmp_path), "--phrases", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "empty.txt holds no phrases" in capsys.readouterr().err
