"""Importing our own export keeps each photo's review note (with a mention of the import), unless the caller
gives a note; the app's two import paths (the command, the Review tab) keep it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from skinapp.image import content_key
from skinapp.review import ConceptReview, ReviewStore, export_coco, export_zip
from skinapp.review.coco_import import import_coco, main
from skinapp.review.validation import MAX_NOTE_CHARS

H, W = 30, 40


def _photo(seed: int) -> tuple[str, np.ndarray]:
    photo = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return content_key(photo), photo


def _store(path, note: str = "border unclear, see dermoscopy", seed: int = 1) -> tuple[ReviewStore, str]:
    key, photo = _photo(seed)
    store = ReviewStore(path)
    store.save(key, photo, np.ones((1, H, W), bool), [ConceptReview(0, "lesion", 0.5, (0, 0, W, H), "accept")],
               reviewer="dr z", note=note)
    return store, key


def test_our_export_imports_back_with_its_note_and_a_mention_of_the_import(tmp_path):
    """Found by the lead: the note became "imported from COCO" and the exported note was lost."""
    store, key = _store(tmp_path / "data")
    [version] = import_coco(store, export_coco(store, tmp_path / "out")).saved
    assert (version.revision, version.reviewer, version.note) == (
        2, "dr z", "border unclear, see dermoscopy (imported from COCO)")
    again = import_coco(store, export_coco(store, tmp_path / "out2"))  # no second mention: the same version
    assert again.saved == [] and [(r.revision, r.note) for r in again.unchanged] == [
        (2, "border unclear, see dermoscopy (imported from COCO)")]


def test_an_export_zip_into_another_store_keeps_the_note_and_the_callers_note_wins(tmp_path):
    store, key = _store(tmp_path / "data")
    archive = export_zip(store, tmp_path / "exports")
    other = ReviewStore(tmp_path / "other")
    [version] = import_coco(other, archive).saved
    assert (version.revision, version.reviewer, version.note) == (
        1, "dr z", "border unclear, see dermoscopy (imported from COCO)")
    [mine] = import_coco(other, archive, reviewer="cvat", note="second look").saved
    assert (mine.revision, mine.reviewer, mine.note) == (2, "cvat", "second look")
    [empty] = import_coco(other, archive, note="").saved  # an explicit empty note is a note too
    assert (empty.revision, empty.note) == (3, "")


def test_an_image_without_a_note_gets_the_import_mention_only(tmp_path):
    store, key = _store(tmp_path / "data", note="")
    [version] = import_coco(store, export_coco(store, tmp_path / "out")).saved
    assert version.note == "imported from COCO"


def test_a_note_at_the_limit_is_kept_whole_without_the_mention(tmp_path):
    """The store takes notes of at most MAX_NOTE_CHARS characters: the mention is left out rather than cutting the
    reviewer's words or refusing the file."""
    store, key = _store(tmp_path / "data", note="n" * MAX_NOTE_CHARS)
    [version] = import_coco(store, export_coco(store, tmp_path / "out")).saved
    assert version.note == "n" * MAX_NOTE_CHARS


@pytest.mark.parametrize("note", [["a", "b"], {"text": "x"}, 7])
def test_a_note_that_is_not_text_is_refused(tmp_path, note):
    store, key = _store(tmp_path / "data")
    path = export_coco(store, tmp_path / "out")
    coco = json.loads(path.read_text())
    coco["images"][0]["note"] = note
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError) as err:
        import_coco(store, path)
    assert str(err.value) == f"COCO image 1: its note must be text; got {note!r}."
    assert [v.revision for v in store.versions(key)] == [1]
    assert import_coco(store, path, note="checked").saved[0].note == "checked"  # a note given: the file's is unused


def test_the_command_and_the_review_tab_keep_the_note(tmp_path, capsys):
    store, key = _store(tmp_path / "data")
    path = export_coco(store, tmp_path / "out")
    assert main([str(path), "--data-dir", str(store.data_dir)]) == 0
    assert store.load(key).note == "border unclear, see dermoscopy (imported from COCO)"

    from skinapp.ui.workbench_handlers import WorkbenchHandlers

    handlers = WorkbenchHandlers.__new__(WorkbenchHandlers)  # only import_coco: no models, no app
    handlers.bench = SimpleNamespace(store=store)
    status = handlers.import_coco(SimpleNamespace(name=str(path)), "dr y")  # another reviewer: a new version
    assert status == (f"Imported photo `{key[:12]}` as version 3 (1 concept), reviewer 'dr y'. The reviewer is the "
                      "name in the Reviewer box (clear the box before an import to keep the names the file records).")
    assert (store.load(key).reviewer, store.load(key).note) == ("dr y",
                                                                "border unclear, see dermoscopy (imported from COCO)")
    # the same file again, same reviewer: the photo's latest version already says it all
    assert handlers.import_coco(SimpleNamespace(name=str(path)), "dr y") == (
        f"Nothing new: photo `{key[:12]}` unchanged, already version 3.")
