"""The COCO import's checks at their edges: polygon points up to one image size outside, RLE runs of 0, the
highest concept number, a comment at the limit, odd sizes and parts, an unreadable file, a zip with a reviewer.
Each refusal is compared whole and saves nothing; each acceptance is read back from the saved version."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.coco_import import import_coco

KEY = "de" * 32
H, W = 30, 40  # a landscape photo: width and height cannot stand in for each other
SQUARE = [[10, 10, 30, 10, 30, 20, 10, 20]]


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "data")
    store.save(KEY, np.full((H, W, 3), 80, np.uint8), np.ones((1, H, W), bool),
               [ConceptReview(0, "lesion", 0.9, (5, 5, 20, 15), "accept")], reviewer="dr e")
    return store


def _file(tmp_path, annotations=None, image=None, **parts):
    """Image 7 (KEY, W x H), category 3 "lesion", the given annotations (default: one square polygon)."""
    coco = {"images": [image or {"id": 7, "file_name": f"{KEY}.png", "width": W, "height": H}],
            "categories": [{"id": 3, "name": "lesion"}],
            "annotations": annotations if annotations is not None else [_ann()], **parts}
    path = tmp_path / "file.json"
    path.write_text(json.dumps(coco))
    return path


def _ann(id=1, **fields):
    return {"id": id, "image_id": 7, "category_id": 3, "segmentation": SQUARE, **fields}


def _refused(store, path, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        import_coco(store, path)
    assert [v.revision for v in store.versions(KEY)] == [1]


@pytest.mark.parametrize("value", [
    {"segmentation": [[int("1" + "0" * 400), 10, 30, 10, 30, 20]]},
    {"segmentation": {"size": [H, W], "counts": [int("1" + "0" * 400)]}},
    {"bbox": [int("1" + "0" * 400), 1, 2, 3]},
    {"score": int("1" + "0" * 400)},
])
def test_a_number_too_large_for_a_float_is_refused_in_words(store, tmp_path, value):
    """Found by the mutation round: JSON integers of 400 digits made float() raise OverflowError, which escaped
    as a traceback (in the app: an unexplained failure)."""
    _refused(store, _file(tmp_path, [_ann(**value)]), "Annotation 1 of image 7: int too large to convert to float.")
