"""The UI handlers called directly (no server): outputs, the untrained banner, readable errors, reviews."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinapp.examples import example_paths
from skinapp.image import load_image
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


# analyse outputs
ANNOTATED, LABEL, FIG, DECISIVE, TEXT, BANNER, KEY, TABLE, REVIEW_IMAGE, REVIEW_STATUS, DETAILS, STATUS = range(12)


def _other_photo(tmp_path) -> str:
    path = tmp_path / "other.png"
    Image.fromarray(make_skin_photo(seed=9, size=(200, 240), lesion_colour="red").pixels).save(path)
    return str(path)


def _tile(gallery, i: int) -> np.ndarray:
    return np.asarray(Image.open(gallery.value[i]["image"]["path"]).convert("RGB"))


def test_example_photos_exist():
    assert len(example_paths()) == 3


def test_build_demo_has_named_endpoints(handlers):
    demo = build_demo(handlers.analyzer, handlers.store)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"analyze", "explain", "save_review", "export_reviews", "open_review", "list_reviews"} <= names
    assert not any(type(b).__name__ == "State" for b in demo.blocks.values()), "no per-session photo state"


def test_a_new_photo_is_never_dropped_nor_given_the_previous_photos_heatmaps(handlers):
    """Gradio's default trigger_mode "once" skips a chained model step while its previous run is queued: a photo
    uploaded during an analysis was never analysed, the previous photo's results stayed under it (found in a
    browser tryout; the browser test uploads two photos 0.3 s apart). And explain / concept-score work pending for
    the previous photo must be cancelled by a new photo, or its heatmaps land under the new one."""
    demo = build_demo(handlers.analyzer, handlers.store)
    config = demo.get_config_file()
    ids = {b["props"].get("elem_id"): b["id"] for b in config["components"] if b.get("props", {}).get("elem_id")}
    deps = config["dependencies"]
    model_steps = {name: [d for d in deps if d["queue"] and ids[name] in d["outputs"]]
                   for name in ("analyse-status", "explain-status", "concept-status")}
    assert all(len(steps) >= 1 for steps in model_steps.values()), model_steps
    for name, steps in model_steps.items():
        assert {d["trigger_mode"] for d in steps} == {"always_last"}, name
    earlier_work = {d["id"] for name in ("explain-status", "concept-status") for d in model_steps[name]}
    for event in ("upload", "clear"):  # Gradio adds the cancelling as a dependency of its own on the same trigger
        on_it = [d for d in deps if [ids["photo"], event] in [list(t) for t in d["targets"]]]
        assert any(ids["analyse-status"] in d["outputs"] for d in on_it), f"{event} clears the outputs"
        cancelled = {i for d in on_it for i in d["cancels"]}
        assert earlier_work <= cancelled, (event, cancelled, earlier_work)


def test_another_photo_empties_the_agreement_panel(handlers):
    """The agreement between reviewers stayed on screen for the previous photo after a new one was analysed or
    reopened (browser tryout): a change of the photo key empties it."""
    from skinapp.ui.agreement_handlers import AGREEMENT_COLUMNS
    from skinapp.ui.workbench_blocks import no_agreement

    config = build_demo(handlers.analyzer, handlers.store).get_config_file()
    ids = {b["props"].get("elem_id"): b["id"] for b in config["components"] if b.get("props", {}).get("elem_id")}
    on_key = [d for d in config["dependencies"] if [ids["review-key"], "change"] in [list(t) for t in d["targets"]]]
    assert any({ids["agreement-table"], ids["agreement-status"]} <= set(d["outputs"]) and not d["inputs"]
               for d in on_key)
    table, status = no_agreement()
    assert list(table.columns) == AGREEMENT_COLUMNS and table.empty and status == ""


def test_clip_info_does_not_call_the_offered_demo_model_refused(handlers):
    """The demo CLIP is offered (untrained, said so); it was listed as 'not offered: Phrase heatmaps come from
    an untrained demo CLIP model'. Refusals word themselves ('<name>: refused, ...')."""
    from skinapp.ui.blocks import clip_info

    assert clip_info(handlers.analyzer) == (
        "CLIP weights for Explain and concept scores:\n\n"
        f"- **{next(iter(handlers.analyzer.clips))}**: licence n/a (random demo weights)\n"
        "- Phrase heatmaps come from an untrained demo CLIP model (tiny profile).")


