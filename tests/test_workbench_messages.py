"""The mask workbench's handlers and messages, called as plain functions on a saved review (no models: the
draft starts from the review store, clicks refine with GrabCut): every status line and refusal whole, the
concept list, the brush canvas, the rendered view, the version list and the API's JSON."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.export import rle_decode
from skinapp.review.workbench import Workbench
from skinapp.ui import Handlers
from skinapp.ui.workbench_handlers import WorkbenchHandlers
from skinapp.ui.workbench_view import OPACITY, SELECTED_COLOUR, render

KEY = "e5" * 32
H, W = 40, 60


def _saved(store: ReviewStore, reviewer: str = "") -> None:
    pixels = np.full((H, W, 3), 120, np.uint8)
    pixels[10:30, 20:45] = (60, 30, 20)  # a dark "lesion" on lighter skin
    masks = np.zeros((2, H, W), bool)
    masks[0, 10:30, 20:45] = True
    masks[1, 0:8, 0:10] = True
    store.save(KEY, pixels, masks, [ConceptReview(0, "lesion", 0.9, (20, 10, 45, 30), "accept"),
                                    ConceptReview(1, "arm", 0.4, (0, 0, 10, 8), "reject")], reviewer=reviewer)


@pytest.fixture
def bench(tmp_path):
    store = ReviewStore(tmp_path / "data")
    _saved(store)
    handlers = Handlers(None, store, export_dir=tmp_path / "exports")
    return handlers, WorkbenchHandlers(Workbench(None, store), handlers)


def _who(name: str = "s1") -> SimpleNamespace:
    return SimpleNamespace(session_hash=name, headers={})


def _refused(handlers: Handlers, action: str, call, message: str) -> None:
    """The call raises gr.Error with ``message`` and the session's failure text shows it."""
    with pytest.raises(gr.Error) as err:
        call()
    assert err.value.message == message
    shown = html.escape(message)
    assert handlers.error_text(action)(_who()) == f'<div class="action-error" role="alert">&#10060; {shown}</div>'


def test_start_lists_the_concepts_and_says_where_the_draft_comes_from(bench):
    handlers, wb = bench
    for blank in ("", "  ", None):
        empty = wb.start(blank, _who())
        assert empty[0] is None and empty[1].choices == [] and empty[1].value is None and empty[2] == ""
    image, concept, status = wb.start(KEY.upper(), _who())
    assert status == f"Editing 2 concepts of photo `{KEY[:12]}` (saved version 1)."
    assert concept.choices == [("#0 lesion (model)", "0"), ("#1 arm (model)", "1")] and concept.value == "0"
    assert image.label == f"Photo {KEY[:12]}: click to refine concept #0"
    _, concept, status = wb.show(KEY, "1", _who())
    assert concept.value == "1" and status == ""
    _, concept, _ = wb.show(KEY, "7", _who())  # not a concept of the photo: the first one is selected
    assert concept.value == "0"
    _refused(handlers, "workbench", lambda: wb.show("abc", "0", _who()),
             "Analyse a photo (or reopen a saved review) first: there is no photo key.")
    _refused(handlers, "workbench", lambda: wb.show("0" * 64, "0", _who()),
             f"Photo {'0' * 12} has no analysis in memory and no saved review.")


def test_edit_status_lines_and_undo_redo(bench):
    handlers, wb = bench
    who = _who()
    _, concept, status = wb.delete(KEY, "1", who)
    assert status == "Deleted concept #1 (Undo brings it back)." and concept.choices == [("#0 lesion (model)", "0")]
    _, concept, status = wb.undo(KEY, "1", who)
    assert status == "Undone." and concept.choices == [("#0 lesion (model)", "0"), ("#1 arm (model)", "1")]
    assert concept.value == "1"
    _refused(handlers, "workbench", lambda: wb.undo(KEY, "1", who), "Nothing to undo.")
    _, concept, status = wb.redo(KEY, "0", who)
    assert status == "Redone." and [v for _, v in concept.choices] == ["0"]
    _refused(handlers, "workbench", lambda: wb.redo(KEY, "0", who), "Nothing to redo.")
    _refused(handlers, "workbench", lambda: wb.delete(KEY, "x", who), "Choose a concept by its number; got 'x'.")
    _refused(handlers, "workbench", lambda: wb.delete(KEY, "1", who), f"There is no concept #1 on photo {KEY[:12]}.")


