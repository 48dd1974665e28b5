"""The COCO import's checks at their edges: polygon points up to one image size outside, RLE runs of 0, the
highest concept number, a comment at the limit, odd sizes and parts, an unreadable file, a zip with a reviewer.
Each refusal is compared whole and saves nothing; each acceptance is read back from the saved version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.coco_import import NOT_COCO, import_coco
from skinapp.review.export import export_zip, rle_encode

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


def test_polygon_points_up_to_one_image_size_outside_the_image_are_kept(store, tmp_path):
    """CVAT lets a polygon run past the photo's edge; points from -W..2W, -H..2H (edges included) are accepted."""
    [version] = import_coco(store, _file(tmp_path, [_ann(segmentation=[[-W, -H, 2 * W, -H, 2 * W, 2 * H,
                                                                         -W, 2 * H]])])).saved
    assert store.load_mask(KEY, 0, version.version).all() and version.concepts[0].box == (0.0, 0.0, W, H)


@pytest.mark.parametrize("polygon", [
    [2 * W + 1, 10, 30, 10, 30, 20],   # x just right of 2W
    [-W - 1, 10, 30, 10, 30, 20],      # x just left of -W
    [10, 10, 2 * W + 1, 10, 30, 20],   # the second point's x (pycocotools would draw it, slowly if far)
    [10, 2 * H + 1, 30, 10, 30, 20],   # the first point's y just below 2H
    [10, 10, 30, -H - 1, 30, 20],      # the second point's y just above -H
    [10, 10, 30, 10, 30, 2 * H + 1],   # the third point's y
])
def test_a_polygon_point_just_beyond_one_image_size_outside_is_refused(store, tmp_path, polygon):
    _refused(store, _file(tmp_path, [_ann(segmentation=[polygon])]),
             f"Annotation 1 of image 7: a polygon point lies far outside the {W}x{H} image.")


HUGE = int("1" + "0" * 400)
CUT = repr(HUGE)[:59] + "…"  # a value is quoted cut to 60 characters


@pytest.mark.parametrize("value, message", [
    ({"segmentation": [[HUGE, 10, 30, 10, 30, 20]]}, f"a polygon point lies far outside the {W}x{H} image"),
    ({"segmentation": {"size": [H, W], "counts": [HUGE]}},
     f"its RLE counts add up to {CUT} pixels but the image has {H * W} ({W}x{H})"),
    ({"bbox": [HUGE, 1, 2, 3]},
     f"its bbox must be 4 finite numbers [x, y, width, height] in pixels; got {repr([HUGE, 1, 2, 3])[:59]}…"),
    ({"score": HUGE}, f"its score must be a number from 0 to 1; got {CUT}"),
])
def test_a_number_too_large_for_a_float_is_refused_in_words(store, tmp_path, value, message):
    """Found by the mutation round: JSON integers of 400 digits made float() raise OverflowError, which escaped
    as a traceback (in the app: an unexplained failure); then Python's words "int too large to convert to float"
    were the message."""
    _refused(store, _file(tmp_path, [_ann(**value)]), f"Annotation 1 of image 7: {message}.")


def test_uncompressed_rle_whose_first_pixel_is_set_starts_with_a_run_of_zero(store, tmp_path):
    """COCO runs alternate 0s and 1s starting with 0s: a mask starting at pixel (0, 0) has a first run of 0."""
    truth = np.zeros((H, W), bool)
    truth[0:10, 0] = True  # column-major: the first 10 pixels
    [version] = import_coco(store, _file(tmp_path, [_ann(segmentation={"size": [H, W],
                                                                       "counts": [0, 10, H * W - 10]})])).saved
    assert np.array_equal(store.load_mask(KEY, 0, version.version), truth)


def test_compressed_rle_with_a_character_past_o_is_refused(store, tmp_path):
    counts = rle_encode(np.ones((H, W), bool))["counts"] + "p"  # '0'..'o' are COCO's characters; 'p' is not
    _refused(store, _file(tmp_path, [_ann(segmentation={"size": [H, W], "counts": counts})]),
             "Annotation 1 of image 7: its RLE counts are not valid compressed COCO RLE.")


def test_concept_number_999_and_a_comment_of_5000_characters_are_kept_and_unnumbered_ones_follow(store, tmp_path):
    annotations = [_ann(attributes={"concept_index": 999, "comment": "c" * 5000}),
                   _ann(2, segmentation=[[0, 0, 4, 0, 4, 4, 0, 4]])]
    [version] = import_coco(store, _file(tmp_path, annotations)).saved
    assert [(c.index, len(c.comment)) for c in version.concepts] == [(999, 5000), (1000, 0)]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(SQUARE, H, W))).astype(bool)
    assert np.array_equal(store.load_mask(KEY, 999, version.version), expected)


