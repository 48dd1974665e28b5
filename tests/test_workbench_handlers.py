"""The Review tab's handlers behind the one Save button and the agreement panel, called as plain functions.

- Save: with edits in the session it saves the edited masks (painted / added provenance) plus the table's
  decisions; without edits the model's masks; the API's ``/save_version`` is the same save without a table.
- Agreement panel on the hand-computed store of :mod:`tests.test_review_agreement` (ann vs bob: kappa 0.25 over
  6 decided concepts on 3 photos; photo 1 concept 0 IoU 1/3), and its CSV bound to the session that asked.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from skinapp.pipeline import Analyzer
from skinapp.review import ConceptReview, ReviewStore, export_coco
from skinapp.review.workbench import Workbench
from skinapp.synthetic import make_skin_photo
from skinapp.ui import Handlers
from skinapp.ui.agreement_handlers import AGREEMENT_COLUMNS, AgreementHandlers
from skinapp.ui.privacy import SESSION_COOKIE
from skinapp.ui.workbench_handlers import WorkbenchHandlers
from tests.asgi_guard import guard_get
from tests.test_review_agreement import KEYS, store  # noqa: F401 (the hand-computed store fixture)

KEY, TABLE = 6, 7  # Handlers.analyze outputs
#: How the import status says where the reviewer names came from.
BOX = ("The reviewer is the name in the Reviewer box (clear the box before an import to keep the names the file "
       "records).")
FILE = "The Reviewer box is empty: each version keeps the reviewer the file records."


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture
def app(analyzer, tmp_path):
    handlers = Handlers(analyzer, ReviewStore(tmp_path / "data"), export_dir=tmp_path / "exports")
    path = tmp_path / "photo.png"
    Image.fromarray(make_skin_photo(seed=8, size=(192, 256), lesion_colour="dark_brown").pixels).save(path)
    out = handlers.analyze(str(path), "lesion . arm . leg", 0.3, 0.25)
    return handlers, WorkbenchHandlers(Workbench(analyzer, handlers.store), handlers), out[KEY], out[TABLE]


def _session(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name, headers={})


def test_one_save_keeps_edits_when_there_are_some_else_the_model_masks(app, analyzer):
    handlers, wb, key, table = app
    model = analyzer.analyses_of(key)[0].concepts.masks
    reviews = handlers.store
    assert len(table) >= 2, "the planted photo should give at least two concepts"
    # no edits: the model's masks, the table's decisions
    table.loc[0, "decision"] = "accept"
    status, _, saved = wb.save(key, table, "dr a", "", request=_session("s1"))
    v1 = reviews.load(key)
    assert v1.revision == 1 and "Saved version 1" in status and "0 edited by hand" in status
    assert all(c.provenance == "model" for c in v1.concepts) and v1.concepts[0].decision == "accept"
    assert all(np.array_equal(reviews.load_mask(key, c.index), model[c.index]) for c in v1.concepts)
    # paint concept 0 in session s1, then Save: the painted mask, the table's new decision for concept 1
    painted = np.zeros(model.shape[1:], bool)
    painted[10:40, 20:60] = True
    wb.bench.paint("s1", key, 0, painted)
    table.loc[1, "decision"] = "reject"
    status, _, saved = wb.save(key, table, "dr a", "", request=_session("s1"))
    v2 = reviews.load(key)
    assert v2.revision == 2 and "Saved version 2" in status and "1 edited by hand" in status
    assert v2.concepts[0].provenance == "painted" and np.array_equal(reviews.load_mask(key, 0), painted)
    assert [c.decision for c in v2.concepts[:2]] == ["accept", "reject"] and list(saved["decision"][:2]) == [
        "accept", "reject"]
    # another session has no edits: its Save stores the model's masks again
    wb.save(key, table, "dr b", "", request=_session("s2"))
    assert np.array_equal(reviews.load_mask(key, 0), model[0]) and reviews.load(key).concepts[0].provenance == "model"
    # the API's /save_version is the same save (no table): session s1's edits, its draft's decisions
    saved_api = wb.api_functions()["save_version"](key, "dr a", "", request=_session("s1"))
    assert saved_api["revision"] == 4 and saved_api["provenance"]["0"] == "painted"
    assert np.array_equal(reviews.load_mask(key, 0), painted) and reviews.load(key).concepts[1].decision == "reject"


def test_save_with_edits_refuses_a_table_of_another_photo(app):
    handlers, wb, key, table = app
    wb.bench.delete("s1", key, len(table) - 1)
    foreign = table.assign(concept="not this photo's phrase", score=0.123)  # names alone: tests/test_review_table_edits
    with pytest.raises(gr.Error, match="does not belong to photo"):
        wb.save(key, foreign, "", "", request=_session("s1"))
    assert handlers.store.load(key) is None


def test_agreement_panel_for_the_photo_shown(store, tmp_path):  # noqa: F811
    agree = AgreementHandlers(store, _refuse, tmp_path / "exports", {})
    frame, status = agree.photo(KEYS[0])
    assert list(frame.columns) == AGREEMENT_COLUMNS
    assert frame.values.tolist() == [["ann", "bob", 0, "lesion", "accept", "accept", 0.333, "0.250"],
                                     ["ann", "bob", 1, "arm", "accept", "reject", 1.0, "0.250"]]
    assert "kappa 0.250 over 6 decided concepts on 3 shared photos" in status
    frame, status = agree.photo(KEYS[2])  # ann, bob and cy: three pairs; ann vs cy decided one concept alike
    pairs = {(a, b): k for a, b, *_, k in frame.values.tolist()}
    assert pairs == {("ann", "bob"): "0.250", ("ann", "cy"): "n/a", ("bob", "cy"): "n/a"} and len(frame) == 6
    with pytest.raises(gr.Error, match="there is no photo key"):
        agree.photo("")


def _one_concept_reviews(reviews: ReviewStore, key: str, *verdicts: tuple[str, str]) -> None:
    """Save an 8x8 photo's one concept ("lesion", the whole photo) once per (reviewer, decision)."""
    for who, decision in verdicts:
        reviews.save(key, np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool),
                     [ConceptReview(0, "lesion", 0.9, (0, 0, 8, 8), decision)], reviewer=who)