def test_add_reads_four_numbers_and_one_phrase(bench):
    handlers, wb = bench
    who = _who()
    for text in ("", "1, 2, 3", "a b c d", "1 2 3 4 5"):
        _refused(handlers, "workbench", lambda text=text: wb.add(KEY, text, "mole", who),
                 "Give the new concept's box as four numbers: x0, y0, x1, y1 (pixels).")
    _refused(handlers, "workbench", lambda: wb.add(KEY, "70, 50, 80, 60", "mole", who),
             "The box [70.0, 50.0, 80.0, 60.0] has no area inside the 60x40 photo.")
    _refused(handlers, "workbench", lambda: wb.add(KEY, "1, 1, 9, 9", "mole . scar", who),
             "Name the new concept with one phrase (e.g. 'lesion'); got 2.")
    _, concept, status = wb.add(KEY, "-5, 20.5, 15, 39", " Mole ", who)
    assert status == "Added concept #2 'mole'."
    # the concept just added is the one selected, so the next click refines it
    assert concept.value == "2" and concept.choices[-1] == ("#2 mole (added)", "2")
    added = wb.bench.draft("s1", KEY).concept(2)
    assert added.box == (0.0, 20.5, 15.0, 39.0) and (added.decision, added.score) == ("pending", 1.0)


def test_paint_takes_the_brush_layer_and_the_canvas_shows_the_mask(bench):
    handlers, wb = bench
    who = _who()
    for editor in (None, {}, {"layers": []}, {"layers": [None]}):
        _refused(handlers, "workbench", lambda editor=editor: wb.paint(KEY, "0", editor, who),
                 "Paint the concept on the brush layer first.")
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[5:9, 5:50, :3] = 255  # colour without alpha is not paint on an RGBA layer
    rgba[2:6, 3:7, 3] = 80
    _, _, status = wb.paint(KEY, "0", {"layers": [rgba]}, who)
    assert status == "Painted concept #0."
    painted = wb.bench.draft("s1", KEY).concept(0)
    assert painted.provenance == "painted" and painted.mask.sum() == 16 and painted.mask[2:6, 3:7].all()
    grey = np.zeros((H, W), np.uint8)
    grey[30:35, 40:42] = 1
    wb.paint(KEY, "1", {"layers": [grey]}, who)
    assert wb.bench.draft("s1", KEY).concept(1).mask.sum() == 10
    _refused(handlers, "workbench", lambda: wb.paint(KEY, "0", {"layers": [np.ones((H, W + 1), np.uint8)]}, who),
             "The painted mask is 61x40; the photo is 60x40.")
    canvas = wb.brush_canvas(KEY, "0", who)
    assert canvas["composite"] is None and canvas["background"].shape == (H, W, 3)
    [layer] = canvas["layers"]
    assert layer.dtype == np.uint8 and layer.shape == (H, W, 4)  # an RGBA image the editor shows as drawn
    assert (layer[2:6, 3:7] == (*SELECTED_COLOUR, 255)).all() and layer[..., 3].sum() == 16 * 255
    assert wb.brush_canvas("nope", "0", who) is None and wb.brush_canvas(KEY, "9", who) is None


def test_a_click_says_which_concept_where_and_how_the_mask_changed(bench):
    _, wb = bench
    who = _who()
    before = int(wb.bench.draft("s1", KEY).concept(0).mask.sum())
    _, _, status = wb.click(KEY, "0", "negative", SimpleNamespace(index=[30.4, 20.6]), who)
    after = wb.bench.draft("s1", KEY).concept(0)
    assert status == f"Concept #0: negative click at (30, 21); mask {before} -> {int(after.mask.sum())} px."
    assert after.points == ((30.4, 20.6, 0),) and after.provenance == "refined"
    _, _, status = wb.click(KEY, "0", "positive", SimpleNamespace(index=[25, 15]), who)
    assert status.startswith("Concept #0: positive click at (25, 15); mask ")