def test_unnumbered_annotations_follow_a_high_concept_number(store, tmp_path):
    annotations = [_ann(attributes={"concept_index": 70}), _ann(2), _ann(3)]
    [version] = import_coco(store, _file(tmp_path, annotations)).saved
    assert [c.index for c in version.concepts] == [70, 71, 72]


def test_an_original_phrase_without_letters_is_refused_with_an_example(store, tmp_path):
    _refused(store, _file(tmp_path, [_ann(attributes={"original_phrase": "12"})]),
             "Annotation 1 of image 7: '12' is not a phrase: use words, e.g. 'lesion'.")


def test_a_bbox_below_a_landscape_photo_is_refused(store, tmp_path):
    """y 32..37 lies inside a 40-pixel width but below the 30-pixel height."""
    _refused(store, _file(tmp_path, [_ann(bbox=[0, 32, 5, 5])]),
             f"Annotation 1 of image 7: its bbox [0, 32, 5, 5] has no area inside the {W}x{H} image.")


@pytest.mark.parametrize("size, got", [({"width": W, "height": "tall"}, "height must be a whole number of pixels, "
                                       "written as a JSON number; got 'tall'"),
                                       ({"width": None, "height": H}, "width must be a whole number of pixels, "
                                        "written as a JSON number; got None"),
                                       ({"width": [W], "height": H}, "width must be a whole number of pixels, "
                                        f"written as a JSON number; got [{W}]")])
def test_a_size_that_is_not_a_number_is_refused_naming_the_field(store, tmp_path, size, got):
    _refused(store, _file(tmp_path, image={"id": 7, "file_name": f"{KEY}.png", **size}), f"COCO image 7: its {got}.")


def test_an_unknown_photo_key_in_a_json_file_is_refused(store, tmp_path):
    """A photo key the store lacks can only come from an export zip's photo; a JSON file has none."""
    other = "ab" * 32
    _refused(store, _file(tmp_path, image={"id": 7, "image_key": other, "file_name": f"{other}.png", "width": W,
                                           "height": H}),
             f"COCO image 7 ('{other}.png') matches no saved photo: images are matched by image_key or a file "
             "name <photo key>.png.")


@pytest.mark.parametrize("parts", [{"images": ["photo.png"]}, {"annotations": [7]}, {"categories": ["lesion"]}])
def test_a_list_of_things_other_than_objects_is_not_coco(store, tmp_path, parts):
    _refused(store, _file(tmp_path, **parts), NOT_COCO)


def test_a_file_that_cannot_be_read_is_refused_with_the_reason(store, tmp_path, monkeypatch):
    (tmp_path / "folder.json").mkdir()
    _refused(store, tmp_path / "folder.json", "The COCO file could not be read (Is a directory).")

    def lost(self):
        raise TimeoutError  # e.g. a network drive that went away: no OS error text

    monkeypatch.setattr(Path, "read_bytes", lost)
    _refused(store, _file(tmp_path), "The COCO file could not be read (TimeoutError).")


def test_an_export_zip_imports_under_the_reviewer_given_with_the_import_note(tmp_path):
    from skinapp.image import content_key

    photo = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    key = content_key(photo)
    store = ReviewStore(tmp_path / "data")
    store.save(key, photo, np.ones((1, H, W), bool), [ConceptReview(0, "lesion", 0.5, (0, 0, W, H), "accept")],
               reviewer="dr z", note="first look")
    [version] = import_coco(store, export_zip(store, tmp_path / "exports"), reviewer="cvat").saved
    assert (version.revision, version.reviewer, version.note) == (2, "cvat", "first look (imported from COCO)")


def test_json_nested_too_deeply_is_refused_in_words(store, tmp_path):
    """json.loads raises RecursionError (not a ValueError) on very deep nesting: it escaped as a traceback."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as err:
        import_coco(store, deep)
    assert str(err.value) == "Not a COCO annotation file: its JSON is nested too deeply."


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_a_score_that_is_not_a_finite_number_is_refused_before_anything_is_saved(store, tmp_path, score):
    """Found by a new user: a NaN score passed the checks and failed in SQLite at save time (a traceback, after the
    file's earlier photos were saved)."""
    _refused(store, _file(tmp_path, [_ann(score=score)]),
             f"Annotation 1 of image 7: its score must be a number from 0 to 1; got {score!r}.")


def test_an_infinite_image_size_is_refused_not_a_traceback(store, tmp_path):
    """int(Infinity) raised OverflowError, which escaped as a traceback."""
    _refused(store, _file(tmp_path, image={"id": 7, "file_name": f"{KEY}.png", "width": float("inf"), "height": H}),
             "COCO image 7: its width must be a whole number of pixels, written as a JSON number; got inf.")
