"""The COCO export read back whole: every image, category and annotation field, the PNG masks and photos, the
zip's contents (the fields the review store's users rely on, pinned by the export's mutation run)."""

from __future__ import annotations

import json
import logging
import re
import zipfile

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.export import export_coco, export_zip, rle_decode, rle_encode

A, B = "a1" * 32, "b2" * 32
H, W = 16, 12


def _masks(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    masks = np.zeros((len(boxes), H, W), bool)
    for m, (y0, y1, x0, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return masks


def _store(tmp_path) -> ReviewStore:
    store = ReviewStore(tmp_path / "data")
    photo = np.full((H, W, 3), 90, np.uint8)
    store.save(A, photo, _masks((2, 6, 3, 9), (10, 12, 0, 5), (0, 1, 0, 1)), [
        ConceptReview(0, "lesion", 0.9, (3, 2, 9, 6), "accept"),
        ConceptReview(1, "arm", 0.4, (0, 10, 5, 12), "relabel", label="forearm skin", comment="edge",
                      provenance="painted"),
        ConceptReview(2, "nail", 0.2, (0, 0, 1, 1), "reject")], reviewer="dr a", note="first look")
    store.save(B, photo + 10, _masks((0, 3, 0, 3)), [ConceptReview(0, "lesion", 0.75, (0, 0, 3, 3), "accept")],
               reviewer="dr b")
    return store


def test_coco_export_holds_every_field_of_the_reviews(tmp_path):
    store = _store(tmp_path)
    reviews = {r.image_key: r for r in store.list_reviews()}
    path = export_coco(store, tmp_path / "out")
    assert path == tmp_path / "out" / "annotations.json"
    coco = json.loads(path.read_text())
    info = coco.pop("info")
    assert info["description"] == "skinapp reviewed concept masks" and info["version"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", info["date_created"])
    order = [img["image_key"] for img in coco["images"]]
    assert sorted(order) == [A, B]
    for image_id, key in enumerate(order, start=1):
        r = reviews[key]
        assert coco["images"][image_id - 1] == {
            "id": image_id, "file_name": f"images/{key}.png", "width": W, "height": H, "image_key": key,
            "reviewer": r.reviewer, "note": r.note, "revision": 1, "version": r.version, "saved_at": r.updated_at}
        assert (tmp_path / "out" / "images" / f"{key}.png").read_bytes() == store.photo_path(key).read_bytes()
    assert coco["categories"] == [{"id": 1, "name": "lesion", "supercategory": "concept"},
                                  {"id": 2, "name": "forearm skin", "supercategory": "concept"}]
    expected = {A: [(0, "lesion", 1, 0.9, "accept", "", "model", (2, 6, 3, 9)),
                    (1, "arm", 2, 0.4, "relabel", "edge", "painted", (10, 12, 0, 5))],
                B: [(0, "lesion", 1, 0.75, "accept", "", "model", (0, 3, 0, 3))]}
    want = [(key, *concept) for key in order for concept in expected[key]]  # the rejected nail is left out
    assert len(coco["annotations"]) == len(want)
    for ann_id, (ann, (key, index, phrase, cat, score, decision, comment, provenance, box)) in enumerate(
            zip(coco["annotations"], want), start=1):
        mask = _masks(box)[0]
        label = "lesion" if cat == 1 else "forearm_skin"
        assert ann == {
            "id": ann_id, "image_id": order.index(key) + 1, "category_id": cat, "segmentation": rle_encode(mask),
            "area": float(mask.sum()), "bbox": [float(box[2]), float(box[0]), float(box[3] - box[2]),
                                                float(box[1] - box[0])],
            "iscrowd": 0, "score": score, "mask_file": f"masks/{key}/{ann_id}_{label}.png",
            "attributes": {"decision": decision, "original_phrase": phrase, "comment": comment,
                           "concept_index": index, "provenance": provenance, "edited": provenance != "model",
                           "reviewer": reviews[key].reviewer, "revision": 1}}
        png = np.asarray(Image.open(tmp_path / "out" / ann["mask_file"]))
        assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255} and ((png == 255) == mask).all()
    only_b = json.loads(export_coco(store, tmp_path / "only_b", [B]).read_text())
    assert [img["image_key"] for img in only_b["images"]] == [B] and only_b["images"][0]["id"] == 1
    assert [a["image_id"] for a in only_b["annotations"]] == [1]


def test_zip_export_holds_the_folder_and_nothing_else(tmp_path):
    store = _store(tmp_path)
    archive = export_zip(store, tmp_path / "exports", [A])
    assert re.fullmatch(r"export-\d{8}-\d{6}-\d{6}\.zip", archive.name) and archive.parent == tmp_path / "exports"
    folder = archive.with_suffix("")
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == on_disk == sorted(
            ["annotations.json", f"images/{A}.png", f"masks/{A}/1_lesion.png", f"masks/{A}/2_forearm_skin.png"])
        assert zf.getinfo("annotations.json").compress_type == zipfile.ZIP_DEFLATED
        assert json.loads(zf.read("annotations.json"))["images"][0]["image_key"] == A


def test_rle_round_trip_is_pycocotools_compressed_rle():
    mask = _masks((1, 5, 2, 7))[0]
    rle = rle_encode(mask)
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle == {"size": [H, W], "counts": reference["counts"].decode("ascii")}
    back = rle_decode(rle)
    assert back.dtype == bool and (back == mask).all()


def test_mask_file_names_keep_letters_digits_dash_and_underscore_of_the_label(tmp_path):
    store = ReviewStore(tmp_path / "data")
    labels = ["Forearm Skin", "X-ray burn X", "(scar)", "n" * 70, "痣"]
    concepts = [ConceptReview(0, "nail", 0.3, (0, 0, 1, 1), "reject")] + [  # a rejected concept first: skipped
        ConceptReview(i, "arm", 0.5, (0, 0, 1, 1), "relabel", label=label) for i, label in enumerate(labels, start=1)]
    store.save(A, np.zeros((H, W, 3), np.uint8), _masks(*[(0, 1, 0, 1)] * 6), concepts)
    coco = json.loads(export_coco(store, tmp_path / "out").read_text())
    assert [c["name"] for c in coco["categories"]] == labels
    assert [a["mask_file"] for a in coco["annotations"]] == [
        f"masks/{A}/1_Forearm_Skin.png", f"masks/{A}/2_X-ray_burn_X.png", f"masks/{A}/3_scar.png",
        f"masks/{A}/4_{'n' * 60}.png", f"masks/{A}/5_concept.png"]
    assert all((tmp_path / "out" / a["mask_file"]).is_file() for a in coco["annotations"])


def test_exporting_again_into_the_same_folder_replaces_the_export(tmp_path):
    store = _store(tmp_path)
    export_coco(store, tmp_path / "out", [B])
    path = export_coco(store, tmp_path / "out", [A])
    assert [img["image_key"] for img in json.loads(path.read_text())["images"]] == [A]


def test_annotations_json_is_indented_by_one_space_and_the_export_is_logged(tmp_path, caplog):
    store = _store(tmp_path)
    caplog.set_level(logging.INFO, logger="skinapp.review.export")
    path = export_coco(store, tmp_path / "out")
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=1) and text.startswith('{\n "info": {\n  "description"')
    assert caplog.messages == ["Exported 3 annotations over 2 images"]  # no path: in the app it holds the secret


def test_masks_are_those_of_the_version_the_export_names_when_a_save_lands_during_the_export(tmp_path, monkeypatch):
    store = _store(tmp_path)
    named = store.load(B).version
    copy_photo = store.photo_path

    def photo_path_then_save(key):  # another reviewer saves photo B while its photo is being copied
        path = copy_photo(key)
        if key == B and store.load(B).version == named:
            store.save(B, np.full((H, W, 3), 100, np.uint8), _masks((8, 16, 0, 12)),
                       [ConceptReview(0, "lesion", 0.75, (0, 8, 12, 16), "accept")], reviewer="dr c")
        return path

    monkeypatch.setattr(store, "photo_path", photo_path_then_save)
    coco = json.loads(export_coco(store, tmp_path / "out", [B]).read_text())
    assert store.load(B).version != named and coco["images"][0]["version"] == named
    assert rle_decode(coco["annotations"][0]["segmentation"]).sum() == 9  # B's first mask: rows 0-2 x cols 0-2


def test_rle_encode_takes_a_zero_one_mask_of_any_integer_type():
    mask = _masks((1, 5, 2, 7))[0]
    assert rle_encode(mask.astype(np.int64)) == rle_encode(mask.astype(np.uint8)) == rle_encode(mask)