def test_versions_are_listed_and_opened_by_number(bench):
    handlers, wb = bench
    assert wb.version_choices("bad").choices == [] and wb.version_choices("bad").value is None
    _saved(wb.bench.store, reviewer="dr b")
    versions = wb.version_choices(KEY)
    assert versions.choices == [("v2 \u00b7 dr b \u00b7 2 concepts", "2"),
                                ("v1 \u00b7 (unnamed) \u00b7 2 concepts", "1")]
    assert versions.value == "2"
    _refused(handlers, "workbench", lambda: wb.open_version(KEY, None, _who()), "Choose a saved version first.")
    _refused(handlers, "workbench", lambda: wb.open_version(KEY, "7", _who()),
             f"Photo {KEY[:12]} has no analysis in memory and no saved review revision 7.")
    assert wb.open_version(KEY, "1", _who())[2] == "Opened version 1: edits start from it."
    _refused(handlers, "import_coco", lambda: wb.import_coco(None, "", _who()), "Choose a COCO JSON file first.")


def test_save_refuses_an_empty_draft_and_a_photo_never_seen(bench):
    handlers, wb = bench
    who = _who()
    wb.delete(KEY, "0", who)
    wb.delete(KEY, "1", who)
    _refused(handlers, "save_review", lambda: wb.save(KEY, None, "", "", who),
             "There are no concepts to save: add one or undo the deletions.")
    with pytest.raises(ValueError) as err:
        wb.bench.pixels("0" * 64)
    assert str(err.value) == (f"Photo {'0' * 12} is neither in the app's memory nor in a saved review; "
                              "analyse it first.")


def test_render_outlines_every_concept_and_fills_the_selected_one():
    from skinapp.review.workbench import Draft, DraftConcept

    pixels = np.full((H, W, 3), 100, np.uint8)
    a = np.zeros((H, W), bool)
    a[10:30, 10:30] = True
    b = np.zeros((H, W), bool)
    b[5:15, 40:55] = True
    draft = Draft(KEY, (H, W), (DraftConcept(0, "lesion", 0.9, (10, 10, 30, 30), a, points=((20, 20, 1),)),
                                DraftConcept(1, "arm", 0.5, (40, 5, 55, 15), b, points=((47, 10, 0),))))
    out = render(pixels, draft, "1")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and (pixels == 100).all()  # a copy
    assert tuple(out[10, 20]) == (255, 255, 255)  # outline of the unselected concept, white
    assert tuple(out[20, 20]) == (100, 100, 100)  # inside it: untouched (its click is not drawn)
    fill = tuple(int(v) for v in (np.float32(100) * (1 - OPACITY) + np.array(SELECTED_COLOUR, np.float32) * OPACITY))
    assert tuple(out[6, 41]) == SELECTED_COLOUR  # the selected concept's outline, 2 px
    assert tuple(out[12, 50]) == fill  # its inside, blended
    assert tuple(out[10, 47]) == (220, 0, 0)  # its negative click, red (radius 3 on a 60 px photo)
    assert tuple(out[7, 47]) == (255, 255, 255)  # the click's white rim
    positive = render(pixels, draft, 0)
    assert tuple(positive[20, 20]) == (0, 200, 0) and tuple(positive[12, 50]) == (100, 100, 100)
    assert (render(pixels, draft, None)[12, 50] == 100).all()