def test_agreement_panel_counts_one_reviewer_under_two_spellings_once(tmp_path):
    reviews = ReviewStore(tmp_path / "data")
    key = "cd" * 32
    _one_concept_reviews(reviews, key, ("Dr A", "accept"), ("dr  a", "accept"))
    frame, status = AgreementHandlers(reviews, _refuse, tmp_path / "exports", {}).photo(key)
    assert frame.empty and status == f"Photo `{key[:12]}` has 1 reviewer (dr  a): agreement needs two."
    _one_concept_reviews(reviews, key, ("", "reject"))
    frame, status = AgreementHandlers(reviews, _refuse, tmp_path / "exports", {}).photo(key)
    assert frame.empty and status == (f"Photo `{key[:12]}` has 1 reviewer (dr  a): agreement needs two. A version "
                                      "saved without a reviewer name is not compared.")


def test_reviewer_names_are_shown_as_text_never_as_markup(tmp_path):
    """Found by a new user: a reviewer named ``<img src=x>`` became an image element in the agreement status (the
    Markdown sanitiser strips scripts, not images, so a remote image URL would be fetched by every viewer)."""
    reviews = ReviewStore(tmp_path / "data")
    key = "ab" * 32
    _one_concept_reviews(reviews, key, ("<img src=x onerror=alert(1)>", "accept"), ("dr <b>b</b>", "accept"))
    frame, status = AgreementHandlers(reviews, _refuse, tmp_path / "exports", {}).photo(key)
    assert "<img" not in status and "<b>" not in status
    assert "&lt;img src=x onerror=alert(1)&gt; vs dr &lt;b&gt;b&lt;/b&gt;: Cohen's kappa" in status
    assert frame["reviewer A"].tolist() == ["<img src=x onerror=alert(1)>"]  # the table shows the name as typed


