"""COCO export carries edited masks, reviewer, version and provenance; a COCO file (ours, or CVAT-style with
polygons / uncompressed RLE) imports as a new version; mismatches are refused with nothing saved."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from skinapp.review import ConceptReview, ReviewStore, export_coco
from skinapp.review.coco_import import import_coco, main
from skinapp.review.coco_segmentation import decode_segmentation
from skinapp.review.export import rle_encode

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
    [version] = import_coco(store, path, reviewer="cvat").saved
    assert version.revision == 2 and version.reviewer == "cvat"
    assert [(c.phrase, c.decision, c.label, c.provenance) for c in version.concepts] == [
        ("lesion", "accept", "", "imported"), ("nodule", "relabel", "scar", "imported")]
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
    [v] = import_coco(store, _cvat_file(tmp_path)).saved
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
    [v2] = import_coco(store, _cvat_file(tmp_path, segmentation={"size": [H, W], "counts": counts})).saved
    assert np.array_equal(store.load_mask(KEY, 0, v2.version), truth)
    assert mask_utils.area(raw) == truth.sum() and v2.revision == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"file_name": "someone_else.jpg"}, "matches no saved photo"),
    ({"width": 80, "height": 60}, "is 80x60 but photo"),
    ({"segmentation": []}, "no segmentation"),
    ({"segmentation": {"size": [10, 10], "counts": "abc"}}, "RLE size is"),
])
def test_bad_files_are_refused_and_nothing_is_saved(store, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        import_coco(store, _cvat_file(tmp_path, **kwargs))
    assert [v.revision for v in store.versions(KEY)] == [1]
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="Not a COCO"):
        import_coco(store, tmp_path / "junk.json")


def _coco_file(tmp_path, images=None, annotations=None, categories=None, drop=()):
    """A CVAT-style file: image 7 of KEY, annotation 1 (a polygon of category 3 "lesion"); parts replaceable."""
    coco = {"images": images if images is not None else [{"id": 7, "file_name": f"{KEY}.jpg", "width": W,
                                                           "height": H}],
            "categories": categories if categories is not None else [{"id": 3, "name": "lesion"}],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}]}
    for part in drop:
        del coco[part]
    path = tmp_path / "file.json"
    path.write_text(json.dumps(coco))
    return path


def _ann(**fields):
    return [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], **fields}]


PHOTO = KEY[:12]
NOT_COCO = ('Not a COCO annotation file: it must be a JSON object with "images", "annotations" and "categories" '
            'lists.')


@pytest.mark.parametrize("parts, message", [
    ({"drop": ["images"]}, NOT_COCO),
    ({"images": [{"id": 7, "file_name": "cases/someone_else.jpg", "width": W, "height": H}]},
     "COCO image 7 ('someone_else.jpg') matches no saved photo: images are matched by image_key or a file name "
     "<photo key>.png."),
    ({"images": [{"id": 7, "width": W, "height": H}]},  # neither image_key nor file_name
     "COCO image 7 (no file name) matches no saved photo: images are matched by image_key or a file name "
     "<photo key>.png."),
    ({"images": [{"id": 7, "file_name": f"{KEY}.jpg", "width": 80, "height": 60}]},
     f"COCO image 7 is 80x60 but photo {PHOTO} is 40x30: annotate the exported working-size photo."),
    ({"images": [{"id": 7, "file_name": f"{KEY}.jpg"}]},
     "COCO image 7: its height must be a whole number of pixels, written as a JSON number; it has none."),
    ({"annotations": _ann(segmentation=[])}, "Annotation 1 of image 7: it has no segmentation (RLE or polygons)."),
    ({"annotations": _ann(segmentation=None)}, "Annotation 1 of image 7: it has no segmentation (RLE or polygons)."),
    ({"annotations": _ann(segmentation={"size": [10, 10], "counts": "abc"})},
     "Annotation 1 of image 7: its RLE size is [10, 10] (height, width) but the image is 40x30 (size [30, 40])."),
    ({"annotations": _ann(segmentation={"counts": "abc"})},
     "Annotation 1 of image 7: its RLE has no size [height, width]."),
    ({"annotations": _ann(segmentation=[[10, 10, "x", 10, 30, 20]])},
     "Annotation 1 of image 7: each polygon must be a list of numbers x, y, x, y, ...; got [10, 10, 'x', 10, 30, 20]."),
    ({"annotations": _ann(category_id=9)}, "Annotation 1: category 9 is not listed."),
    ({"drop": ["categories"]}, "Annotation 1: category 3 is not listed."),
    ({"categories": [{"id": 3, "name": " "}]}, "Category 3 has an empty name: name each category (e.g. 'lesion')."),
    ({"categories": [{"id": 3, "name": None}]}, "Category 3 has an empty name: name each category (e.g. 'lesion')."),
    ({"categories": [{"id": 3, "name": "x" * 201}]},
     "Category 3: A category name is too long (201 characters; limit 200)."),
    ({"categories": [{"id": 3, "name": "12"}]},
     "Category 3: '12' is not a category name: use words, e.g. 'lesion'."),
    ({"annotations": _ann(image_id=8)}, "Annotation 1 names image 8, which the file does not list: nothing imported."),
    ({"drop": ["annotations"]}, "The COCO file has no annotations: nothing to import."),
])
def test_each_refusal_is_worded_whole_and_saves_nothing(store, tmp_path, parts, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        import_coco(store, _coco_file(tmp_path, **parts))
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_a_later_bad_image_stops_the_whole_file(store, tmp_path):
    good = {"id": 7, "file_name": f"{KEY}.jpg", "width": W, "height": H}
    with pytest.raises(ValueError, match=r"^COCO image 8 \('x\.png'\) matches no saved photo"):
        import_coco(store, _coco_file(tmp_path, images=[good, {"id": 8, "file_name": "x.png"}]))
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_import_matches_keys_in_any_case_and_keeps_scores_boxes_prompts_and_image_order(store, tmp_path, caplog):
    other = "ab" * 32
    store.save(other, np.zeros((10, 20, 3), np.uint8), np.ones((1, 10, 20), bool),
               [ConceptReview(0, "arm", 0.5, (0, 0, 20, 10), "accept")], prompts=["arm", "nail"])
    images = [{"id": 2, "image_key": other.upper(), "file_name": "ignored.png", "width": 20, "height": 10},
              {"id": 7, "file_name": f"upload/{KEY.upper()}.JPG", "width": W, "height": H}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]],
         "bbox": [1, 2, 3, 4], "score": 0.25},
        {"id": 2, "image_id": 2, "category_id": 4,  # two polygons, merged; no bbox, no score
         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [10, 5, 14, 5, 14, 9, 10, 9]]},
        {"id": 3, "image_id": 7, "category_id": 4, "segmentation": {"size": [H, W], "counts": rle_encode(
            np.pad(np.ones((2, 3), bool), ((5, H - 7), (6, W - 9))))["counts"]}},
    ]
    path = _coco_file(tmp_path, images=images, annotations=annotations,
                      categories=[{"id": 3, "name": "lesion"}, {"id": 4, "name": "scar"}])
    caplog.set_level(logging.INFO, logger="skinapp.review.coco_import")
    first, second = import_coco(store, path).saved
    assert [(v.image_key, v.revision, v.reviewer, v.note) for v in (first, second)] == [
        (other, 2, "", "imported from COCO"), (KEY, 2, "", "imported from COCO")]
    assert first.prompts == ["arm", "nail"] and second.prompts == []
    assert [(c.index, c.phrase, c.score, c.box, c.decision, c.provenance) for c in first.concepts] == [
        (0, "scar", 1.0, (0.0, 0.0, 14.0, 9.0), "accept", "imported")]  # box of the pixels: x 0-13, y 0-8
    assert [(c.index, c.phrase, c.score, c.box, c.decision, c.provenance) for c in second.concepts] == [
        (0, "lesion", 0.25, (1.0, 2.0, 4.0, 6.0), "accept", "imported"),
        (1, "scar", 1.0, (6.0, 5.0, 9.0, 7.0), "accept", "imported")]
    merged = store.load_mask(other, 0, first.version)
    assert merged.sum() == mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(
        annotations[1]["segmentation"], 10, 20))) and merged[0, 0] and merged[6, 12] and not merged[6, 6]
    assert store.load_mask(KEY, 1, second.version).sum() == 6
    assert caplog.messages == ["Imported 3 annotations over 2 photos from COCO; 0 photos unchanged (already their "
                               "latest version), 0 images without annotations skipped"]


def test_compressed_rle_counts_may_be_bytes_or_text():
    mask = np.zeros((H, W), bool)
    mask[3:9, 4:30] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    for counts in (rle["counts"], rle["counts"].decode("ascii")):
        decoded = decode_segmentation({"size": (H, W), "counts": counts}, H, W)
        assert decoded.dtype == bool and np.array_equal(decoded, mask)


# the command, in process (mutation runs cannot trace a subprocess)
def test_command_imports_and_prints_one_line_per_version(store, tmp_path, capsys):
    assert main([str(_coco_file(tmp_path)), "--data-dir", str(store.data_dir), "--reviewer", "cvat"]) == 0
    assert capsys.readouterr() == (f"{PHOTO}: version 2, 1 concept\n", "")
    latest = store.load(KEY)
    assert (latest.revision, latest.reviewer, latest.note) == (2, "cvat", "imported from COCO")


def test_command_reads_the_data_dir_from_the_environment_and_records_no_reviewer(store, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv("SKINAPP_DATA_DIR", str(store.data_dir))
    assert main([str(_coco_file(tmp_path))]) == 0
    assert capsys.readouterr().out == f"{PHOTO}: version 2, 1 concept\n"
    assert store.load(KEY).reviewer == ""


def test_command_refusal_is_one_line_on_stderr_exit_1_and_closes_the_store(store, tmp_path, monkeypatch, capsys):
    closed = []
    monkeypatch.setattr(ReviewStore, "close", lambda self: closed.append(self.data_dir))
    path = _coco_file(tmp_path, annotations=_ann(category_id=9))
    assert main([str(path), "--data-dir", str(store.data_dir)]) == 1
    assert capsys.readouterr() == ("", "error: Annotation 1: category 9 is not listed.\n")
    assert closed == [store.data_dir] and [v.revision for v in store.versions(KEY)] == [1]
    assert main([str(_coco_file(tmp_path)), "--data-dir", str(store.data_dir)]) == 0
    assert closed == [store.data_dir] * 2


def test_command_help_names_its_arguments(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m skinapp.review.coco_import [-h] [--data-dir DATA_DIR] "
                           "[--reviewer REVIEWER] file Import a COCO instance-segmentation file")
    for line in ("file the COCO JSON file, or an export zip", "--data-dir DATA_DIR the review store's folder (default "
                 "$SKINAPP_DATA_DIR, else ./data/reviews)",
                 "--reviewer REVIEWER who made the annotations (saved with each version; default: the reviewer the "
                 "file records for each image)"):
        assert line in text


def test_our_own_export_imports_back_whole_with_its_reviewer_skipping_photos_with_nothing_accepted(store, tmp_path,
                                                                                                   capsys):
    """Found by a new user: a photo whose concepts were all rejected or pending is exported with no annotation,
    and the import refused the whole file; without --reviewer the versions lost the reviewer the file records."""
    pending = "cd" * 32
    store.save(pending, np.zeros((10, 20, 3), np.uint8), np.ones((1, 10, 20), bool),
               [ConceptReview(0, "arm", 0.5, (0, 0, 20, 10), "pending")], reviewer="dr p")
    path = export_coco(store, tmp_path / "out")
    assert {i["image_key"] for i in json.loads(path.read_text())["images"]} == {KEY, pending}
    assert main([str(path), "--data-dir", str(store.data_dir)]) == 0
    assert capsys.readouterr().out == f"{PHOTO}: version 2, 2 concepts\n{pending[:12]}: skipped, no annotations\n"
    latest = store.load(KEY)
    assert (latest.revision, latest.reviewer, [c.final_label for c in latest.concepts]) == (2, "dr e",
                                                                                          ["lesion", "scar"])
    assert [v.revision for v in store.versions(pending)] == [1], "a skipped photo's review must stay as it was"
    done = import_coco(store, path, reviewer="cvat")
    assert [(v.image_key, v.revision, v.reviewer) for v in done.saved] == [(KEY, 3, "cvat")]
    assert done.skipped == [pending]


@pytest.mark.parametrize("polygons, message", [
    ([[10, 10, 100]], "a polygon needs at least 3 points (6 numbers)"),
    ([[10, 10, 30, 10, 30, 20, 10]], "a polygon needs x, y pairs; this one has 7 numbers"),
    ([[10, 10, 30, float("nan"), 30, 20]], "a polygon holds a number that is not finite (nan)"),
    ([[10, 10, 1e8, 10, 30, 20]], "a polygon point lies far outside the 40x30 image"),
    ([10, 10, 30, 10, 30, 20], "each polygon must be a list of numbers x, y, x, y, ...; got 10"),
])
def test_bad_polygons_are_refused_before_pycocotools_sees_them(store, tmp_path, polygons, message):
    """Found by a new user: a 3-number polygon made pycocotools raise a bare Exception (a traceback in the CLI,
    "That failed." in the app); a NaN or a far-away point crashed the process."""
    with pytest.raises(ValueError, match="^" + re.escape(f"Annotation 1 of image 7: {message}.") + "$"):
        import_coco(store, _coco_file(tmp_path, annotations=_ann(segmentation=polygons)))
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_any_pycocotools_failure_becomes_a_refusal_naming_the_annotation(store, tmp_path, capsys, monkeypatch):
    """Should our checks let through something pycocotools fails on, its words are not the message."""
    def fails(rle):
        raise TypeError("Expected bytes, got int")

    monkeypatch.setattr(mask_utils, "decode", fails)
    path = _coco_file(tmp_path, annotations=_ann(segmentation=rle_encode(np.ones((H, W), bool))))
    assert main([str(path), "--data-dir", str(store.data_dir)]) == 1
    assert capsys.readouterr() == ("", "error: Annotation 1 of image 7: pycocotools cannot decode its RLE: export "
                                       "it again as COCO RLE or polygons.\n")


def test_our_export_imports_back_with_its_decisions_labels_comments_and_concept_numbers(tmp_path):
    """Found by a new user: every imported annotation became "accept", comments and relabels were dropped and the
    concepts renumbered. Rejected (and pending) concepts are not exported, so they are not in the new version."""
    store = ReviewStore(tmp_path / "data")
    masks = np.zeros((4, H, W), bool)
    masks[0, 5:15, 5:20] = masks[1, 0:4, 0:4] = masks[2, 18:28, 22:38] = masks[3, 1:9, 30:39] = True
    store.save(KEY, np.full((H, W, 3), 80, np.uint8), masks, [
        ConceptReview(0, "lesion", 0.9, (5, 5, 20, 15), "accept", comment="border unclear"),
        ConceptReview(1, "arm", 0.2, (0, 0, 4, 4), "reject", comment="not skin"),
        ConceptReview(2, "nodule", 1.0, (22, 18, 38, 28), "relabel", label="scar", comment="healed"),
        ConceptReview(3, "crust", 0.5, (30, 1, 39, 9), "pending")], reviewer="dr e")
    path = export_coco(store, tmp_path / "out")
    [version] = import_coco(store, path).saved
    assert [(c.index, c.phrase, c.decision, c.label, c.comment, c.provenance) for c in version.concepts] == [
        (0, "lesion", "accept", "", "border unclear", "imported"),
        (2, "nodule", "relabel", "scar", "healed", "imported")]
    assert version.reviewer == "dr e"
    for index in (0, 2):
        assert np.array_equal(store.load_mask(KEY, index, version.version), masks[index])


def _attrs(**attributes):
    return _ann(attributes={"decision": "accept", "original_phrase": "lesion", "comment": "", "concept_index": 0,
                            **attributes})


@pytest.mark.parametrize("annotations, message", [
    (_attrs(decision="maybe"), "Annotation 1 of image 7: its decision must be one of pending, accept, reject, "
                               "relabel; got 'maybe'."),
    (_attrs(decision=1), "Annotation 1 of image 7: its decision must be one of pending, accept, reject, relabel; "
                         "got 1."),
    (_attrs(comment=["x"]), "Annotation 1 of image 7: its comment must be text; got ['x']."),
    (_attrs(comment="x" * 5001), "Annotation 1 of image 7: a comment has at most 5000 characters; this one has "
                                 "5001."),
    (_attrs(original_phrase=""), "Annotation 1 of image 7: its original_phrase must be a phrase of words; got ''."),
    (_attrs(original_phrase="y" * 201), "Annotation 1 of image 7: A phrase is too long (201 characters; limit "
                                        "200)."),
    (_attrs(concept_index=-1), "Annotation 1 of image 7: its concept_index must be a whole number from 0 to 999; "
                               "got -1."),
    (_attrs(concept_index="0"), "Annotation 1 of image 7: its concept_index must be a whole number from 0 to 999; "
                                "got '0'."),
    (_attrs() + [{**_attrs()[0], "id": 2}], "Annotation 2 of image 7: its concept_index 0 is used twice."),
])
def test_our_attributes_are_checked_and_refused_with_nothing_saved(store, tmp_path, annotations, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        import_coco(store, _coco_file(tmp_path, annotations=annotations))
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_attributes_read_back_a_reject_and_a_category_renamed_after_export_as_a_relabel(store, tmp_path):
    annotations = [*_attrs(decision="reject", original_phrase="arm", concept_index=4, comment="  no  "),
                   {**_attrs(original_phrase="nodule", concept_index=1)[0], "id": 2},
                   {**_ann(attributes={"occluded": False})[0], "id": 3}]  # CVAT's own attributes: as before
    [version] = import_coco(store, _coco_file(tmp_path, annotations=annotations)).saved
    assert [(c.index, c.phrase, c.decision, c.label, c.comment) for c in version.concepts] == [
        (1, "nodule", "relabel", "lesion", ""), (4, "arm", "reject", "", "no"), (5, "lesion", "accept", "", "")]


def test_a_json_array_or_a_missing_file_is_refused_in_words(store, tmp_path, caplog):
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="^" + re.escape(NOT_COCO) + "$"):
        import_coco(store, tmp_path / "list.json")
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError, match=r"^The COCO file was not found: choose it again\.$"):
        import_coco(store, tmp_path / "secret-name.json")
    assert "secret-name" not in caplog.text


def test_command_names_a_missing_file_in_its_own_words(store, tmp_path, capsys):
    """Found by a new user: the command said the screen's "The COCO file was not found: choose it again."."""
    missing = tmp_path / "absent.json"
    with pytest.raises(SystemExit) as exit_info:
        main([str(missing), "--data-dir", str(store.data_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"coco_import: error: COCO file not found: {missing}\n") and "choose it" not in err
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_command_without_a_store_is_refused_before_one_is_created(store, tmp_path, monkeypatch, capsys):
    """Found by a new user: without --data-dir and no ./data/reviews the command created an empty store, then
    said the photo "matches no saved photo"."""
    monkeypatch.delenv("SKINAPP_DATA_DIR", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(SystemExit) as exit_info:
        main([str(_coco_file(tmp_path))])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # argparse wraps the usage line to the terminal's width
    assert err == ("usage: python -m skinapp.review.coco_import [-h] [--data-dir DATA_DIR] [--reviewer REVIEWER] "
                   "file python -m skinapp.review.coco_import: error: " + NO_STORE.format(folder="data/reviews"))
    assert not (tmp_path / "elsewhere" / "data").exists()


NO_STORE = ("no review store in {folder}: check --data-dir DIR (or $SKINAPP_DATA_DIR); it must name the app's "
            "data folder, where the app creates its store when it starts")


def test_an_export_zip_into_a_folder_without_a_store_is_refused_and_creates_nothing(tmp_path, capsys):
    """Found by a new user: a typo in --data-dir made the zip's import create a stray store and report success,
    while a JSON file was refused there."""
    from skinapp.image import content_key
    from skinapp.review.export import export_zip

    photo = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mine = ReviewStore(tmp_path / "mine")
    mine.save(content_key(photo), photo, np.ones((1, H, W), bool), [ConceptReview(0, "lesion", 0.5, (0, 0, W, H),
                                                                                  "accept")])
    archive = export_zip(mine, tmp_path / "exports")
    for folder in (tmp_path / "typo", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        with pytest.raises(SystemExit) as exit_info:
            main([str(archive), "--data-dir", str(folder)])
        assert exit_info.value.code == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err.endswith("coco_import: error: " + NO_STORE.format(folder=folder))
        assert not folder.exists() or not any(folder.iterdir())


def test_our_export_zip_imports_into_another_store_with_its_photos(tmp_path, capsys):
    """Found by a new user: importing an export zip into another store said "matches no saved photo" although the
    zip holds the photos (images/<key>.png)."""
    from skinapp.image import content_key
    from skinapp.review.export import export_zip

    photo = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    key = content_key(photo)
    mine = ReviewStore(tmp_path / "mine")
    mine.save(key, photo, np.ones((1, H, W), bool), [ConceptReview(0, "lesion", 0.5, (0, 0, W, H), "relabel",
                                                                   label="scar", comment="old")], reviewer="dr z")
    archive = export_zip(mine, tmp_path / "exports")
    other = ReviewStore(tmp_path / "other")  # as the app creates it at start: empty, the zip brings the photo
    assert main([str(archive), "--data-dir", str(other.data_dir)]) == 0
    assert capsys.readouterr() == (f"{key[:12]}: version 1, 1 concept\n", "")
    review = other.load(key)
    assert (review.reviewer, [(c.phrase, c.decision, c.label, c.comment) for c in review.concepts]) == (
        "dr z", [("lesion", "relabel", "scar", "old")])
    assert np.array_equal(other.load_photo(key), photo) and other.load_mask(key, 0).all()
    assert main([str(archive), "--data-dir", str(other.data_dir)]) == 0  # now known, and the same: no version 2
    assert capsys.readouterr().out == f"{key[:12]}: unchanged, already version 1\n"


def test_a_zip_photo_whose_content_is_not_its_key_is_refused(store, tmp_path):
    """The fixture's photo is saved under a made-up key: its zip copy cannot prove it is that photo."""
    import zipfile

    from skinapp.review.export import export_zip

    archive = export_zip(store, tmp_path / "exports")
    other = ReviewStore(tmp_path / "other")
    with pytest.raises(ValueError, match="^" + re.escape(
            f"COCO image 1: the zip's photo images/{PHOTO}….png is not the photo its name says (its pixels give "
            "another key): nothing imported.") + "$"):
        import_coco(other, archive)
    assert other.list_reviews() == []
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="^" + re.escape(
            "The zip holds no annotations.json: import the zip the Review tab exported, or a COCO JSON file.") + "$"):
        import_coco(other, empty)


@pytest.mark.parametrize("counts, message", [
    ([5, 10], "its RLE counts add up to 15 pixels but the image has 1200 (40x30)"),
    ([-5, 1205], "its RLE counts must be whole numbers >= 0"),
    ([1.5, 1198.5], "its RLE counts must be whole numbers >= 0"),
    ("abc", "its RLE counts are not valid compressed COCO RLE"),
    ("zzzz", "its RLE counts are not valid compressed COCO RLE"),
    ("é", "its RLE counts are not valid compressed COCO RLE"),
    ("", "its RLE counts add up to 0 pixels but the image has 1200 (40x30)"),
    (rle_encode(np.ones((H, W - 1), bool))["counts"], "its RLE counts add up to 1170 pixels but the image has 1200 "
                                                       "(40x30)"),
])
def test_rle_counts_that_do_not_cover_the_image_are_refused(store, tmp_path, counts, message):
    """pycocotools decodes such counts into a mask of uninitialised memory (values far above 1), silently."""
    with pytest.raises(ValueError, match="^" + re.escape(f"Annotation 1 of image 7: {message}.") + "$"):
        import_coco(store, _coco_file(tmp_path, annotations=_ann(segmentation={"size": [H, W], "counts": counts})))
    assert [v.revision for v in store.versions(KEY)] == [1]


def test_valid_compressed_rle_still_decodes_whatever_its_characters():
    rng = np.random.default_rng(3)
    masks = [rng.random((13, 17)) < 0.5 for _ in range(2000)]
    assert any("?" in rle_encode(m)["counts"] for m in masks)  # every character '0'..'o' is valid, "?" too
    for mask in masks:
        assert np.array_equal(decode_segmentation(rle_encode(mask), 13, 17), mask)


@pytest.mark.parametrize("bbox", [[0, 0, 0, 0], [100, 100, 5, 5], [1, 2, -3, 4]])
def test_a_box_the_store_would_refuse_stops_the_whole_file_before_any_save(store, tmp_path, bbox):
    """The store refused such a box only when saving, after the file's earlier photos were saved."""
    other = "ab" * 32
    store.save(other, np.zeros((10, 20, 3), np.uint8), np.ones((1, 10, 20), bool),
               [ConceptReview(0, "arm", 0.5, (0, 0, 20, 10), "accept")])
    images = [{"id": 2, "image_key": other, "width": 20, "height": 10},
              {"id": 7, "file_name": f"{KEY}.png", "width": W, "height": H}]
    annotations = [{"id": 1, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
                   {**_ann(bbox=bbox)[0], "id": 2}]
    with pytest.raises(ValueError, match="^" + re.escape(
            f"Annotation 2 of image 7: its bbox {bbox!r} has no area inside the 40x30 image.") + "$"):
        import_coco(store, _coco_file(tmp_path, images=images, annotations=annotations))
    assert [v.revision for v in store.versions(other)] == [1] and [v.revision for v in store.versions(KEY)] == [1]


def test_an_empty_mask_without_a_bbox_is_refused_in_words(store, tmp_path):
    empty = {"size": [H, W], "counts": rle_encode(np.zeros((H, W), bool))["counts"]}
    with pytest.raises(ValueError, match="^" + re.escape(
            "Annotation 1 of image 7: it has no bbox and its mask is empty.") + "$"):
        import_coco(store, _coco_file(tmp_path, annotations=_ann(segmentation=empty)))


def test_a_reviewer_name_the_store_would_refuse_stops_the_whole_file_before_any_save(store, tmp_path):
    other = "ab" * 32
    store.save(other, np.zeros((10, 20, 3), np.uint8), np.ones((1, 10, 20), bool),
               [ConceptReview(0, "arm", 0.5, (0, 0, 20, 10), "accept")])
    images = [{"id": 2, "image_key": other, "width": 20, "height": 10},
              {"id": 7, "file_name": f"{KEY}.png", "width": W, "height": H, "reviewer": "dr\nx"}]
    annotations = [{"id": 1, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
                   {**_ann()[0], "id": 2}]
    with pytest.raises(ValueError, match="^" + re.escape(
            "COCO image 7: A reviewer name cannot hold line breaks, tabs or other control characters.") + "$"):
        import_coco(store, _coco_file(tmp_path, images=images, annotations=annotations))
    assert [v.revision for v in store.versions(other)] == [1] and [v.revision for v in store.versions(KEY)] == [1]