def test_api_json_versions_with_masks_and_save(bench):
    _, wb = bench
    api = wb.api_functions()
    who = _who("client")
    assert api["versions"](KEY)[0]["concepts"][0] == {"index": 0, "phrase": "lesion", "decision": "accept",
                                                      "label": "", "comment": "", "provenance": "model"}
    [v] = api["versions"](KEY, with_masks=True)
    assert (v["revision"], v["reviewer"], v["note"]) == (1, "", "")
    lesion = rle_decode(v["concepts"][0]["mask"])
    assert lesion[10:30, 20:45].all() and lesion.sum() == 500
    out = api["delete_concept"](KEY, 1, request=who)
    assert (out["photo_key"], out["height"], out["width"], out["source"]) == (KEY, H, W, "revision 1")
    [lesion_json] = out["concepts"]
    assert {k: v for k, v in lesion_json.items() if k != "mask"} == {
        "index": 0, "phrase": "lesion", "box": [20.0, 10.0, 45.0, 30.0], "provenance": "model", "decision": "accept",
        "clicks": []}
    assert rle_decode(lesion_json["mask"]).sum() == 500
    clicked = api["refine"](KEY, 0, 30, 20, positive=False, request=who)["concepts"][0]
    assert (clicked["clicks"], clicked["provenance"]) == ([[30.0, 20.0, 0]], "refined")
    api["undo_edit"](KEY, request=who)
    assert api["undo_edit"](KEY, request=who)["concepts"][1]["phrase"] == "arm"
    wb.bench.set_verdict("client", KEY, 0, "accept", "", "sharp border")
    saved = api["save_version"](KEY, reviewer="api", note="second look", request=who)
    assert saved == {"photo_key": KEY, "revision": 2, "provenance": {"0": "model", "1": "model"}}
    assert (api["versions"](KEY)[0]["reviewer"], api["versions"](KEY)[0]["note"]) == ("api", "second look")
    assert api["versions"](KEY)[0]["concepts"][0]["comment"] == "sharp border", "found by a new user: left out"
    with pytest.raises(gr.Error) as err:
        api["undo_edit"](KEY, request=_who("fresh"))
    assert err.value.message == "Nothing to undo."
    assert api["agreement"]() == {"lines": ["No photo has been reviewed by two or more reviewers.",
                                            "Versions saved without a reviewer name are not compared (1 photo)."],
                                  "pairs": []}, "the unnamed first version is nobody's: not compared, and said so"
    api["save_version"](KEY, reviewer="dr b", request=who)
    assert api["agreement"]() == {  # api and dr b saved the same draft: they agree on both concepts
        "lines": ["api vs dr b: 1 photo, 2 concepts, mean mask IoU 1.000, Cohen's kappa 1.000 over 2 decided",
                  "Versions saved without a reviewer name are not compared (1 photo)."],
        "pairs": [{"reviewer_a": "api", "reviewer_b": "dr b", "n_photos": 1, "n_concepts": 2, "n_decided": 2,
                   "mean_iou": 1.0, "kappa": 1.0}]}


@pytest.mark.parametrize(("concept", "x", "y", "positive", "message"), [
    (1.5, 30, 20, True, "Choose a concept by its number; got 1.5."),
    (True, 30, 20, True, "Choose a concept by its number; got True."),
    (0, "abc", 20, True, "x must be a number of pixels; got 'abc'."),
    (0, 30, float("nan"), True, "y must be a number of pixels; got nan."),
    (0, 30, 20, "no", "positive is true (part of the concept) or false (not); got 'no'."),
    (0, W, 20, True, f"The click (60, 20) is outside the {W}x{H} photo."),
    (0, 30, -1, True, f"The click (30, -1) is outside the {W}x{H} photo."),
])
def test_api_clicks_that_name_no_concept_pixel_or_side_are_refused(bench, concept, x, y, positive, message):
    """Found by a new user: concept 1.5 refined concept #1, positive="no" counted as a positive click, and
    x="abc" came back as Python's own float() message."""
    _, wb = bench
    api = wb.api_functions()
    with pytest.raises(gr.Error) as err:
        api["refine"](KEY, concept, x, y, positive=positive, request=_who("client"))
    assert err.value.message == message
    assert api["refine"](KEY, 0, W - 1, 0, positive=False, request=_who("client"))["concepts"][0]["clicks"] == [
        [W - 1.0, 0.0, 0]], "a refused click must leave no trace, and the photo's last pixel is inside"


