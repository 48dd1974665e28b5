"""COCO export carries edited masks, reviewer, version and provenance; a COCO file (ours, or CVAT-style with
polygons / uncompressed RLE) imports as a new version; mismatches are refused with nothing saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from skinapp.review import ConceptReview, ReviewStore, export_coco
from skinapp.review.coco_import import import_coco

KEY = "de" * 32
H, W = 30, 40


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "data")
    masks = np.zeros((3, H, W), bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 18:28, 22:38] = True
    masks[2, 0:4, 0:4] = True
    concepts = [ConceptReview(0, "lesion", 0.9, (5, 5, 20, 15), "accept", provenance="refined"),
                ConceptReview(1, "nodule", 1.0, (22, 18, 38, 28), "relabel", label="scar", provenance="added"),
                ConceptReview(2, "arm", 0.2, (0, 0, 4, 4), "reject")]
    store.save(KEY, np.full((H, W, 3), 80, np.uint8), masks, concepts, reviewer="dr e")
    return store


def test_round_trip_keeps_masks_labels_and_marks_the_import(store, tmp_path):
    path = export_coco(store, tmp_path / "out")
    coco = json.loads(path.read_text())
    image = coco["images"][0]
    assert (image["reviewer"], image["revision"], image["version"]) == ("dr e", 1, store.load(KEY).version)
    attrs = [a["attributes"] for a in coco["annotations"]]
    assert [(a["provenance"], a["edited"], a["reviewer"]) for a in attrs] == [("refined", True, "dr e"),
                                                                              ("added", True, "dr e")]
    [version] = import_coco(store, path, reviewer="cvat")
    assert version.revision == 2 and version.reviewer == "cvat"
    assert [(c.phrase, c.decision, c.provenance) for c in version.concepts] == [("lesion", "accept", "imported"),
                                                                                ("scar", "accept", "imported")]
    first = store.load_version(KEY, 1)
    for new, old in zip(version.concepts, first.concepts[:2]):
        assert np.array_equal(store.load_mask(KEY, new.index, version.version),
                              store.load_mask(KEY, old.index, first.version))
    assert version.concepts[1].box == (22.0, 18.0, 38.0, 28.0)


def _cvat_file(tmp_path, width=W, height=H, file_name=f"{KEY}.jpg", segmentation=None):
    seg = segmentation if segmentation is not None else [[10, 10, 30, 10, 30, 20, 10, 20]]
    coco = {"images": [{"id": 7, "file_name": file_name, "width": width, "height": height}],
            "categories": [{"id": 3, "name": "lesion"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": seg, "iscrowd": 0}]}
    path = tmp_path / "cvat.json"
    path.write_text(json.dumps(coco))
    return path


def test_cvat_polygons_and_uncompressed_rle_import(store, tmp_path):
    [v] = import_coco(store, _cvat_file(tmp_path))
    mask = store.load_mask(KEY, 0, v.version)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[10, 10, 30, 10, 30, 20, 10, 20]], H, W)))
    assert np.array_equal(mask, expected.astype(bool)) and 180 <= mask.sum() <= 231
    truth = np.zeros((H, W), bool)
    truth[2:9, 3:17] = True
    raw = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    counts, run, pos = [], 0, False  # uncompressed RLE (column-major runs starting with zeros), as CVAT writes
    for value in truth.flatten(order="F"):
        if value != pos:
            counts.append(run)
            run, pos = 0, value
        run += 1
    counts.append(run)
    [v2] = import_coco(store, _cvat_file(tmp_path, segmentation={"size": [H, W], "counts": counts}))
    assert np.array_equal(store.load_mask(KEY, 0, v2.version), truth)
    assert mask_utils.area(raw) == truth.sum() and v2.revision == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"file_name": "someone_else.jpg"}, "matches no saved photo"),
    ({"width": 80, "height": 60}, "is 80x60 but photo"),
    ({"segmentation": []}, "no segmentation"),
    ({"segmentation": {"size": [10, 10], "counts": "abc"}}, "RLE is"),
])
def test_bad_files_are_refused_and_nothing_is_saved(store, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        import_coco(store, _cvat_file(tmp_path, **kwargs))
    assert [v.revision for v in store.versions(KEY)] == [1]
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="Not a COCO"):
        import_coco(store, tmp_path / "junk.json")