def test_analyze_outputs_carry_the_banner_and_the_photo_key(handlers, photo_path):
    out = _analyse(handlers, photo_path)
    annotated, label, fig, decisive, text, banner, key, table = out[:8]
    pixels, annotations = annotated.value["image"], annotated.value["annotations"]
    assert len(annotations) == len(table) >= 1
    assert UNTRAINED_WARNING in banner and 'role="alert"' in banner and len(banner) < 600, "one concise banner"
    assert UNTRAINED_WARNING in label.label and UNTRAINED_WARNING in text
    # untrained: no big headline class over the bars (it read like a diagnosis: "Urticaria" on every phone photo)
    assert label.show_heading is False
    assert UNTRAINED_WARNING in fig.axes[0].get_title()
    assert isinstance(decisive.value, dict) or decisive.value is not None
    assert len(key) == 64 and ":" not in key
    short = key[:12]
    for shown in (annotated.label, label.label, fig.axes[0].get_title(), decisive.label, text, out[REVIEW_STATUS],
                  out[DETAILS], out[STATUS], out[REVIEW_IMAGE].label):
        assert short in shown, f"a result without its photo key: {shown!r}"
    assert list(table.columns) == REVIEW_COLUMNS and set(table["decision"]) == {"pending"}
    assert "nothing is stored" in out[REVIEW_STATUS]
    numbers = [a["label"].split(" ")[0] for a in out[REVIEW_IMAGE].value["annotations"]]
    assert numbers == [f"#{i}" for i in range(len(table))], "the review photo numbers its concept masks"
    assert pixels is not None


def test_explain_acts_on_the_photo_given_not_the_last_analysis(handlers, photo_path, tmp_path):
    """Issue 15 sequence: analyse A, explain B -> B's heatmaps (and B's key), never A's."""
    other = _other_photo(tmp_path)
    key_a = _analyse(handlers, photo_path)[KEY]
    gallery_b, sims_b, _, status_b = handlers.explain(other, "irregular streaks", None)
    gallery_a, sims_a, _, status_a = handlers.explain(photo_path, "irregular streaks", None)
    key_b = load_image(other).key
    assert key_b[:12] in gallery_b.label and key_b[:12] in status_b and key_a[:12] not in gallery_b.label
    assert key_a[:12] in gallery_a.label and set(sims_a["photo"]) == {key_a[:12]}
    assert not np.array_equal(_tile(gallery_a, 0), _tile(gallery_b, 0)), "B's photo, not A's, heads B's row"
    assert sims_a["CLIP similarity"][0] != sims_b["CLIP similarity"][0]
    # a 1x1 image is refused, not explained as the previous photo
    tiny = tmp_path / "one.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    with pytest.raises(gr.Error, match="too small"):
        handlers.explain(str(tiny), "irregular streaks", None)


def test_explain_grid_and_similarities(handlers, photo_path):
    gallery, sims, banner, status = handlers.explain(photo_path, "irregular streaks\nblue-whitish veil", None)
    assert len(gallery.value) == 2 * 4
    assert "Grad-CAM" in gallery.label and "MedGrad E-CLIP" in gallery.label
    assert list(sims["phrase"]) == ["irregular streaks", "blue-whitish veil"]
    captions = [item["caption"] for item in gallery.value]
    assert captions[1].startswith("Grad-CAM \u00b7 sim ") and "irregular streaks" in captions[1]
    assert UNTRAINED_WARNING in banner and "Times" not in gallery.label, "timings go to the status, not the header"


def test_truncated_phrase_is_flagged_in_the_result_and_the_explain_screen(handlers, photo_path, caplog):
    long_phrase = " ".join("abcdefghij"[i % 10] for i in range(90))  # 179 characters, 90 BPE tokens: over 77
    caplog.set_level(logging.DEBUG)
    gallery, sims, _, status = handlers.explain(photo_path, f"blue-whitish veil\n{long_phrase}", None)
    assert "Phrase 2 truncated to 77 tokens" in caplog.messages
    assert not [m for m in caplog.messages if "a b c d" in m], "the typed phrase (clinical text) reached the log"
    assert list(sims["note"]) == ["", "(cut to 77 tokens)"]
    assert "77-token" in status and "only its start was used" in status
    captions = [item["caption"] for item in gallery.value]
    assert all("cut to 77 tokens" in c for c in captions[4:]) and not any("cut to" in c for c in captions[:4])
    result = handlers.analyzer.explain(photo_path, [long_phrase])
    assert result.truncated == [True] and result.context_length == 77