def test_agreement_csv_reaches_only_the_session_that_asked(store, tmp_path):  # noqa: F811
    owners: dict[str, str | None] = {}
    agree = AgreementHandlers(store, _refuse, tmp_path / "exports", owners)
    mine, other = "a" * 32, "b" * 32
    path, message = agree.export_csv(SimpleNamespace(session_hash="x", headers={"cookie": f"{SESSION_COOKIE}={mine}"}))
    token = Path(path).parent.name
    assert path.endswith(f"skinapp-export-{token}.csv") and owners == {token: mine} and "this session only" in message
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ann_bob = next(r for r in rows if r["level"] == "pair" and (r["reviewer_a"], r["reviewer_b"]) == ("ann", "bob"))
    assert (ann_bob["kappa"], ann_bob["n_decided"]) == ("0.2500", "6")
    assert _status(owners, f"/gradio_api/file={path}", other) == 403
    assert _status(owners, f"/gradio_api/file={path}", None) == 403
    assert _status(owners, f"/gradio_api/file={path}", mine) == 200


def _refuse(action: str, exc: Exception, request) -> gr.Error:
    return gr.Error(str(exc))


def _status(owners: dict, path: str, cookie: str | None) -> int:
    """The HTTP status ExportGuard gives a GET of ``path`` with that session cookie (200: passed to the app)."""
    return guard_get(owners, path, cookie)[0]


def test_import_coco_from_the_review_tab_saves_a_new_version_or_says_what_is_wrong(app, tmp_path):
    """The Review tab's Import (and ``python -m skinapp.review.coco_import``): a COCO file of a saved photo becomes
    its next version with provenance "imported"; a file of an unknown photo is refused with nothing saved."""
    from skinapp.review import export_coco
    from skinapp.review.coco_import import main as import_main

    handlers, wb, key, table = app
    wb.save(key, table.assign(decision="accept"), "dr a", "", request=_session("s1"))
    coco = export_coco(handlers.store, tmp_path / "coco")
    status = wb.import_coco(SimpleNamespace(name=str(coco)), "cvat team", request=_session("s1"))
    review = handlers.store.load(key)
    assert status == (f"Imported photo `{key[:12]}` as version 2 ({len(review.concepts)} concepts), reviewer "
                      f"'cvat team'. {BOX}")
    assert (review.revision, review.reviewer) == (2, "cvat team")
    assert {c.provenance for c in review.concepts} == {"imported"}
    foreign = tmp_path / "foreign.json"
    foreign.write_text(coco.read_text().replace(key, "ab" * 32))
    with pytest.raises(gr.Error, match="matches no saved photo"):
        wb.import_coco(SimpleNamespace(name=str(foreign)), "", request=_session("s1"))
    assert handlers.store.load(key).revision == 2
    # the same import from the command line
    assert import_main([str(coco), "--data-dir", str(handlers.store.data_dir), "--reviewer", "cli"]) == 0
    assert handlers.store.load(key).revision == 3
    assert import_main([str(foreign), "--data-dir", str(handlers.store.data_dir)]) == 1


def test_import_says_which_photos_it_skipped_for_having_no_annotations(app, tmp_path):
    handlers, wb, key, table = app
    wb.save(key, table.assign(decision="reject"), "dr a", "", request=_session("s1"))  # nothing accepted
    other = "ab" * 32
    handlers.store.save(other, np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool),
                        [ConceptReview(0, "lesion", 0.9, (0, 0, 8, 8), "accept")], reviewer="dr b")
    coco = export_coco(handlers.store, tmp_path / "coco")
    status = wb.import_coco(SimpleNamespace(name=str(coco)), "", request=_session("s1"))
    assert status == (f"Imported photo `{other[:12]}` as version 2 (1 concept), reviewer 'dr b'. {FILE} Skipped 1 "
                      f"photo without annotations (their reviews are unchanged): `{key[:12]}`.")
    assert handlers.store.load(other).reviewer == "dr b" and handlers.store.load(key).revision == 1