def test_api_versions_take_the_short_key_the_screen_shows_and_edits_say_why_they_need_the_whole_key(bench):
    """Found by a new user: /versions refused the key prefix the screen shows (and /open_review takes), with
    "Analyse a photo first: there is no photo key"."""
    _, wb = bench
    api = wb.api_functions()
    assert api["versions"](KEY[:12]) == api["versions"](KEY) and api["versions"](KEY[:8].upper())
    with pytest.raises(gr.Error) as err:
        api["refine"](KEY[:12], 0, 30, 20, positive=True, request=_who("client"))
    assert err.value.message == (f"Photo key {KEY[:12]} is cut short: edits need the whole key (64 hexadecimal "
                                 "characters; the screen shows the first 12), as /analyze and /open_review return it.")
    with pytest.raises(gr.Error, match="There is no saved review of photo 0123abcd"):
        api["versions"]("0123abcd")


def test_api_refusals_log_no_typed_phrase(bench, caplog):
    _, wb = bench
    api = wb.api_functions()
    with caplog.at_level("INFO", logger="skinapp.ui.workbench_handlers"), pytest.raises(gr.Error) as err:
        api["add_concept"](KEY, 1, 1, 20, 20, "0451-7788", request=_who("client"))
    assert "'0451-7788'" in err.value.message
    assert caplog.messages and not [m for m in caplog.messages if "0451" in m]
    assert caplog.messages[0].startswith("add_concept refused: Name the new concept")


def test_the_agreement_csv_needs_two_reviewers_and_says_so(bench):
    from skinapp.ui.agreement_handlers import AgreementHandlers

    handlers, wb = bench
    panel = AgreementHandlers(wb.bench.store, handlers._refuse, handlers.export_dir, handlers.export_owners)
    _refused(handlers, "agreement", lambda: panel.export_csv(_who()),
             "No photo has been reviewed by two or more reviewers yet.")


def test_edits_stay_in_the_session_that_made_them_and_leave_the_callers_mask_alone(bench):
    _, wb = bench
    wb.bench.set_verdict("s1", KEY, 0, "relabel", "naevus", "looks benign")
    mine = wb.bench.draft("s1", KEY).concept(0)
    assert (mine.decision, mine.label, mine.comment) == ("relabel", "naevus", "looks benign")
    assert wb.bench.draft("s2", KEY).concept(0).decision == "accept"  # another session's draft is untouched
    painted = np.zeros((H, W), bool)
    painted[1:4, 1:4] = True
    wb.bench.paint("s1", KEY, 0, painted)
    painted[0, 0] = True  # the caller's array is still its own (the draft keeps a frozen copy)
    assert wb.bench.draft("s1", KEY).concept(0).mask.sum() == 9


def test_set_decision_refuses_what_save_refuses_next_to_it_and_a_later_success_replaces_the_message(bench):
    handlers, wb = bench
    handlers.analyzer = SimpleNamespace(analyses_of=lambda key: [])  # nothing in memory: Save amends the review
    who = _who()
    table = handlers.open_review(KEY, who)[1]
    before = table.copy()
    save_says = "Concept 1 ('arm'): a new label is used only with 'relabel' (the decision is 'accept'): choose " \
                "'relabel' or clear the label."
    bad = table.copy()
    bad.loc[1, ["decision", "new label"]] = ["accept", "melanoma"]
    _refused(handlers, "save_review", lambda: wb.save(KEY, bad, "dr a", "", who), save_says)
    _refused(handlers, "set_decision", lambda: wb.set_decision(table, "1", "accept", "melanoma", "", who), save_says)
    assert table.equals(before)  # the screen's table is not touched by a refusal
    _refused(handlers, "set_decision", lambda: wb.set_decision(table, None, "accept", "", "", who),
             "Choose a concept first.")
    _refused(handlers, "set_decision", lambda: wb.set_decision(table, "7", "accept", "", "", who),
             "There is no concept #7 in this review.")
    frame, status = wb.set_decision(table, "1", "Relabel", " melanoma ", "dark rim", who)
    assert status == "Concept #1 ('arm'): relabel as 'melanoma'. Press Save to store the review."
    assert frame.values.tolist() == [[0, "lesion", 0.9, "accept", "", ""], [1, "arm", 0.4, "relabel", "melanoma",
                                                                           "dark rim"]]
    assert wb.set_decision(frame, "0", "reject", "", "", who)[1] == "Concept #0 ('lesion'): reject. Press Save to " \
                                                                    "store the review."
    wb.save(KEY, frame, "dr a", "", who)
    assert [(c.decision, c.label) for c in wb.bench.store.load(KEY).concepts] == [("accept", ""),
                                                                                  ("relabel", "melanoma")]


