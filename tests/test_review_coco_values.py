"""Every value of a COCO file the import reads is checked with our own whole message naming the image or
annotation, the field and what it must be: never Python's words ("float() argument must be ...", "unhashable
type", "not enough values to unpack") and never a traceback; odd but finite values (a score of 7, a width written
as text, a reviewer that is an object) are refused too. Each refusal saves nothing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.coco_import import import_coco

KEY = "de" * 32
H, W = 30, 40
SQUARE = [[10, 10, 30, 10, 30, 20, 10, 20]]
HUGE = int("1" + "0" * 400)  # a JSON integer no float holds
ODD = [[1, 2], {"a": 1}, "497", "x", True, None, -5, 7, HUGE, float("nan"), float("inf"), 0.5, 30.5]
#: Python's own words, as they used to reach the message.
PYTHON_WORDS = ("float()", "int()", "unhashable", "object is not", "could not convert", "not enough values",
                "too many values", "too large to convert", "Expected bytes", "expected bytes", "argument")


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "data")
    store.save(KEY, np.full((H, W, 3), 80, np.uint8), np.ones((1, H, W), bool),
               [ConceptReview(0, "lesion", 0.9, (5, 5, 20, 15), "accept")], reviewer="dr e")
    return store


def _coco(**changes) -> dict:
    """Image 7 (KEY), category 3, annotation 1 (a square with every field our export writes)."""
    coco = {"images": [{"id": 7, "file_name": f"{KEY}.png", "width": W, "height": H, "reviewer": "dr e",
                        "note": ""}],
            "categories": [{"id": 3, "name": "lesion"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": SQUARE,
                             "bbox": [10, 10, 20, 10], "area": 200.0, "score": 0.5, "iscrowd": 0,
                             "attributes": {"decision": "accept", "comment": "", "concept_index": 0,
                                            "original_phrase": "lesion"}}]}
    for where, value in changes.items():
        part, field = where.split(".")
        target = {"image": coco["images"][0], "category": coco["categories"][0], "ann": coco["annotations"][0],
                  "attr": coco["annotations"][0]["attributes"]}[part]
        target[field] = value
    return coco


def _refused(store, tmp_path, coco, message):
    path = tmp_path / "file.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        import_coco(store, path)
    assert [v.revision for v in store.versions(KEY)] == [1]


FIELDS = ["image.id", "image.width", "image.height", "image.reviewer", "image.note", "category.id", "category.name",
          "ann.image_id", "ann.category_id", "ann.segmentation", "ann.bbox", "ann.score", "attr.comment",
          "attr.concept_index", "rle.size", "rle.counts", "polygon.point", "bbox.x"]


@pytest.mark.parametrize("field", FIELDS)
def test_no_odd_value_gets_pythons_words_or_a_traceback(store, tmp_path, field):
    """Found by the lead: e.g. a score given as a list was refused with "float() argument must be a string or a
    real number, not 'list'"; a list as an image or category id escaped as a TypeError traceback."""
    for value in ODD:
        part, name = field.split(".")
        if part == "rle":
            segmentation = {"size": [H, W], "counts": [0, H * W]}
            segmentation[name] = value
            coco = _coco(**{"ann.segmentation": segmentation})
        elif part == "polygon":
            coco = _coco(**{"ann.segmentation": [[10, value, 30, 10, 30, 20, 10, 20]]})
        elif part == "bbox":
            coco = _coco(**{"ann.bbox": [value, 10, 20, 10]})
        else:
            coco = _coco(**{field: value})
        path = tmp_path / "file.json"
        path.write_text(json.dumps(coco))
        revisions = [v.revision for v in store.versions(KEY)]
        try:
            import_coco(store, path)
        except ValueError as exc:
            message = str(exc)
            assert not any(words in message for words in PYTHON_WORDS), (field, value, message)
            assert re.match(r"^(COCO image|Image|Category|Annotation) ", message), (field, value, message)
            assert message.endswith("."), message
            assert [v.revision for v in store.versions(KEY)] == revisions, "a refused file saves nothing"


