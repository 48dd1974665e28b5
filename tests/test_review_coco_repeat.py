"""Importing a COCO file or export zip again: a version identical to the photo's latest (masks, concepts with
their decisions, labels, comments, scores and boxes, reviewer, note) is not saved again, and the output says
"unchanged, already version N"; any difference still makes a new version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.coco_import import import_coco, main

KEY = "ab" * 32
H, W = 30, 40
SQUARE = [[10, 10, 30, 10, 30, 20, 10, 20]]


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "data")
    store.save(KEY, np.full((H, W, 3), 60, np.uint8), np.ones((1, H, W), bool),
               [ConceptReview(0, "lesion", 0.9, (5, 5, 20, 15), "accept")], reviewer="dr r")
    return store


def _file(tmp_path, name="file.json", **fields):
    """Image 7 of KEY with one annotation: a square of category 3 "lesion", bbox given; ``fields`` replace parts."""
    ann = {"id": 1, "image_id": 7, "category_id": 3, "segmentation": SQUARE, "bbox": [10, 10, 20, 10], **fields}
    coco = {"images": [{"id": 7, "file_name": f"{KEY}.png", "width": W, "height": H}],
            "categories": [{"id": 3, "name": "lesion"}], "annotations": [ann]}
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def _import(store, path, capsys, *extra):
    assert main([str(path), "--data-dir", str(store.data_dir), *extra]) == 0
    return capsys.readouterr().out


def test_the_same_file_imported_twice_saves_one_version(store, tmp_path, capsys):
    """Found by a new user: each import of the same file saved another identical version."""
    path = _file(tmp_path)
    assert _import(store, path, capsys) == f"{KEY[:12]}: version 2, 1 concept\n"
    assert _import(store, path, capsys) == f"{KEY[:12]}: unchanged, already version 2\n"
    assert [v.revision for v in store.versions(KEY)] == [2, 1]


@pytest.mark.parametrize("fields", [
    {"segmentation": [[10, 10, 30, 10, 30, 20]]},        # another mask, same box
    {"attributes": {"decision": "reject"}},              # another decision
    {"attributes": {"original_phrase": "nodule"}},       # relabelled "lesion"
    {"attributes": {"comment": "rechecked"}},            # another comment
    {"score": 0.5},                                      # another score
    {"bbox": [10, 10, 20, 9]},                           # another box
    {"attributes": {"concept_index": 1}},                # another concept number
], ids=["mask", "decision", "label", "comment", "score", "box", "number"])
def test_a_file_that_differs_in_one_thing_is_a_new_version(store, tmp_path, capsys, fields):
    _import(store, _file(tmp_path), capsys)
    assert _import(store, _file(tmp_path, "changed.json", **fields), capsys) == f"{KEY[:12]}: version 3, 1 concept\n"


def test_another_reviewer_is_a_new_version(store, tmp_path, capsys):
    path = _file(tmp_path)
    _import(store, path, capsys)
    assert _import(store, path, capsys, "--reviewer", "dr s") == f"{KEY[:12]}: version 3, 1 concept\n"
    assert _import(store, path, capsys, "--reviewer", "dr s") == f"{KEY[:12]}: unchanged, already version 3\n"


def test_another_note_is_a_new_version(store, tmp_path, capsys):
    path = _file(tmp_path)
    _import(store, path, capsys)
    [version] = import_coco(store, path, note="second look").saved
    assert (version.revision, version.note) == (3, "second look")


def test_an_export_zip_imported_twice_into_another_store_saves_one_version(tmp_path):
    from skinapp.image import content_key
    from skinapp.review.export import export_zip

    photo = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    key = content_key(photo)
    mine = ReviewStore(tmp_path / "mine")
    masks = np.zeros((3, H, W), bool)
    masks[0, 2:9, 3:30], masks[2, 10:25, 5:9] = True, True
    mine.save(key, photo, masks, [ConceptReview(0, "lesion", 0.75, (3, 2, 30, 9), "relabel", label="scar",
                                                comment="flat"),
                                  ConceptReview(2, "arm", 0.25, (5, 10, 9, 25), "accept")],
              reviewer="dr z", note="first look")
    archive = export_zip(mine, tmp_path / "exports")
    other = ReviewStore(tmp_path / "other")
    first = import_coco(other, archive)
    [saved] = first.saved
    assert (saved.revision, first.unchanged) == (1, [])
    again = import_coco(other, archive)
    assert again.saved == [] and [(r.image_key, r.revision) for r in again.unchanged] == [(key, 1)]
    assert again.lines() == [f"{key[:12]}: unchanged, already version 1"]
    assert [v.revision for v in other.versions(key)] == [1]


def test_lines_list_saved_then_unchanged_then_skipped_photos(store, tmp_path):
    other, empty = "cd" * 32, "ef" * 32
    for key in (other, empty):
        store.save(key, np.zeros((H, W, 3), np.uint8), np.ones((1, H, W), bool),
                   [ConceptReview(0, "arm", 0.5, (0, 0, W, H), "accept")])
    coco = json.loads(_file(tmp_path).read_text())
    coco["images"] += [{"id": 8, "file_name": f"{other}.png", "width": W, "height": H},
                       {"id": 9, "file_name": f"{empty}.png", "width": W, "height": H}]
    coco["annotations"].append({**coco["annotations"][0], "id": 2, "image_id": 8})
    path = tmp_path / "three.json"
    path.write_text(json.dumps(coco))
    import_coco(store, _file(tmp_path))  # KEY's version 2, which the file repeats
    done = import_coco(store, path)
    assert done.lines("`") == [f"`{other[:12]}`: version 2, 1 concept", f"`{KEY[:12]}`: unchanged, already version 2",
                               f"`{empty[:12]}`: skipped, no annotations"]


def test_a_box_past_the_photos_edge_imported_twice_is_unchanged(store, tmp_path, capsys):
    """The store keeps boxes clipped to the photo: the comparison clips the file's box alike."""
    path = _file(tmp_path, bbox=[10, 10, 45, 25])
    assert _import(store, path, capsys) == f"{KEY[:12]}: version 2, 1 concept\n"
    assert store.load(KEY).concepts[0].box == (10.0, 10.0, W, H)
    assert _import(store, path, capsys) == f"{KEY[:12]}: unchanged, already version 2\n"