def test_import_of_a_bad_polygon_is_one_message_in_the_review_tab(app, tmp_path, caplog):
    """Found by a new user: a 3-number polygon showed only "That failed." with a traceback in the log."""
    handlers, wb, key, table = app
    wb.save(key, table.assign(decision="accept"), "dr a", "", request=_session("s1"))
    coco = json.loads(export_coco(handlers.store, tmp_path / "coco").read_text())
    coco["annotations"][0]["segmentation"] = [[10, 10, 100]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    caplog.set_level(logging.INFO)
    with pytest.raises(gr.Error) as err:
        wb.import_coco(SimpleNamespace(name=str(bad)), "", request=_session("s1"))
    assert err.value.message == "Annotation 1 of image 1: a polygon needs at least 3 points (6 numbers)."
    assert [r.exc_info for r in caplog.records if r.exc_info] == [] and handlers.store.load(key).revision == 1


def test_the_review_tab_imports_an_export_zip_into_another_store_with_its_photo(app, analyzer, tmp_path):
    """Found by a new user: the export zip of one app, imported into another, said "matches no saved photo"."""
    from skinapp.review.export import export_zip

    handlers, wb, key, table = app
    wb.save(key, table.assign(decision="accept"), "dr a", "", request=_session("s1"))
    archive = export_zip(handlers.store, tmp_path / "zips")
    other = Handlers(analyzer, ReviewStore(tmp_path / "other"), export_dir=tmp_path / "other-exports")
    wb2 = WorkbenchHandlers(Workbench(analyzer, other.store), other)
    status = wb2.import_coco(SimpleNamespace(name=str(archive)), "", request=_session("s2"))
    review = other.store.load(key)
    assert status == (f"Imported photo `{key[:12]}` as version 1 ({len(review.concepts)} concepts), reviewer "
                      f"'dr a'. {FILE}")
    assert review.reviewer == "dr a" and np.array_equal(other.store.load_photo(key), handlers.store.load_photo(key))


def test_the_workbench_status_says_which_version_it_edits_after_reopen(app, tmp_path):
    """Found by a new user: after Reopen the workbench kept the last click's status, and a reopened saved review
    said "(analysis)": the workbench had opened the analysis in memory, not the saved version the table showed."""
    handlers, wb, key, table = app
    s1, s3 = _session("s1"), _session("s3")
    handlers.analyze(str(tmp_path / "photo.png"), "lesion . arm . leg", 0.3, 0.25, request=s1)
    n = len(table)
    assert wb.start(key, s1)[2] == (f"Editing {n} concepts of photo `{key[:12]}` (from the analysis, not a saved "
                                    "version).")
    assert wb.click(key, "0", "positive", SimpleNamespace(index=[100, 90]), s1)[2].startswith("Concept #0: positive")
    wb.save(key, table.assign(decision="reject"), "dr a", "", request=s1)
    handlers.open_review(key, s1)
    assert wb.reopen(key, s1)[2] == f"Editing {n} concepts of photo `{key[:12]}` (saved version 1)."
    assert wb.bench.draft("s1", key).source == "revision 1" and not wb.bench.has_edits("s1", key)
    # a session that reopens the saved review first (the analysis still in memory) edits the saved version
    handlers.open_review(key, s3)
    assert wb.start(key, s3)[2] == f"Editing {n} concepts of photo `{key[:12]}` (saved version 1)."
    assert {c.decision for c in wb.bench.draft("s3", key).concepts} == {"reject"}