@pytest.mark.parametrize("image, prompts, box, text, match", [
    (None, "lesion", 0.3, 0.25, "Upload a photo"),
    ("missing.png", "lesion", 0.3, 0.25, "could not be found"),
    ("PHOTO", "", 0.3, 0.25, ""),  # empty prompts fall back to the defaults: no error
    ("PHOTO", "?? . !!", 0.3, 0.25, "No prompt phrases"),
    ("PHOTO", "lesion . 42", 0.3, 0.25, "not a prompt"),
    ("PHOTO", "lesion", 3.0, 0.25, "between 0 and 1"),
])
def test_analyze_bad_input_is_a_readable_gr_error(handlers, photo_path, image, prompts, box, text, match):
    image = photo_path if image == "PHOTO" else image
    if image == photo_path and prompts == "":
        assert len(handlers.analyze(image, prompts, box, text)[TABLE]) >= 1
        return
    with pytest.raises(gr.Error) as info:
        handlers.analyze(image, prompts, box, text)
    assert match in str(info.value.message) and "Traceback" not in str(info.value.message)
    assert info.value.print_exception is False, "a user error is one log line, not a traceback"


def test_user_errors_log_one_line_without_file_names(handlers, tmp_path, caplog):
    secret = tmp_path / "Jane_Doe_forearm.pdf"
    secret.write_bytes(b"%PDF-1.4 not really")
    with caplog.at_level("INFO"), pytest.raises(gr.Error, match="not an image we can read"):
        handlers.analyze(str(secret), "lesion", 0.3, 0.25)
    lines = [r.getMessage() for r in caplog.records if r.name == "skinapp.ui.handlers"]
    assert len(lines) == 1 and "refused" in lines[0] and "Jane" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)


def test_analyze_rejects_non_images_and_tiny_photos(handlers, tmp_path):
    text_file = tmp_path / "report.pdf"
    text_file.write_bytes(b"%PDF-1.4 not really")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny)
    for bad, message in ((text_file, "not an image we can read"), (tiny, "too small")):
        with pytest.raises(gr.Error, match=message):
            handlers.analyze(str(bad), "lesion", 0.3, 0.25)


@pytest.mark.parametrize("phrases, message", [
    ("", "Type at least one phrase"), ("   \n ", "Type at least one phrase"), ("123\n$$$", "'123' is not a phrase"),
    ("x" * 300, r"A phrase is too long \(300 characters; limit 200\)"),
])
def test_explain_bad_phrases(handlers, photo_path, phrases, message):
    with pytest.raises(gr.Error, match=message):
        handlers.explain(photo_path, phrases, None)


def test_explain_without_photo(handlers):
    with pytest.raises(gr.Error, match="Upload a photo"):
        handlers.explain(None, "streaks", None)


def test_review_save_reopen_amend_export(handlers, photo_path):
    out = _analyse(handlers, photo_path)
    key, table = out[KEY], out[TABLE].copy()
    assert not handlers.store.photo_path(key).exists(), "the photo is stored only when a review is saved"
    table.loc[0, "decision"] = "accept"
    table.loc[0, "comment"] = "sharp border"
    status, choices, saved_table = handlers.save_review(key, table, "dr a", "")
    assert "revision 1" in status and key[:12] in status and handlers.store.photo_path(key).exists()
    assert saved_table.loc[0, "decision"] == "accept"
    assert key in [value for _, value in choices.choices]
    # reopen (by the short key, as a fresh API client would) and amend
    key2, table2, reviewer, note, preview, status2 = handlers.open_review(key[:12])
    assert key2 == key and reviewer == "dr a" and len(preview.value["annotations"]) == len(table2)
    assert key[:12] in status2 and key[:12] in preview.label
    table2.loc[0, "decision"] = "relabel"
    table2.loc[0, "new label"] = "nodule"
    status3, _, table3 = handlers.save_review(key2, table2, "dr b", "amended")
    assert "revision 2" in status3 and table3.loc[0, "new label"] == "nodule"
    archive, message = handlers.export_reviews()
    assert archive.endswith(".zip") and "1 reviewed concept from 1 photo." in message
    assert Path(archive).is_relative_to(handlers.export_dir) and not Path(archive).is_relative_to(
        handlers.store.data_dir), "exports are temporary, never in the review data directory"


def test_save_refuses_a_table_of_another_photo(handlers, photo_path, tmp_path):
    """Issue 15 sequence: analyse A, analyse B, save B's key with A's table -> refused; A's key -> A saved."""
    out_a = _analyse(handlers, photo_path)
    out_b = _analyse(handlers, _other_photo(tmp_path))
    with pytest.raises(gr.Error, match="does not belong to photo"):
        handlers.save_review(out_b[KEY], out_a[TABLE], "", "")
    assert handlers.store.load(out_b[KEY]) is None
    status, _, _ = handlers.save_review(out_a[KEY], out_a[TABLE], "", "")
    assert out_a[KEY][:12] in status and out_b[KEY][:12] not in status
    # a reopened review: the table of A cannot amend B's saved review
    handlers.save_review(out_b[KEY], out_b[TABLE], "", "")
    reopened = handlers.open_review(out_a[KEY])
    with pytest.raises(gr.Error, match="does not belong to photo"):
        handlers.save_review(out_b[KEY], reopened[1].assign(score=0.123), "", "")


