"""The UI handlers called directly (no server): outputs, the untrained banner, readable errors, reviews."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinapp.examples import example_paths
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.review import ReviewStore
from skinapp.synthetic import make_skin_photo
from skinapp.ui import Handlers, build_demo
from skinapp.ui.handlers import REVIEW_COLUMNS


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture
def handlers(analyzer, tmp_path) -> Handlers:
    return Handlers(analyzer, ReviewStore(tmp_path / "data"))


@pytest.fixture
def photo_path(tmp_path) -> str:
    path = tmp_path / "photo.png"
    Image.fromarray(make_skin_photo(seed=8, size=(192, 256), lesion_colour="dark_brown").pixels).save(path)
    return str(path)


def _analyse(handlers, path, prompts="lesion . arm . leg"):
    return handlers.analyze(path, prompts, 0.3, 0.25)


def test_example_photos_exist():
    assert len(example_paths()) == 3


def test_build_demo_has_named_endpoints(handlers):
    demo = build_demo(handlers.analyzer, handlers.store)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"analyze", "explain", "save_review", "export_reviews", "open_review"} <= names


def test_analyze_outputs_carry_the_banner(handlers, photo_path):
    annotated, label, fig, decisive, text, banner, key, table, status, details = _analyse(handlers, photo_path)
    pixels, annotations = annotated.value["image"], annotated.value["annotations"]
    assert len(annotations) == len(table) >= 1
    assert UNTRAINED_WARNING in banner and 'role="alert"' in banner
    assert UNTRAINED_WARNING in label.label and UNTRAINED_WARNING in text
    assert UNTRAINED_WARNING in fig.axes[0].get_title()
    assert isinstance(decisive, np.ndarray) and decisive.ndim == 3
    assert len(key) == 64 and ":" not in key  # gr.State holds only the photo key
    assert list(table.columns) == REVIEW_COLUMNS and set(table["decision"]) == {"pending"}
    assert "nothing is stored" in status and key[:12] in details
    assert pixels is not None


def test_explain_grid_and_similarities(handlers, photo_path):
    key = _analyse(handlers, photo_path)[6]
    gallery, sims, banner = handlers.explain(key, None, "irregular streaks\nblue-whitish veil", None)
    assert len(gallery.value) == 2 * 4
    assert "Grad-CAM" in gallery.label and "MedGrad E-CLIP" in gallery.label
    assert list(sims["phrase"]) == ["irregular streaks", "blue-whitish veil"]
    assert UNTRAINED_WARNING in banner
    # without the key (as from gradio_client) the photo itself finds the same cached image pass
    gallery2, sims2, _ = handlers.explain(None, photo_path, "irregular streaks\nblue-whitish veil", None)
    assert np.allclose(sims["CLIP similarity"], sims2["CLIP similarity"])


@pytest.mark.parametrize("image, prompts, box, text, match", [
    (None, "lesion", 0.3, 0.25, "Upload a photo"),
    ("missing.png", "lesion", 0.3, 0.25, "No such file"),
    ("PHOTO", "", 0.3, 0.25, ""),  # empty prompts fall back to the defaults: no error
    ("PHOTO", "?? . !!", 0.3, 0.25, "No prompt phrases"),
    ("PHOTO", "lesion . 42", 0.3, 0.25, "not a prompt"),
    ("PHOTO", "lesion", 3.0, 0.25, "between 0 and 1"),
])
def test_analyze_bad_input_is_a_readable_gr_error(handlers, photo_path, image, prompts, box, text, match):
    image = photo_path if image == "PHOTO" else image
    if image == photo_path and prompts == "":
        assert len(handlers.analyze(image, prompts, box, text)[7]) >= 1
        return
    with pytest.raises(gr.Error) as info:
        handlers.analyze(image, prompts, box, text)
    assert match in str(info.value.message) and "Traceback" not in str(info.value.message)


def test_analyze_rejects_non_images_and_tiny_photos(handlers, tmp_path):
    text_file = tmp_path / "report.pdf"
    text_file.write_bytes(b"%PDF-1.4 not really")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny)
    for bad in (text_file, tiny):
        with pytest.raises(gr.Error):
            handlers.analyze(str(bad), "lesion", 0.3, 0.25)


@pytest.mark.parametrize("phrases", ["", "   \n ", "123\n$$$", "x" * 300])
def test_explain_bad_phrases(handlers, photo_path, phrases):
    key = _analyse(handlers, photo_path)[6]
    with pytest.raises(gr.Error):
        handlers.explain(key, photo_path, phrases, None)


def test_explain_without_photo(handlers):
    with pytest.raises(gr.Error, match="Upload a photo"):
        handlers.explain(None, None, "streaks", None)


def test_review_save_reopen_amend_export(handlers, photo_path):
    out = _analyse(handlers, photo_path)
    key, table = out[6], out[7].copy()
    assert not handlers.store.photo_path(key).exists(), "the photo is stored only when a review is saved"
    table.loc[0, "decision"] = "accept"
    table.loc[0, "comment"] = "sharp border"
    status, choices, saved_table = handlers.save_review(key, photo_path, table, "dr a", "")
    assert "revision 1" in status and handlers.store.photo_path(key).exists()
    assert saved_table.loc[0, "decision"] == "accept"
    assert key in [value for _, value in choices.choices]
    # reopen and amend (the key is what the Reopen button puts in gr.State)
    key2, table2, reviewer, note, preview, status2 = handlers.open_review(key)
    assert key2 == key and reviewer == "dr a" and len(preview[1]) == len(table2)
    table2.loc[0, "decision"] = "relabel"
    table2.loc[0, "new label"] = "nodule"
    status3, _, table3 = handlers.save_review(key2, None, table2, "dr b", "amended")
    assert "revision 2" in status3 and table3.loc[0, "new label"] == "nodule"
    archive, message = handlers.export_reviews()
    assert archive.endswith(".zip") and "1 reviewed concepts" in message


def test_review_from_api_shape_without_state(handlers, photo_path):
    """gradio_client sends no State and the table as {"headers", "data"}: the photo names the analysis."""
    out = _analyse(handlers, photo_path)
    table = {"headers": REVIEW_COLUMNS, "data": out[7].assign(decision="reject").values.tolist()}
    status, _, saved = handlers.save_review(None, photo_path, table, "", "")
    assert "revision 1" in status and set(saved["decision"]) == {"reject"}


@pytest.mark.parametrize("decision, label, match", [("maybe", "", "decision must be"), ("relabel", "", "new label")])
def test_review_bad_verdicts(handlers, photo_path, decision, label, match):
    out = _analyse(handlers, photo_path)
    table = out[7].copy()
    table.loc[0, "decision"], table.loc[0, "new label"] = decision, label
    with pytest.raises(gr.Error, match=match):
        handlers.save_review(out[6], photo_path, table, "", "")
    assert handlers.store.load(out[6]) is None


def test_review_errors_without_analysis(handlers):
    empty = pd.DataFrame(columns=REVIEW_COLUMNS)
    with pytest.raises(gr.Error, match="no concepts"):
        handlers.save_review(None, None, empty, "", "")
    with pytest.raises(gr.Error, match="Analyse a photo"):
        handlers.save_review(None, None, pd.DataFrame([[0, "lesion", 0.5, "accept", "", ""]],
                                                      columns=REVIEW_COLUMNS), "", "")
    with pytest.raises(gr.Error, match="Nothing to export|No reviews"):
        handlers.export_reviews()
    with pytest.raises(gr.Error, match="Choose a saved review"):
        handlers.open_review(None)


def test_app_module_cli_and_login(monkeypatch):
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    app = importlib.import_module("app")
    assert app._DEMO is None, "importing app.py must not build the app or load models"
    args = app.parse_args(["--data-dir", "/tmp/x"])
    assert args.host == "127.0.0.1" and args.port == 7860 and not args.share
    monkeypatch.delenv("SKINAPP_USER", raising=False)
    monkeypatch.delenv("SKINAPP_PASSWORD", raising=False)
    assert app.login() is None
    monkeypatch.setenv("SKINAPP_USER", "clinic")
    with pytest.raises(SystemExit, match="both"):
        app.login()
    monkeypatch.setenv("SKINAPP_PASSWORD", "s3cret")
    assert app.login() == ("clinic", "s3cret")
    with pytest.raises(SystemExit):
        app.parse_args(["--profile", "huge"])