@pytest.mark.parametrize("score", [[1, 2], -5, 7, 1.5, -0.01, "0.5", True, {"a": 1}, float("nan"), float("inf")])
def test_a_score_must_be_a_json_number_from_0_to_1(store, tmp_path, score):
    """Found by the lead: -5 and 7 were saved as detector scores (the app's scores are confidences in [0, 1]),
    "0.5" as text was read as a number and a list was refused in Python's words."""
    _refused(store, tmp_path, _coco(**{"ann.score": score}),
             f"Annotation 1 of image 7: its score must be a number from 0 to 1; got {score!r}.")


@pytest.mark.parametrize("score, kept", [(0, 0.0), (1, 1.0), (0.25, 0.25), (None, 1.0)])
def test_scores_at_the_edges_are_kept_and_null_is_no_score(store, tmp_path, score, kept):
    path = tmp_path / "file.json"
    path.write_text(json.dumps(_coco(**{"ann.score": score})))
    assert import_coco(store, path).saved[0].concepts[0].score == kept


@pytest.mark.parametrize("bbox", [[1, 2], "x", {"a": 1}, 5, [1, 2, "3", 4], [1, 2, 3, 4, 5], [True, 2, 3, 4],
                                  [1, float("nan"), 3, 4], [1, 2, float("inf"), 4]])
def test_a_bbox_must_be_four_finite_numbers(store, tmp_path, bbox):
    _refused(store, tmp_path, _coco(**{"ann.bbox": bbox}),
             "Annotation 1 of image 7: its bbox must be 4 finite numbers [x, y, width, height] in pixels; "
             f"got {bbox!r}.")


@pytest.mark.parametrize("size, value", [("width", "40"), ("width", [40]), ("height", "30"), ("height", 30.5),
                                         ("width", True), ("width", None), ("width", float("inf"))])
def test_a_size_must_be_a_whole_json_number(store, tmp_path, size, value):
    """Found by the lead: a width written as text ("497") was read as a number; 30.5 was cut to 30."""
    _refused(store, tmp_path, _coco(**{f"image.{size}": value}),
             f"COCO image 7: its {size} must be a whole number of pixels, written as a JSON number; got {value!r}.")


def test_a_missing_size_says_so_and_a_whole_float_is_a_size(store, tmp_path):
    coco = _coco()
    del coco["images"][0]["height"]
    _refused(store, tmp_path, coco, "COCO image 7: its height must be a whole number of pixels, written as a JSON "
                                    "number; it has none.")
    path = tmp_path / "file.json"
    path.write_text(json.dumps(_coco(**{"image.width": 40.0})))
    assert import_coco(store, path).saved[0].revision == 2


@pytest.mark.parametrize("reviewer", [{"name": "dr x"}, ["dr x"], 7, True])
def test_a_reviewer_must_be_text(store, tmp_path, reviewer):
    """Found by the lead: an object was saved as the reviewer's name "{'name': 'dr x'}"."""
    _refused(store, tmp_path, _coco(**{"image.reviewer": reviewer}),
             f"COCO image 7: its reviewer must be a name (text); got {reviewer!r}.")
    path = tmp_path / "file.json"
    path.write_text(json.dumps(_coco(**{"image.reviewer": reviewer})))
    assert import_coco(store, path, reviewer="cvat").saved[0].reviewer == "cvat"  # a name given: the file's unused


@pytest.mark.parametrize("where, message", [
    ("image.id", "Image 1 of the file: its id must be a whole number or text; got {value!r}."),
    ("category.id", "Category 1 of the file: its id must be a whole number or text; got {value!r}."),
    ("ann.image_id", "Annotation 1: its image_id must be a whole number or text; got {value!r}."),
    ("ann.category_id", "Annotation 1: its category_id must be a whole number or text; got {value!r}."),
])
@pytest.mark.parametrize("value", [[7], {"a": 1}, True, None, 7.5])
def test_ids_must_be_whole_numbers_or_text(store, tmp_path, where, message, value):
    """A list as an image or category id escaped as a TypeError traceback ("unhashable type: 'list'")."""
    _refused(store, tmp_path, _coco(**{where: value}), message.format(value=value))