def test_review_from_api_shape(handlers, photo_path):
    """gradio_client sends the table as {"headers", "data"} with the key from /analyze."""
    out = _analyse(handlers, photo_path)
    table = {"headers": REVIEW_COLUMNS, "data": out[TABLE].assign(decision="reject").values.tolist()}
    status, _, saved = handlers.save_review(out[KEY], table, "", "")
    assert "revision 1" in status and set(saved["decision"]) == {"reject"}


@pytest.mark.parametrize("decision, label, match", [("maybe", "", "decision must be"), ("relabel", "", "new label")])
def test_review_bad_verdicts(handlers, photo_path, decision, label, match):
    out = _analyse(handlers, photo_path)
    table = out[TABLE].copy()
    table.loc[0, "decision"], table.loc[0, "new label"] = decision, label
    with pytest.raises(gr.Error, match=match):
        handlers.save_review(out[KEY], table, "", "")
    assert handlers.store.load(out[KEY]) is None


def test_review_errors_without_analysis(handlers):
    empty = pd.DataFrame(columns=REVIEW_COLUMNS)
    with pytest.raises(gr.Error, match="no concepts"):
        handlers.save_review(None, empty, "", "")
    with pytest.raises(gr.Error, match="Analyse a photo"):
        handlers.save_review(None, pd.DataFrame([[0, "lesion", 0.5, "accept", "", ""]], columns=REVIEW_COLUMNS),
                             "", "")
    with pytest.raises(gr.Error, match="No reviews"):
        handlers.export_reviews()
    with pytest.raises(gr.Error, match="Choose a saved review"):
        handlers.open_review(None)
    with pytest.raises(gr.Error, match="no saved review"):
        handlers.open_review("abcdef0123")


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
    with pytest.raises(SystemExit) as done:
        app.parse_args(["--profile", "huge"])
    assert done.value.code == 2  # argparse's usage error, not a start with another profile


def test_rtl_and_cjk_phrases_are_shown_whole(handlers, photo_path):
    phrases = ["قرحة ذات حواف متآكلة", "皮肤溃疡边缘不规则"]
    gallery, sims, _, status = handlers.explain(photo_path, "\n".join(phrases), None)
    assert list(sims["phrase"]) == phrases
    captions = [item["caption"] for item in gallery.value]
    assert all(phrases[0] in c for c in captions[:4]) and all(phrases[1] in c for c in captions[4:])


def test_numbered_photo_writes_each_concept_number_on_its_mask():
    from skinapp.drawing import numbered_photo

    pixels = np.full((120, 160, 3), 128, np.uint8)
    masks = np.zeros((2, 120, 160), bool)
    masks[0, 10:50, 10:60], masks[1, 70:110, 90:150] = True, True
    out = numbered_photo(pixels, masks, [0, 1])
    changed = np.any(out != pixels, axis=2)
    assert changed[10:50, 10:60].any() and changed[70:110, 90:150].any()
    assert not changed[:, 65:85].any(), "numbers are drawn on their own masks only"
    assert np.array_equal(pixels, np.full((120, 160, 3), 128, np.uint8)), "the input is not modified"


def test_numbers_of_nested_masks_do_not_collide():
    """A skin mask around a lesion: both numbers inside their own masks, far enough apart to be read."""
    from skinapp.drawing import label_positions, numbered_photo

    masks = np.zeros((2, 240, 320), bool)
    masks[0, 20:220, 20:300] = True  # skin, containing ...
    masks[1, 90:150, 130:190] = True  # ... the lesion at its centre
    first, second = label_positions(masks, min_gap=30)
    assert masks[0][first[1], first[0]] and masks[1][second[1], second[0]]
    assert second == (160, 120) or np.hypot(second[0] - 160, second[1] - 120) <= 2, "the lesion keeps its centre"
    assert np.hypot(first[0] - second[0], first[1] - second[1]) >= 30
    out = numbered_photo(np.full((240, 320, 3), 128, np.uint8), masks, [0, 1])
    assert np.any(out[90:150, 130:190] != 128), "the lesion's number is on the lesion"
    assert label_positions(np.zeros((1, 8, 8), bool), 3) == [None]
    whole = np.ones((1, 100, 200), bool)  # a mask filling the photo: its number in the middle, not on the border
    (x, y), = label_positions(whole, 3)
    assert min(x, y, 199 - x, 99 - y) >= 45
