"""skinapp.review: the SQLite review store (WAL, one transaction per save, kill -9 safe) and COCO/PNG export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from skinapp.review import ConceptReview, ReviewStore, export_coco, export_zip, rle_decode, rle_encode

KEY = "ab" * 32


def _photo_and_masks(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((3, h, w), bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 25:35, 40:55] = True
    masks[2, :, :5] = True
    return pixels, masks


def _verdicts() -> list[ConceptReview]:
    return [ConceptReview(0, "lesion", 0.9, (10, 5, 30, 20), "accept", comment="clear border"),
            ConceptReview(1, "arm", 0.6, (40, 25, 55, 35), "relabel", label="hand"),
            ConceptReview(2, "leg", 0.3, (0, 0, 5, 40), "reject")]


def test_save_load_and_amend(tmp_path):
    store = ReviewStore(tmp_path / "data")
    assert store.list_reviews() == [] and not store.photo_path(KEY).exists()
    pixels, masks = _photo_and_masks()
    review = store.save(KEY, pixels, masks, _verdicts(), reviewer="dr a", note="first", prompts=["lesion", "arm"])
    assert review.revision == 1 and review.reviewer == "dr a" and review.prompts == ["lesion", "arm"]
    assert [c.final_label for c in review.concepts] == ["lesion", "hand", ""]
    assert np.array_equal(store.load_photo(KEY), pixels)
    for i in range(3):
        assert np.array_equal(store.load_mask(KEY, i), masks[i])
    # amend a reopened review: verdicts change, revision increments, masks stay
    amended = store.amend(KEY, [ConceptReview(2, "leg", 0.3, (0, 0, 5, 40), "relabel", label="background")],
                          reviewer="dr b", note="second look")
    assert amended.revision == 2 and amended.reviewer == "dr b" and amended.created_at == review.created_at
    assert [c.decision for c in amended.concepts] == ["accept", "relabel", "relabel"]
    # a fresh store on the same directory sees everything
    reopened = ReviewStore(tmp_path / "data").load(KEY)
    assert reopened is not None and reopened.revision == 2 and reopened.concepts[2].label == "background"


def test_wal_mode(tmp_path):
    store = ReviewStore(tmp_path)
    assert store._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("verdict, match", [
    (ConceptReview(0, "lesion", 0.9, (0, 0, 1, 1), "maybe"), "decision must be one of"),
    (ConceptReview(0, "lesion", 0.9, (0, 0, 1, 1), "relabel"), "needs a new label"),
    (ConceptReview(7, "lesion", 0.9, (0, 0, 1, 1), "accept"), "indices"),
])
def test_invalid_verdicts_store_nothing(tmp_path, verdict, match):
    store = ReviewStore(tmp_path)
    pixels, masks = _photo_and_masks()
    with pytest.raises(ValueError, match=match):
        store.save(KEY, pixels, masks, [verdict])
    assert store.load(KEY) is None and not store.photo_path(KEY).exists()


def test_amend_needs_a_saved_review(tmp_path):
    with pytest.raises(ValueError, match="no saved review"):
        ReviewStore(tmp_path).amend(KEY, _verdicts())


def test_export_coco_rle_and_png(tmp_path):
    store = ReviewStore(tmp_path / "data")
    pixels, masks = _photo_and_masks()
    store.save(KEY, pixels, masks, _verdicts())
    path = export_coco(store, tmp_path / "out")
    coco = json.loads(path.read_text())
    assert [c["name"] for c in coco["categories"]] == ["lesion", "hand"]  # the rejected concept is left out
    assert len(coco["images"]) == 1 and coco["images"][0]["width"] == 60
    anns = coco["annotations"]
    assert [a["attributes"]["concept_index"] for a in anns] == [0, 1]
    for ann in anns:
        i = ann["attributes"]["concept_index"]
        decoded = rle_decode(ann["segmentation"])
        assert np.array_equal(decoded, masks[i])
        assert ann["area"] == masks[i].sum()
        png = np.asarray(Image.open(tmp_path / "out" / ann["mask_file"])) > 127
        assert np.array_equal(png, masks[i])
    # the RLE is what pycocotools itself reads
    rle = dict(anns[0]["segmentation"], counts=anns[0]["segmentation"]["counts"].encode())
    assert mask_utils.area(rle) == masks[0].sum()
    archive = export_zip(store, tmp_path / "exports")
    assert "annotations.json" in zipfile.ZipFile(archive).namelist()


def test_rle_round_trip():
    mask = np.random.default_rng(1).random((17, 23)) > 0.5
    assert np.array_equal(rle_decode(rle_encode(mask)), mask)


def test_saved_review_survives_kill_9(tmp_path):
    """A child process saves a review, then SIGKILLs itself; the review is intact afterwards."""
    data = tmp_path / "data"
    child = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from skinapp.review import ConceptReview, ReviewStore
        store = ReviewStore({str(data)!r})
        pixels = np.full((20, 30, 3), 100, np.uint8)
        masks = np.zeros((1, 20, 30), bool); masks[0, 2:8, 3:9] = True
        store.save({KEY!r}, pixels, masks, [ConceptReview(0, "lesion", 0.8, (3, 2, 9, 8), "accept")])
        print("saved", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and "saved" in proc.stdout, proc.stderr
    review = ReviewStore(data).load(KEY)
    assert review is not None and review.concepts[0].decision == "accept"
    assert ReviewStore(data).load_mask(KEY, 0).sum() == 36