@pytest.mark.parametrize("name", [["lesion"], 7, {"a": 1}, True])
def test_a_category_name_that_is_not_text_says_so(store, tmp_path, name):
    """It was refused as "an empty name"."""
    _refused(store, tmp_path, _coco(**{"category.name": name}),
             f"Category 3: its name must be text (a phrase such as 'lesion'); got {name!r}.")


@pytest.mark.parametrize("counts", [{"a": 1}, None, 5, True])
def test_rle_counts_that_are_neither_runs_nor_text_are_refused(store, tmp_path, counts):
    _refused(store, tmp_path, _coco(**{"ann.segmentation": {"size": [H, W], "counts": counts}}),
             "Annotation 1 of image 7: its RLE counts must be a list of whole numbers or compressed COCO RLE "
             f"text; got {counts!r}.")


@pytest.mark.parametrize("size", [7, True, "30x40", [30], [30, "40"], [30.0, 40.5]])
def test_an_rle_without_a_size_is_refused(store, tmp_path, size):
    _refused(store, tmp_path, _coco(**{"ann.segmentation": {"size": size, "counts": [0, H * W]}}),
             f"Annotation 1 of image 7: its RLE size must be [height, width] in whole pixels; got {size!r}.")


def test_an_rle_of_another_size_names_both_in_coco_order(store, tmp_path):
    """COCO writes an RLE's size [height, width]; the image is named width x height like every other message."""
    _refused(store, tmp_path, _coco(**{"ann.segmentation": {"size": [W, H], "counts": [0, H * W]}}),
             f"Annotation 1 of image 7: its RLE size is [{W}, {H}] (height, width) but the image is {W}x{H} "
             f"(size [{H}, {W}]).")


@pytest.mark.parametrize("point", ["x", None, [1], True])
def test_a_polygon_of_things_other_than_numbers_is_refused(store, tmp_path, point):
    polygon = [10, point, 30, 10, 30, 20, 10, 20]
    _refused(store, tmp_path, _coco(**{"ann.segmentation": [polygon]}),
             f"Annotation 1 of image 7: each polygon must be a list of numbers x, y, x, y, ...; got {polygon!r}.")


def test_a_long_value_is_quoted_cut(store, tmp_path):
    score = list(range(100))
    _refused(store, tmp_path, _coco(**{"ann.score": score}),
             f"Annotation 1 of image 7: its score must be a number from 0 to 1; got {repr(score)[:59]}….")


def test_text_that_is_not_json_is_refused_with_where_and_not_pythons_words(store, tmp_path):
    path = tmp_path / "file.json"
    path.write_text('{"images": [\n  {"id": 7,}]}')
    with pytest.raises(ValueError) as err:
        import_coco(store, path)
    assert str(err.value) == ("Not a COCO annotation file: it is not valid JSON (the first error is at line 2, "
                              "column 12).")


@pytest.mark.parametrize("length, cut", [(59, False), (60, False), (61, True), (62, True)])
def test_a_value_is_quoted_whole_up_to_60_characters(store, tmp_path, length, cut):
    """The quotation is cut only past 60 characters: a text score whose quotation (with its two quote marks) is 60
    characters long is quoted whole; one of 61 is cut to 59 characters and "…"."""
    score = "x" * (length - 2)
    quoted = "'" + score + "'"
    assert len(quoted) == length
    got = quoted[:59] + "…" if cut else quoted
    _refused(store, tmp_path, _coco(**{"ann.score": score}),
             f"Annotation 1 of image 7: its score must be a number from 0 to 1; got {got}.")


def test_an_integer_too_large_for_a_float_keeps_its_sign():
    """as_float's contract (a JSON integer beyond a float's range is +-inf, not an OverflowError); its callers only
    need "not finite", but the sign is part of the documented value."""
    from skinapp.review.coco_values import as_float

    assert as_float(HUGE) == float("inf")
    assert as_float(-HUGE) == float("-inf")
    assert as_float(-7) == -7.0 and as_float(10**300) == 1e300