def test_an_added_concept_gets_a_pending_row_in_the_review_table_and_is_saved_as_the_reviewer_decides(bench):
    handlers, wb = bench
    handlers.analyzer = SimpleNamespace(analyses_of=lambda key: [])
    who = _who()
    table = handlers.open_review(KEY, who)[1]
    table, _ = wb.set_decision(table, "1", "relabel", "scar", "", who)
    wb.add(KEY, "1, 1, 9, 9", "mole", who)
    table = wb.table_of_draft(KEY, table, who)
    assert table.values.tolist() == [[0, "lesion", 0.9, "accept", "", ""], [1, "arm", 0.4, "relabel", "scar", ""],
                                     [2, "mole", 1.0, "pending", "", ""]]
    status = wb.save(KEY, table, "dr a", "", who)[0]
    assert ": 1 accept, 0 reject, 1 relabel, 1 pending; 1 edited by hand." in status
    assert [(c.index, c.decision, c.provenance) for c in wb.bench.store.load(KEY).concepts] == [
        (0, "accept", "model"), (1, "relabel", "model"), (2, "pending", "added")]
    table, _ = wb.set_decision(table, "2", "accept", "", "", who)
    assert ": 2 accept, 0 reject, 1 relabel, 0 pending; 1 edited by hand." in wb.save(KEY, table, "dr a", "", who)[0]
    # a deleted concept leaves the table; Undo brings its row back with the draft's verdict
    wb.delete(KEY, "0", who)
    assert [r[0] for r in wb.table_of_draft(KEY, table, who).values.tolist()] == [1, 2]
    wb.undo(KEY, "0", who)
    assert wb.table_of_draft(KEY, table, who).equals(table)
    assert wb.table_of_draft("nope", table, who) is table  # no photo key: the table as it was
    # the API (no table): an added concept is saved pending unless the client decides
    wb.bench.add("client", KEY, (30, 30, 40, 39), "scar")
    assert wb.api_functions()["save_version"](KEY, "dr c", "", SimpleNamespace(session_hash="client"))
    assert wb.bench.store.load(KEY).concepts[-1].decision == "pending"


def test_import_names_each_versions_reviewer_and_where_the_name_came_from(bench, tmp_path):
    """Found by a new user: a name left in the Reviewer box by an earlier save was silently recorded as the
    imported version's reviewer (and counted as that reviewer's latest version in the agreement)."""
    from skinapp.review import export_coco

    _, wb = bench
    coco = SimpleNamespace(name=str(export_coco(wb.bench.store, tmp_path / "coco")))  # version 1: no reviewer
    status = wb.import_coco(coco, "", _who())
    assert status == (f"Imported photo `{KEY[:12]}` as version 2 (1 concept), no reviewer name. The Reviewer box "
                      "is empty: each version keeps the reviewer the file records. A version without a reviewer "
                      "name is left out of the agreement between reviewers.")
    assert wb.bench.store.load(KEY).reviewer == ""
    status = wb.import_coco(coco, "  Dr <b>B</b> ", _who())
    assert status == (f"Imported photo `{KEY[:12]}` as version 3 (1 concept), reviewer 'Dr &lt;b&gt;B&lt;/b&gt;'. "
                      "The reviewer is the name in the Reviewer box (clear the box before an import to keep the "
                      "names the file records).")
    assert wb.bench.store.load(KEY).reviewer == "Dr <b>B</b>"


