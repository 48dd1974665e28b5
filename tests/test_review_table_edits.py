"""A review table whose concept names were edited (possible through the API: the screen's table is read-only) is
refused with what happened and what to do (relabel), not as a table of another photo; a table of another photo is
still refused as one. Both saves: without edits (the model's masks or the saved review) and with the session's
edited masks."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from skinapp.pipeline import Analyzer
from skinapp.review import ReviewStore
from skinapp.review.workbench import Workbench
from skinapp.synthetic import make_skin_photo
from skinapp.ui import Handlers
from skinapp.ui.workbench_handlers import WorkbenchHandlers

KEY, TABLE = 6, 7  # Handlers.analyze outputs
RELABEL = ("The concept column cannot be edited: {rows}. To rename a concept, set its decision to 'relabel' and "
           "write the new name in the 'new label' column (on screen: Decision 'relabel', New label).")


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture
def app(analyzer, tmp_path):
    handlers = Handlers(analyzer, ReviewStore(tmp_path / "data"), export_dir=tmp_path / "exports")
    path = tmp_path / "photo.png"
    Image.fromarray(make_skin_photo(seed=8, size=(192, 256), lesion_colour="dark_brown").pixels).save(path)
    out = handlers.analyze(str(path), "lesion . arm . leg", 0.3, 0.25)
    assert len(out[TABLE]) >= 2, "the planted photo should give at least two concepts"
    return handlers, WorkbenchHandlers(Workbench(analyzer, handlers.store), handlers), out[KEY], out[TABLE]


def _session(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name, headers={})


def _renamed(table, *names: str):
    edited = table.copy()
    for row, name in enumerate(names):
        edited.loc[row, "concept"] = name
    return edited


def _message(table, *names: str) -> str:
    first = f"row #{table.loc[0, '#']} renames {table.loc[0, 'concept']!r} to {names[0]!r}"
    more = f" (and {len(names) - 1} more row{'s' if len(names) > 2 else ''})" if len(names) > 1 else ""
    return RELABEL.format(rows=first + more)


def test_a_renamed_concept_is_refused_with_what_to_do_on_a_fresh_analysis(app):
    """Found by the lead: an API client that renamed a concept in the table was told the table "does not belong to
    photo ...", true but no help."""
    handlers, wb, key, table = app
    for names in (("tumour",), ("tumour", "naevus")):
        with pytest.raises(gr.Error) as err:
            handlers.save_review(key, _renamed(table, *names), "", "")
        assert err.value.message == _message(table, *names)
    assert handlers.store.load(key) is None


def test_a_renamed_concept_is_refused_with_what_to_do_on_a_reopened_review(app):
    handlers, wb, key, table = app
    _, _, saved = handlers.save_review(key, table, "", "")
    handlers.analyzer.states.clear()  # only the saved review is left to amend
    with pytest.raises(gr.Error) as err:
        handlers.save_review(key, _renamed(saved, "tumour"), "", "")
    assert err.value.message == _message(saved, "tumour")
    assert handlers.store.load(key).revision == 1


def test_a_renamed_concept_is_refused_with_what_to_do_when_the_session_has_edits(app):
    handlers, wb, key, table = app
    wb.bench.delete("s1", key, len(table) - 1)  # an edit: the save goes through the workbench's draft
    with pytest.raises(gr.Error) as err:
        wb.save(key, _renamed(table, "tumour"), "", "", request=_session("s1"))
    assert err.value.message == _message(table, "tumour")
    assert handlers.store.load(key) is None


def test_relabel_is_the_way_to_rename_and_a_foreign_table_is_still_refused_as_one(app):
    handlers, wb, key, table = app
    foreign = table.assign(concept="not this photo's phrase", score=0.123)
    belongs = (f"The review table does not belong to photo {key[:12]}: analyse that photo again (or reopen its "
               "review).")
    with pytest.raises(gr.Error) as err:
        handlers.save_review(key, foreign, "", "")
    assert err.value.message == belongs
    wb.bench.delete("s1", key, len(table) - 1)  # with edits
    with pytest.raises(gr.Error) as err:
        wb.save(key, foreign, "", "", request=_session("s1"))
    assert err.value.message == belongs
    relabelled = table.copy()
    relabelled.loc[0, "decision"], relabelled.loc[0, "new label"] = "relabel", "tumour"
    handlers.save_review(key, relabelled, "", "")
    assert handlers.store.load(key).concepts[0].final_label == "tumour"
