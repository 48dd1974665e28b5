"""The review store's values and messages, and its mask files (mutation survivors of store.py / mask_files.py).

Pure unit tests on a tmp_path store: what a save refuses (the message the UI shows, whole), what a loaded
review holds field by field, where the files are and what the stale sweep keeps.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore

KEY = "cd" * 32


def _photo(h: int = 20, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:8, 3:12] = True
    masks[1, 10:18, 15:28] = True
    return pixels, masks


def test_a_save_without_a_photo_key_is_refused_with_the_fix(tmp_path):
    pixels, masks = _photo()
    for key in ("", "XYZ", "X" * 64, KEY.upper()):
        with pytest.raises(ValueError, match=r"^A review needs the photo's key; analyse a photo first\.$"):
            ReviewStore(tmp_path).save(key, pixels, masks, [])


@pytest.mark.parametrize("pixels, masks, message", [
    (np.zeros((20, 30), np.uint8), np.zeros((1, 20, 30), bool),
     "Expected uint8 pixels [H, W, 3], got uint8 (20, 30)"),
    (np.zeros((20, 30, 4), np.uint8), np.zeros((1, 20, 30), bool),
     "Expected uint8 pixels [H, W, 3], got uint8 (20, 30, 4)"),
    (np.zeros((20, 30, 3), np.float32), np.zeros((1, 20, 30), bool),
     "Expected uint8 pixels [H, W, 3], got float32 (20, 30, 3)"),
    (np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), bool), r"Masks (20, 30) do not match the photo (20x30)."),
    (np.zeros((20, 30, 3), np.uint8), np.zeros((1, 30, 20), bool),
     r"Masks (1, 30, 20) do not match the photo (20x30)."),
])
def test_pixels_and_masks_of_the_wrong_shape_are_refused_by_name(tmp_path, pixels, masks, message):
    store = ReviewStore(tmp_path)
    with pytest.raises(ValueError) as err:
        store.save(KEY, pixels, masks, [])
    assert str(err.value) == message
    assert store.load(KEY) is None


def _concept(index=0, decision="accept", **kw) -> ConceptReview:
    return ConceptReview(index, kw.pop("phrase", "lesion"), 0.5, kw.pop("box", (3, 2, 12, 8)), decision, **kw)


@pytest.mark.parametrize("concepts, message", [
    ([_concept(decision="maybe")],
     "Concept 0: decision must be one of pending, accept, reject, relabel; got 'maybe'."),
    ([_concept(1, "relabel", label="  ")], "Concept 1 ('lesion'): 'relabel' needs a new label."),
    ([_concept(decision="relabel", label="x" * 201)], "Concept 0: label (200) or comment (5000 characters) too long."),
    ([_concept(decision="relabel", label="nevus\nsecret")],  # found by a new user: stored as typed
     "Concept 0 ('lesion'): a new label cannot hold line breaks, tabs or other control characters."),
    ([_concept(label="nevus")],  # found by a new user: kept silently, never used
     "Concept 0 ('lesion'): a new label is used only with 'relabel' (the decision is 'accept'): choose 'relabel' "
     "or clear the label."),
    ([_concept(1, "reject", label="nevus")], "Concept 1 ('lesion'): a new label is used only with 'relabel' (the "
                                              "decision is 'reject'): choose 'relabel' or clear the label."),
    ([_concept(comment="x" * 5001)], "Concept 0: label (200) or comment (5000 characters) too long."),
    ([_concept(provenance="guessed")],
     "Concept 0: provenance must be one of model, refined, painted, added, imported; got 'guessed'."),
    ([_concept(0), _concept(0, "reject")], "Each concept can be reviewed only once per save."),
    ([_concept(2)], "Concept indices must be in 0..1."),
    ([_concept(-1)], "Concept indices must be in 0..1."),
    ([_concept(1, box=(40, 30, 50, 35))],
     "Concept 1 ('lesion'): its box [40.0, 30.0, 50.0, 35.0] has no area inside the 30x20 photo."),
])
def test_a_refused_verdict_says_which_concept_and_why(tmp_path, concepts, message):
    store = ReviewStore(tmp_path)
    pixels, masks = _photo()
    with pytest.raises(ValueError) as err:
        store.save(KEY, pixels, masks, concepts)
    assert str(err.value) == message
    assert store.load(KEY) is None and not store.photo_path(KEY).exists()


def test_limits_are_inclusive_and_verdicts_are_normalised(tmp_path):
    store = ReviewStore(tmp_path)
    pixels, masks = _photo()
    saved = store.save(KEY, pixels, masks, [
        ConceptReview(0, "lesion", 0.75, (3, 2, 12, 8), " Relabel ", label="  nevus ", comment="c" * 5000,
                      provenance=" Painted "),
        ConceptReview(1, "arm", 1, (-5, 10, 99, 18), None, label="l" * 200, comment=None, provenance=None),
    ], reviewer="  dr a ", note=" note  ", prompts=("lesion", "arm"))
    c0, c1 = saved.concepts
    assert (c0.decision, c0.label, c0.provenance, c0.final_label) == ("relabel", "nevus", "painted", "nevus")
    assert len(c0.comment) == 5000 and c0.score == 0.75
    # a missing decision / provenance / comment is the default; the box is clipped to the 30x20 photo
    assert (c1.decision, c1.provenance, c1.comment, c1.final_label) == ("pending", "model", "", "")
    assert c1.box == (0.0, 10.0, 30.0, 18.0) and len(c1.label) == 200
    assert (saved.reviewer, saved.note, saved.prompts) == ("dr a", "note", ["lesion", "arm"])
    assert (saved.width, saved.height, saved.image_key) == (30, 20, KEY)


def test_amend_refuses_unknown_concepts_by_index_and_keeps_the_masks(tmp_path):
    store = ReviewStore(tmp_path)
    pixels, masks = _photo()
    first = store.save(KEY, pixels, masks, [_concept(0), _concept(1, "reject")])
    with pytest.raises(ValueError) as err:
        store.amend(KEY, [_concept(1), _concept(5), _concept(7)])
    assert str(err.value) == "Concepts [5, 7] are not part of this review."
    assert store.load(KEY).revision == 1
    amended = store.amend(KEY, [_concept(1, " Relabel ", label=" scar ", comment=" healed ")],
                          reviewer=" dr b ", note=" second ")
    assert (amended.revision, amended.reviewer, amended.note, amended.version) == (2, "dr b", "second", first.version)
    assert [(c.decision, c.label, c.comment) for c in amended.concepts] == [("accept", "", ""),
                                                                           ("relabel", "scar", "healed")]
    assert amended.updated_at >= first.updated_at and amended.created_at == first.created_at
    assert np.array_equal(store.load_mask(KEY, 1), masks[1])
    # an amendment without a reviewer or note records none (it does not inherit the previous version's)
    third = store.amend(KEY, [_concept(0, "reject")])
    assert (third.revision, third.reviewer, third.note) == (3, "", "")
    assert [(v.revision, v.reviewer) for v in store.versions(KEY)] == [(3, ""), (2, "dr b"), (1, "")]


def test_a_missing_review_or_mask_is_an_error_not_an_empty_mask(tmp_path):
    store = ReviewStore(tmp_path)
    with pytest.raises(ValueError) as err:
        store.load_mask(KEY, 0)
    assert str(err.value) == "There is no saved review of this photo."
    with pytest.raises(ValueError) as err:
        store.amend(KEY, [])
    assert str(err.value) == "There is no saved review of this photo to amend."
    assert store.load(KEY) is None and store.load_version(KEY, 1) is None and store.versions(KEY) == []
    pixels, masks = _photo()
    store.save(KEY, pixels, masks, [_concept(0)])  # concept 1 was not reviewed: no file for it
    with pytest.raises(FileNotFoundError, match=r"[\\/]1\.png"):
        store.load_mask(KEY, 1)


def test_list_reviews_is_most_recently_updated_first(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from skinapp.review import store as store_module

    clock = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: next(clock)))  # the store's clock only
    store = ReviewStore(tmp_path)
    pixels, masks = _photo()
    a, b = "a1" * 32, "b2" * 32
    store.save(a, pixels, masks, [_concept(0)])
    store.save(b, pixels, masks, [_concept(0)])
    store.save(a, pixels, masks, [_concept(1)])
    assert [(r.image_key, r.updated_at, r.created_at) for r in store.list_reviews()] == [(a, 300.0, 100.0),
                                                                                        (b, 200.0, 200.0)]


def test_the_data_directory_comes_from_the_environment_or_data_reviews(tmp_path, monkeypatch):
    from pathlib import Path

    from skinapp.review import default_data_dir

    monkeypatch.setenv("SKINAPP_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    assert ReviewStore().db_path == tmp_path / "elsewhere" / "reviews.sqlite3"
    monkeypatch.setenv("SKINAPP_DATA_DIR", "")
    assert default_data_dir() == Path("data/reviews")
    monkeypatch.delenv("SKINAPP_DATA_DIR")
    assert default_data_dir() == Path("data/reviews")


def _close_and_report(store: ReviewStore):
    try:
        store.close()
    except Exception as exc:  # reported to the test thread
        return exc
    return None


def test_close_releases_the_connection_and_the_store_opens_it_again(tmp_path):
    store = ReviewStore(tmp_path)
    db = store._connection()
    store.close()
    with pytest.raises(Exception, match="closed"):
        db.execute("SELECT 1")
    store.close()  # twice is harmless
    import threading

    errors = []
    worker = threading.Thread(target=lambda: errors.append(_close_and_report(store)))
    worker.start()
    worker.join()
    assert errors == [None], "close() in a thread that never opened a connection must do nothing"
    pixels, masks = _photo()
    assert store.save(KEY, pixels, masks, [_concept(0)]).revision == 1


# -- mask files -------------------------------------------------------------------------------------------------


def test_files_live_where_the_layout_says(tmp_path):
    from skinapp.review.mask_files import MaskFiles

    files = MaskFiles(str(tmp_path))
    assert files.photo_path(KEY) == tmp_path / "photos" / f"{KEY}.png"
    assert files.version_dir(KEY) == tmp_path / "masks" / KEY
    assert files.mask_path(KEY, 3) == tmp_path / "masks" / KEY / "3.png"
    assert files.mask_path(KEY, 3, "v1") == tmp_path / "masks" / KEY / "v1" / "3.png"
    store = ReviewStore(tmp_path)  # the store names the same files
    assert (store.mask_path(KEY, 3), store.mask_path(KEY, 3, "v1")) == (files.mask_path(KEY, 3),
                                                                          files.mask_path(KEY, 3, "v1"))
    assert (store.photo_path(KEY), store.version_dir(KEY, "v1")) == (files.photo_path(KEY),
                                                                     files.version_dir(KEY, "v1"))
    pixels, masks = _photo()
    version = files.write_save(KEY, pixels, masks, [1])
    assert len(version) == 32 and int(version, 16) >= 0
    assert sorted(p.name for p in files.version_dir(KEY, version).iterdir()) == ["1.png"]  # only the indices asked
    from PIL import Image

    png = Image.open(files.mask_path(KEY, 1, version))
    assert png.mode == "L" and set(np.unique(np.asarray(png))) == {0, 255}
    assert np.array_equal(files.read_mask(KEY, 1, version), masks[1])
    assert np.array_equal(files.read_photo(KEY), pixels)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_mask_pixels_above_half_grey_are_inside_and_a_grey_photo_is_read_as_rgb(tmp_path):
    from PIL import Image

    from skinapp.review.mask_files import MaskFiles

    files = MaskFiles(tmp_path)
    files.mask_path(KEY, 0, "v").parent.mkdir(parents=True)
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(files.mask_path(KEY, 0, "v"))
    assert files.read_mask(KEY, 0, "v").tolist() == [[False, False, True, True]]
    files.photo_path(KEY).parent.mkdir(parents=True)
    Image.fromarray(np.array([[7, 200]], np.uint8)).save(files.photo_path(KEY))
    assert files.read_photo(KEY).tolist() == [[[7, 7, 7], [200, 200, 200]]]


def test_a_write_that_fails_leaves_neither_a_temporary_file_nor_the_version_folder(tmp_path, monkeypatch):
    from skinapp.review import mask_files

    files = mask_files.MaskFiles(tmp_path)
    pixels, masks = _photo()
    calls = []
    real_replace = mask_files.os.replace

    def failing_second_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(mask_files.os, "replace", failing_second_replace)
    with pytest.raises(OSError, match="disk full"):
        files.write_save(KEY, pixels, masks, [0, 1])
    assert [p.name for p in files.version_dir(KEY).iterdir()] == []  # the half-written version is gone
    assert [p.name for p in (tmp_path / "photos").iterdir()] == [f"{KEY}.png"]  # the photo is whole
    monkeypatch.setattr(mask_files.os, "replace", real_replace)

    def failing_save(*args, **kwargs):
        raise OSError("cannot encode")

    monkeypatch.setattr(mask_files.Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="cannot encode"):
        mask_files.atomic_write_png(tmp_path / "x" / "y.png", masks[0].astype(np.uint8))
    assert list((tmp_path / "x").iterdir()) == []


def test_the_stale_sweep_keeps_named_young_temporary_and_legacy_files(tmp_path):
    import os
    import time

    from skinapp.review.mask_files import MaskFiles

    files = MaskFiles(tmp_path)
    files.remove_stale(KEY, set(), 0.0)  # no folder yet: nothing to do
    folder = files.version_dir(KEY)
    old = time.time() - 1000
    for name in ("kept", "stale", ".tmp-in-flight", "young"):
        (folder / name).mkdir(parents=True)
        (folder / name / "0.png").write_bytes(b"png")
    for name in ("0.png", ".tmp-x.png"):
        (folder / name).write_bytes(b"legacy")
    for entry in folder.iterdir():
        if entry.name != "young":
            os.utime(entry, (old, old))
    files.remove_stale(KEY, {"kept", ""}, 500.0)
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-in-flight", ".tmp-x.png", "0.png", "kept", "young"]
    files.remove_stale(KEY, {"kept"}, 500.0)  # "" not named: the legacy flat file is stale too
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-in-flight", ".tmp-x.png", "kept", "young"]
    files.remove_stale(KEY, set(), 0.0)
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-in-flight", ".tmp-x.png"]


def test_every_version_keeps_its_own_size_and_prompts(tmp_path):
    store = ReviewStore(tmp_path)
    pixels, masks = _photo(h=20, w=30)
    store.save(KEY, pixels, masks, [_concept(0)], prompts=["lesion"])
    store.save(KEY, pixels, masks, [_concept(0)], prompts=["lesion", "arm"])
    newest, oldest = store.versions(KEY)
    assert [(v.revision, v.width, v.height, v.prompts) for v in (newest, oldest)] == [
        (2, 30, 20, ["lesion", "arm"]), (1, 30, 20, ["lesion"])]
    first = store.load_version(KEY, 1)
    assert (first.width, first.height, first.prompts) == (30, 20, ["lesion"])
    [latest] = store.latest_by_reviewer()
    assert (latest.revision, latest.width, latest.height) == (2, 30, 20)


def test_masks_as_0_255_bytes_are_stored_as_masks_and_the_save_is_logged_once(tmp_path, caplog):
    import logging

    store = ReviewStore(tmp_path)
    pixels, masks = _photo()
    as_png_bytes = masks.astype(np.uint8) * 255  # e.g. masks read back from PNG files
    with caplog.at_level(logging.INFO, logger="skinapp.review.store"):
        saved = store.save(KEY, pixels, as_png_bytes, [_concept(0), _concept(1, "reject")])
    assert [r.getMessage() for r in caplog.records if r.name == "skinapp.review.store"] == [
        f"Saved review of {KEY[:12]} (revision 1, 2 concepts)"]
    for i in range(2):
        assert np.array_equal(store.load_mask(KEY, i), masks[i])
    assert (saved.reviewer, saved.note, saved.prompts) == ("", "", [])  # nothing given: nothing recorded


def test_a_nested_data_directory_is_created_and_each_thread_keeps_one_connection(tmp_path):
    import threading

    store = ReviewStore(tmp_path / "a" / "b" / "reviews")
    assert store.db_path.is_file() and store.db_path.parent == tmp_path / "a" / "b" / "reviews"
    assert store._connection() is store._connection()  # reused within a thread (WAL, pragmas set once)
    other = []
    worker = threading.Thread(target=lambda: other.append(store._connection()))
    worker.start()
    worker.join()
    assert other[0] is not store._connection()  # sqlite3 connections are not shared between threads


def test_the_temporary_file_is_made_next_to_its_target_not_in_the_system_temp_dir(tmp_path, monkeypatch):
    """Next to the target, the rename is atomic (same filesystem); the system temp dir may be elsewhere or gone."""
    import tempfile

    from skinapp.review.mask_files import atomic_write_png

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-dir"))
    target = tmp_path / "data" / "photos" / "p.png"
    atomic_write_png(target, np.full((4, 5, 3), 9, np.uint8))
    assert sorted(p.name for p in target.parent.iterdir()) == ["p.png"]


def test_a_photo_that_cannot_be_written_reports_its_own_error(tmp_path, monkeypatch):
    """The photo is written before the version folder exists; cleaning up the (absent) folder must not hide
    the real error behind a FileNotFoundError."""
    from skinapp.review import mask_files

    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mask_files.os, "replace", disk_full)
    pixels, masks = _photo()
    with pytest.raises(OSError) as err:
        mask_files.MaskFiles(tmp_path).write_save(KEY, pixels, masks, [0])
    assert str(err.value) == "disk full"
    assert not (tmp_path / "masks").exists() and list((tmp_path / "photos").iterdir()) == []


def test_the_stale_sweep_goes_on_when_another_process_removed_an_entry_first(tmp_path, monkeypatch):
    import os
    import shutil
    import time

    from skinapp.review import mask_files

    files = mask_files.MaskFiles(tmp_path)
    old = time.time() - 1000
    for name in ("a", "b", "c"):
        (files.version_dir(KEY) / name).mkdir(parents=True)
        os.utime(files.version_dir(KEY) / name, (old, old))
    calls, real_rmtree = [], shutil.rmtree

    def raced(path):  # the first folder is removed by a concurrent sweep just before this one gets to it
        calls.append(path)
        real_rmtree(path)
        if len(calls) == 1:
            raise FileNotFoundError(path)

    monkeypatch.setattr(mask_files.shutil, "rmtree", raced)
    files.remove_stale(KEY, set(), 500.0)
    assert list(files.version_dir(KEY).iterdir()) == [] and len(calls) == 3


@pytest.mark.parametrize(("reviewer", "note", "message"), [
    ("x" * 101, "", "A reviewer name has at most 100 characters; this one has 101."),
    ("dr a\nSELECT", "", "A reviewer name cannot hold line breaks, tabs or other control characters."),
    ("dr\ta", "", "A reviewer name cannot hold line breaks, tabs or other control characters."),
    ("dr a", "n" * 5001, "A note has at most 5000 characters; this one has 5001."),
])
def test_overlong_or_control_character_signatures_are_refused_on_save_and_amend(tmp_path, reviewer, note, message):
    store = ReviewStore(tmp_path / "data")
    pixels, masks = _photo()
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        store.save(KEY, pixels, masks, [_concept(0)], reviewer=reviewer, note=note)
    assert store.load(KEY) is None
    store.save(KEY, pixels, masks, [_concept(0)], reviewer="  " + "y" * 100 + " ", note="  " + "n" * 5000)
    assert store.load(KEY).reviewer == "y" * 100  # the limits count the stripped text
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        store.amend(KEY, [_concept(0)], reviewer=reviewer, note=note)
    assert store.load(KEY).revision == 1