def test_an_import_of_the_photo_on_screen_shows_it_and_save_never_silently_buries_a_newer_version(bench, tmp_path):
    """Found by a new user: after importing a version of the photo open in the Review tab, the table, statuses and
    workbench kept the old version and Save wrote a new version from the old table over the imported one."""
    import time

    from skinapp.review import export_coco

    handlers, wb = bench
    handlers.analyzer = SimpleNamespace(analyses_of=lambda key: [])
    who, store = _who(), wb.bench.store
    table = handlers.open_review(KEY, who)[1]
    assert wb.start(KEY, who)[2] == f"Editing 2 concepts of photo `{KEY[:12]}` (saved version 1)."
    wb.click(KEY, "0", "positive", SimpleNamespace(index=[25, 15]), who)
    coco = SimpleNamespace(name=str(export_coco(store, tmp_path / "coco")))  # lesion accepted: 1 concept
    # an import of another photo leaves the review on screen as it is; the saved list is refreshed
    out = wb.import_and_show(coco, "dr b", "ab" * 32, who)
    assert out[2:] == (gr.skip(),) * 6 and [v for _, v in out[1]["choices"]] == [KEY]
    # the same file by another reviewer is a new version (by the same one it would be 'unchanged')
    status, saved, shown, review_status, photo, _, concept, wb_status = wb.import_and_show(coco, "dr d", KEY, who)
    assert photo.label == f"Photo {KEY[:12]} (saved review, numbered concepts)" and [
        a["label"] for a in photo.value["annotations"]] == ["#0 lesion (accept)"]
    assert status.startswith(f"Imported photo `{KEY[:12]}` as version 3 (1 concept), reviewer 'dr d'.")
    assert shown.values.tolist() == [[0, "lesion", 0.9, "accept", "", ""]]
    assert review_status == (f"Showing version 3 of photo `{KEY[:12]}`, just imported: the table and the workbench "
                             "show it (unsaved changes to the earlier version were dropped). Edit and press Save to "
                             "amend it.")
    assert wb_status == f"Editing 1 concept of photo `{KEY[:12]}` (saved version 3)." and concept.choices == [
        ("#0 lesion (imported)", "0")]
    assert saved.value == KEY and "rev 3" in saved.choices[0][0]
    assert wb.bench.draft("s1", KEY).source == "revision 3" and not wb.bench.has_edits("s1", KEY)
    # a version saved meanwhile elsewhere: Save is refused once, saying what the session missed; again: it saves
    other = _who("s2")
    handlers.open_review(KEY, other)  # session s2 shows version 3, with the old table of version 1 kept as `table`
    store.save(KEY, store.load_photo(KEY), np.ones((1, H, W), bool),
               [ConceptReview(0, "lesion", 0.9, (0, 0, W, H), "reject")], reviewer="dr c")  # version 4
    newest = store.load(KEY)
    _refused(handlers, "save_review", lambda: wb.save(KEY, shown, "dr a", "", who),
             f"Photo {KEY[:12]} has a newer saved version than the one on screen: version 4, reviewer 'dr c', 1 "
             f"concept, saved {time.strftime('%H:%M:%S', time.localtime(newest.updated_at))}. Nothing was saved. "
             "Reopen it (Saved reviews, Reopen) to review it, or press Save again to save what is on screen as a new "
             "version anyway.")
    with pytest.raises(gr.Error, match="newer saved version"):
        wb.save(KEY, table, "dr b", "", other)
    assert store.load(KEY).revision == 4
    assert wb.save(KEY, shown, "dr a", "", who)[0].startswith(f"Saved version 5 of photo `{KEY[:12]}`")
    assert wb.save(KEY, shown, "dr a", "", who)[0].startswith("Saved version 6")  # its own saves are seen
