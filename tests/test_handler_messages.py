"""What the clinician reads from the handlers, compared whole: the status lines, the banner, the error shown
next to an action, the saved-review list, and how a review table from the screen or the API is read.

The Analyzer is the real one at the tiny profile (untrained: the banner must be there); nothing is mocked
but the Gradio request, which only carries the session id and cookie.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinapp.clip.model import build_clip
from skinapp.drawing import label_positions
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo, untrained
from skinapp.review import ReviewStore
from skinapp.synthetic import make_skin_photo
from skinapp.ui import Handlers
from skinapp.ui.handlers import REVIEW_COLUMNS, banner_html, review_table

KEY, TABLE, STATUS, DETAILS = 6, 7, 11, 10


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture
def handlers(analyzer, tmp_path) -> Handlers:
    return Handlers(analyzer, ReviewStore(tmp_path / "data"), export_dir=tmp_path / "exports")


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "photo.png"
    Image.fromarray(make_skin_photo(seed=8, size=(192, 256), lesion_colour="dark_brown").pixels).save(path)
    return str(path)


def _request(session: str = "s1", cookie: str | None = None):
    return SimpleNamespace(session_hash=session, headers={"cookie": cookie} if cookie else {})


# --------------------------------------------------------------------------- banner


def test_banner_names_each_untrained_model_once_and_the_fix():
    weights = (untrained("fusion"), WeightsInfo("sam_vit_b", True, "sam.pth"), untrained("vit <tiny>"),
               untrained("fusion", "again"))
    shown = banner_html(f"{UNTRAINED_WARNING}\nUntrained: details on a second line", weights)
    assert shown == (
        '<div class="untrained-banner" role="alert" style="background:#b00020;color:#fff;padding:8px 14px;'
        'border-radius:6px;"><b style="font-size:1.15em;">&#9888; UNTRAINED WEIGHTS \u2014 NOT A DIAGNOSIS</b>'
        '<span style="font-size:0.9em;margin-left:10px;">Untrained: fusion, vit &lt;tiny&gt;. How to fix: README '
        '\u2192 Real weights (python -m skinapp.checkpoints download ...); the fusion classifier is trained, not '
        'downloaded: README \u2192 Training</span></div>')
    assert "Untrained:" not in banner_html(UNTRAINED_WARNING, (WeightsInfo("sam", True, "x"),))
    # a download fixes everything else: no training clause without an untrained fusion classifier
    assert "Training" not in banner_html(UNTRAINED_WARNING, (untrained("vit"),))


def test_without_a_banner_the_weights_used_are_one_quiet_line():
    weights = (WeightsInfo("fusion", True, "fusion.safetensors"), WeightsInfo("vit", True, "a<b>.pth"))
    assert banner_html("", weights) == ('<div class="weights-ok">Weights used: fusion: trained (fusion.safetensors); '
                                        'vit: trained (a&lt;b&gt;.pth)</div>')


# --------------------------------------------------------------------------- analyse / explain


def test_analyse_status_and_details_name_the_photo_and_what_was_found(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    result = handlers.analyzer.latest_analysis(photo)
    k, n = result.image_key[:12], len(result.concepts)
    assert out[STATUS] == f"Analysed photo `{k}`: {n} concepts, '{result.prediction.predicted}'."
    times = ", ".join(f"{name} {v:.2f}s" for name, v in result.timings.items())
    assert out[DETAILS] == (f"**Photo** `{k}` (256x192), {n} concepts ({result.concepts.source}). "
                            f"**Timings:** {times}.")
    assert out[9] == f"{n} concepts of photo `{k}` ready for review; nothing is stored until you press Save."
    assert out[1].label == f"Diagnosis \u00b7 photo {k} \u2014 {UNTRAINED_WARNING}"
    assert out[1].value["label"] == result.prediction.predicted
    assert out[0].label == f"Concepts ({n}) \u00b7 photo {k} \u2014 untrained"
    assert out[3].label == f"Decisive concept \u00b7 photo {k}"
    assert out[4] == f"Photo `{k}`: {result.decisive_text}"
    assert out[8].label == f"Photo {k} with numbered concepts"
    assert [a["label"] for a in out[0].value["annotations"]] == [t for _, t in result.annotations]
    assert [a["label"] for a in out[8].value["annotations"]] == [f"#{i} {p}" for i, p in
                                                                 enumerate(result.concepts.phrases)]


def test_a_photo_note_is_shown_in_the_status_and_the_details(handlers, tmp_path):
    rgba = tmp_path / "rgba.png"
    pixels = make_skin_photo(seed=4, size=(160, 200)).pixels
    Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])).save(rgba)
    out = handlers.analyze(str(rgba), "lesion", 0.3, 0.25)
    notes = "; ".join(handlers.analyzer.latest_analysis(str(rgba)).notes)
    assert notes, "an RGBA photo is converted, and the conversion is noted"
    assert out[STATUS].endswith(f" Note: {notes}.") and out[DETAILS].endswith(f"\n\n**Notes:** {notes}.")


def test_notes_that_are_sentences_end_with_one_full_stop(handlers, photo):
    """Found by a new user: "...the diagnosis uses global image features only.." (a note's own full stop, then the
    status's)."""
    out = handlers.analyze(photo, "lesion", 0.95, 0.25)  # nothing passes the threshold: global features only
    assert out[STATUS].endswith("the diagnosis uses global image features only.")
    assert ".." not in out[STATUS] and ".." not in out[DETAILS]


def test_mask_opacity_halves_each_concept_mask(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    result = handlers.analyzer.latest_analysis(photo)
    shown = np.asarray(Image.open(out[0].value["annotations"][0]["image"]["path"]))  # RGBA: the mask is alpha
    assert set(np.unique(shown[..., 3])) == {0, 127}, "a translucent mask: half opacity, never opaque"
    assert np.array_equal(shown[..., 3] > 0, result.concepts.masks[0])


def test_explain_status_names_the_photo_the_weights_and_the_times(handlers, photo):
    gallery, sims, banner, status = handlers.explain(photo, "irregular streaks\nblue-whitish veil", None)
    result = handlers.analyzer.explain(photo, ["irregular streaks", "blue-whitish veil"])
    k = result.image_key[:12]
    assert re.fullmatch(rf"Explained 2 phrases for photo `{k}` with CLIP weights "
                        rf"{re.escape(result.clip_label)} \(image_pass \d+\.\d\ds, explain \d+\.\d\ds, render "
                        rf"\d+\.\d\ds, total \d+\.\d\ds\)\.", status)
    assert gallery.label == f"Photo {k}: photo / Grad-CAM / Grad E-CLIP / MedGrad E-CLIP"
    assert list(sims.columns) == ["photo", "phrase", "CLIP similarity", "note"]
    assert list(sims["CLIP similarity"]) == [round(float(s), 4) for s in result.similarities]
    assert banner == banner_html(result.banner, result.weights)


def test_a_long_phrase_warning_quotes_its_start(handlers, photo):
    long_phrase = " ".join("abcdefghij"[i % 10] for i in range(90))
    _, _, _, status = handlers.explain(photo, long_phrase, None)
    assert status.endswith(f"\n\n&#9888; '{long_phrase[:60]}\u2026' is longer than CLIP's 77-token text input: "
                           "only its start was used (cut to 77 tokens).")


# --------------------------------------------------------------------------- concept scores


def test_concept_scores_use_the_clip_weights_chosen_and_say_so(analyzer, photo, tmp_path):
    """With two CLIP models loaded, the chart, picker and status come from the one picked in the dropdown."""
    second = "second: tiny CLIP, seed 1"
    models = dataclasses.replace(analyzer.models, clips={**analyzer.models.clips, second: build_clip("tiny", seed=1)})
    two = Handlers(Analyzer(models), ReviewStore(tmp_path / "data"))
    fig, picker, status = two.concept_scores(photo, "erythema\nulcer\nplaque", second)
    expected = two.analyzer.concept_scores(photo, "erythema\nulcer\nplaque", second)
    default = two.analyzer.concept_scores(photo, "erythema\nulcer\nplaque", None)
    assert not np.allclose(expected.scores, default.scores), "the two CLIP models must disagree for this test"
    assert status == (f"Scored 3 concepts for photo `{expected.image_key[:12]}`. Scores from CLIP weights "
                      f"{second}. Click a concept to explain it.")
    assert picker.choices == [(f"{c} \u00b7 {s:.3f}", c) for c, s in zip(expected.concepts, expected.scores)]
    assert picker.value is None


def test_explaining_without_a_picked_concept_is_refused_next_to_explain(handlers, photo):
    with pytest.raises(gr.Error) as err:
        handlers.explain_concept(photo, None, None, request=_request("s1"))
    assert err.value.message == "Choose a concept first."
    assert handlers.error_text("explain")(_request("s1")) == (
        '<div class="action-error" role="alert">&#10060; Choose a concept first.</div>')


# --------------------------------------------------------------------------- errors next to the action


def test_the_error_is_shown_to_the_session_that_caused_it_only(handlers, caplog):
    with caplog.at_level(logging.INFO, logger="skinapp.ui.handlers"), pytest.raises(gr.Error) as err:
        handlers.analyze(None, "lesion", 0.3, 0.25, request=_request("s1"))
    assert (err.value.title, err.value.visible, err.value.print_exception) == ("Cannot do that", False, False)
    message = str(err.value.message)
    assert [r.getMessage() for r in caplog.records] == [f"analyze refused: {message}"]
    assert handlers.error_text("analyze")(_request("s1")) == (
        f'<div class="action-error" role="alert">&#10060; {message}</div>')
    assert handlers.error_text("analyze")(_request("s2")) == (
        '<div class="action-error" role="alert">&#10060; That failed.</div>')
    assert handlers.error_text("explain")(_request("s1")).endswith("That failed.</div>")
    with pytest.raises(gr.Error, match="Upload a photo on the Analyse tab first"):
        handlers.explain(None, "streaks", None, request=_request("s1"))
    assert handlers.error_text("explain")(_request("s1")) == (
        '<div class="action-error" role="alert">&#10060; Upload a photo on the Analyse tab first.</div>')


def test_a_refusal_shows_what_was_typed_but_logs_only_its_shape(handlers, photo, caplog):
    """Typed phrases can carry clinical details (a record number here): the refusal repeats the phrase to the
    session that typed it; the log line keeps the refusal with every quoted span cut out."""
    with caplog.at_level(logging.INFO, logger="skinapp.ui.handlers"), pytest.raises(gr.Error) as err:
        handlers.explain(photo, "0451-7788", None, request=_request("s1"))
    assert "'0451-7788' is not a phrase" in str(err.value.message)
    assert [r.getMessage() for r in caplog.records] == [
        "explain refused: '…' is not a phrase: use words, e.g. '…'."]


def test_loggable_cuts_quoted_spans_not_apostrophes():
    from skinapp.ui.privacy import loggable

    assert loggable("Concept 2 (\"Jane's mole\"): 'relabel' needs a new label.") == (
        "Concept 2 ('…'): '…' needs a new label.")
    assert loggable("got 'a\\'b' and 'c'") == "got '…' and '…'"
    assert loggable("This photo is no longer in the app's memory; upload it again.") == (
        "This photo is no longer in the app's memory; upload it again.")


def test_cleared_empties_every_photo_output_and_its_title():
    out = Handlers.cleared("Working...")
    assert len(out) == 16 and out[11] == "Working..."
    titled = {0: "Concepts", 1: "Diagnosis", 3: "Decisive concept", 8: "Photo with numbered concepts",
              12: "photo / Grad-CAM / Grad E-CLIP / MedGrad E-CLIP"}  # titles without a photo key
    for i, title in titled.items():
        assert out[i] == {"__type__": "update", "value": None, "label": title}, i
    assert [v for i, v in enumerate(out) if i not in (7, 11, *titled)] == [None, "", "", "", "", "", None, "", ""]
    assert list(out[7].columns) == REVIEW_COLUMNS and out[7].empty


def test_failure_text_skips_the_other_outputs(handlers):
    """Wired to a failed event's other outputs, the failure handler leaves their values (gr.skip) and ends
    their red "Error" badge; the message comes last."""
    handlers._refuse("explain", ValueError("No phrase."), _request("s1"))
    out = handlers.error_text("explain", 3)(_request("s1"))
    assert out == ({"__type__": "update"},) * 3 + ('<div class="action-error" role="alert">&#10060; No phrase.</div>',)


# --------------------------------------------------------------------------- review


def test_review_table_rounds_scores_and_starts_pending(handlers, photo):
    handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    concepts = handlers.analyzer.latest_analysis(photo).concepts
    table = review_table(concepts)
    assert table.values.tolist() == [[i, concepts.phrases[i], round(float(concepts.scores[i]), 3), "pending", "", ""]
                                     for i in range(len(concepts))]


def test_save_status_counts_decisions_and_the_list_shows_the_review(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    key, table = out[KEY], out[TABLE].copy()
    n = len(table)
    assert n >= 2
    table.loc[0, "decision"] = "accept"
    table.loc[1, ["decision", "new label"]] = ["relabel", "naevus"]
    status, choices, saved = handlers.save_review(key, table, "dr a", "note")
    review = handlers.store.load(key)
    assert status == (f"Saved version 1 of photo `{key[:12]}` (revision 1) at "
                      f"{time.strftime('%H:%M:%S', time.localtime(review.updated_at))}: 1 accept, 0 reject, "
                      f"1 relabel, {n - 2} pending; 0 edited by hand.")
    assert choices.choices == [(f"{key[:12]} \u00b7 rev 1 \u00b7 {n} concepts \u00b7 "
                                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(review.updated_at))} \u00b7 dr a",
                                key)]
    assert choices.value == key
    result = handlers.analyzer.latest_analysis(photo)
    assert [(c.index, c.phrase, c.score, c.box) for c in review.concepts] == [
        (i, result.concepts.phrases[i], float(result.concepts.scores[i]),
         tuple(float(v) for v in result.concepts.boxes[i])) for i in range(n)]
    assert saved.values.tolist()[1] == [1, result.concepts.phrases[1], round(float(result.concepts.scores[1]), 3),
                                        "relabel", "naevus", ""]
    assert (review.reviewer, review.note, review.prompts) == ("dr a", "note", ["lesion", "arm"])


def test_the_review_list_selects_nothing_until_the_user_picks_a_review(handlers, photo):
    """On page load and Refresh the list offers the saved reviews but preselects none (Reopen must not open the
    latest review nobody chose); after a save the saved review is selected."""
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    _, after_save, _ = handlers.save_review(out[KEY], out[TABLE], "", "")
    assert after_save.value == out[KEY]
    listed = handlers.review_choices()
    assert [value for _, value in listed.choices] == [out[KEY]]
    assert listed.value is None


def test_saving_an_empty_table_says_what_to_do(handlers):
    with pytest.raises(gr.Error) as err:
        handlers.save_review(None, pd.DataFrame(columns=REVIEW_COLUMNS), "", "")
    assert err.value.message == "There are no concepts to review: analyse a photo (or reopen a review) first."


def test_a_table_that_drops_or_doubles_a_concept_is_refused_not_saved_smaller(handlers, photo, monkeypatch):
    """Found by a new user through the API: a table with some rows left out was saved as a smaller review."""
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    table, n = out[TABLE], len(out[TABLE])
    assert n >= 2, "the photo must give two concepts or this test proves nothing"
    expected = (f"The review table has {{}} rows for the {n} concepts of photo {out[KEY][:12]}: keep one row per "
                "concept (leave the ones you have not judged as pending).")
    for rows in (table.iloc[:1], pd.concat([table, table.iloc[:1]])):
        with pytest.raises(gr.Error) as err:
            handlers.save_review(out[KEY], rows, "dr x", "", request=_request())
        assert err.value.message == expected.format(len(rows))
    assert handlers.store.load(out[KEY]) is None
    handlers.save_review(out[KEY], table, "dr x", "")
    saved = handlers.store.load(out[KEY])
    assert [c.index for c in saved.concepts] == list(range(n))
    monkeypatch.setattr(handlers.analyzer, "analyses_of", lambda key: [])  # analysis gone: the amend path
    with pytest.raises(gr.Error) as err:
        handlers.save_review(out[KEY], table.iloc[1:], "dr y", "", request=_request())
    assert err.value.message == expected.format(n - 1)
    assert handlers.store.load(out[KEY]).revision == 1


def test_reopen_shows_each_concept_with_its_final_label_and_decision(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    table = out[TABLE].copy()
    table.loc[0, "decision"] = "accept"
    table.loc[1, ["decision", "new label"]] = ["relabel", "naevus"]
    handlers.save_review(out[KEY], table, "", "")
    phrases = list(table["concept"])
    key, frame, reviewer, note, preview, status = handlers.open_review(out[KEY][:8].upper() + "  ")
    assert key == out[KEY] and (reviewer, note) == ("", "")
    assert status == f"Reopened review of photo `{key[:12]}` (revision 1); edit and press Save to amend it."
    assert preview.label == f"Photo {key[:12]} (saved review, numbered concepts)"
    labels = [a["label"] for a in preview.value["annotations"]]
    assert labels[:2] == [f"#0 {phrases[0]} (accept)", "#1 naevus (relabel)"]
    assert labels[2:] == [f"#{i} {phrases[i]} (pending)" for i in range(2, len(phrases))]


def test_amending_a_reopened_review_keeps_phrase_and_score_from_the_table(handlers, photo, analyzer):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    handlers.save_review(out[KEY], out[TABLE], "", "")
    analyzer.states.clear()  # the app forgot the photo: only the saved review is left
    _, frame, *_ = handlers.open_review(out[KEY])
    frame.loc[0, "decision"] = "reject"
    status, _, _ = handlers.save_review(out[KEY], frame, "dr b", "second look")
    assert "(revision 2)" in status and ": 0 accept, 1 reject, 0 relabel, " in status
    review = handlers.store.load(out[KEY])
    assert [(c.phrase, round(c.score, 3), c.decision) for c in review.concepts][0] == (
        frame.loc[0, "concept"], frame.loc[0, "score"], "reject")
    assert (review.reviewer, review.note) == ("dr b", "second look")


@pytest.mark.parametrize("table, message", [
    (pd.DataFrame([[0, "lesion", 0.5]], columns=["#", "concept", "score"]),
     "The review table lacks the columns ['comment', 'decision', 'new label']."),
    (pd.DataFrame([["first", "lesion", 0.5, "accept", "", ""]], columns=REVIEW_COLUMNS),
     "Row '#' must be a concept number; got 'first'."),
])
def test_a_malformed_table_is_refused_with_what_is_wrong(handlers, photo, table, message):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    with pytest.raises(gr.Error) as err:
        handlers.save_review(out[KEY], table, "", "")
    assert err.value.message == message.format(k=out[KEY][:12])


def test_a_table_as_plain_rows_or_with_blank_rows_is_read(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    rows = out[TABLE].assign(decision="accept").values.tolist()
    blank = [None, None, None, None, None, None]
    status, _, saved = handlers.save_review(out[KEY], rows + [blank], "", "")
    assert f": {len(rows)} accept, 0 reject" in status and len(saved) == len(rows)
    as_api = {"headers": REVIEW_COLUMNS, "data": [[str(r[0]), *r[1:]] for r in rows]}  # "#" as text
    status, _, _ = handlers.save_review(out[KEY].upper(), as_api, "", "")
    assert "(revision 2)" in status


def test_a_score_edited_on_screen_no_longer_matches_the_photo(handlers, photo):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    k = out[KEY][:12]
    edited = out[TABLE].copy()
    edited.loc[0, "score"] = edited.loc[0, "score"] + 0.01
    for bad in (edited, out[TABLE].assign(**{"#": len(out[TABLE])}), out[TABLE].assign(score="high")):
        with pytest.raises(gr.Error) as err:
            handlers.save_review(out[KEY], bad, "", "")
        assert err.value.message == (f"The review table does not belong to photo {k}: analyse that photo again (or "
                                     "reopen its review).")
    nudged = out[TABLE].copy()
    nudged.loc[0, "score"] = nudged.loc[0, "score"] + 0.0009  # within the table's rounding
    assert "(revision 1)" in handlers.save_review(out[KEY], nudged, "", "")[0]


def test_a_photo_the_app_forgot_without_a_saved_review_is_refused(handlers, photo, analyzer):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    analyzer.states.clear()
    with pytest.raises(gr.Error) as err:
        handlers.save_review(out[KEY], out[TABLE], "", "")
    assert err.value.message == (f"Photo {out[KEY][:12]} is no longer in the app's memory and has no saved review; "
                                 "analyse it again before saving.")
    with pytest.raises(gr.Error) as err:
        handlers.save_review("not-a-key", out[TABLE], "", "")
    assert err.value.message == ("Analyse a photo (or reopen a saved review) before saving: the review has no photo "
                                 "key.")


@pytest.mark.parametrize("name, message", [
    ("", "Choose a saved review first."),
    ("abc", "A review is named by its photo key (hexadecimal, at least 8 characters)."),
    ("zzzzzzzzzz", "A review is named by its photo key (hexadecimal, at least 8 characters)."),
    ("0123456789abcdef", "There is no saved review of photo 0123456789ab."),
])
def test_reopening_names_what_is_wrong(handlers, name, message):
    with pytest.raises(gr.Error) as err:
        handlers.open_review(name)
    assert err.value.message == message


def test_export_goes_to_the_asking_session_and_says_what_it_holds(handlers, photo, caplog):
    out = handlers.analyze(photo, "lesion . arm", 0.3, 0.25)
    table = out[TABLE].copy()
    table.loc[0, "decision"] = "accept"
    table.loc[1, "decision"] = "reject"
    handlers.save_review(out[KEY], table, "", "")
    caplog.set_level(logging.DEBUG)
    archive, message = handlers.export_reviews(request=_request("s1", cookie="x=1; skinapp_session=" + "ab12" * 8))
    assert message == ("Exported 1 reviewed concept from 1 photo. The download is for this session only and is "
                       "deleted after the retention time: save it now.")
    token = next(iter(handlers.export_owners))
    assert handlers.export_owners == {token: "ab12" * 8} and token in archive
    assert not [r for r in caplog.records if token in r.getMessage()], "the log names the export's secret token"
    assert sorted(p.suffix for p in handlers.export_dir.rglob("*") if p.is_file()) == [".zip"], "no unzipped copy"


def test_label_positions_put_each_number_deepest_inside_its_mask():
    masks = np.zeros((2, 60, 100), bool)
    masks[0, 10:31, 10:51] = True  # 21 x 41: deepest along its middle row, from 10 px inside its left edge
    masks[1, :, 80:] = True  # touches the photo's border: the border counts as an edge (10 px in from the top)
    assert label_positions(masks, min_gap=5) == [(20, 20), (89, 9)]


def test_imported_masks_are_not_counted_as_edited_by_hand(handlers):
    """Found by a new user: saving a reopened imported review said "2 edited by hand" with nothing edited."""
    from skinapp.review import ConceptReview, Review

    concepts = [ConceptReview(0, "lesion", 0.9, (0, 0, 4, 4), "accept", provenance="imported"),
                ConceptReview(1, "arm", 0.9, (0, 0, 4, 4), "accept", provenance="painted")]
    status = handlers.saved_outputs(Review("ab" * 32, 8, 8, concepts, revision=3, updated_at=0.0))[0]
    assert status.endswith(": 2 accept, 0 reject, 0 relabel, 0 pending; 1 edited by hand, 1 imported.")


def test_the_download_offer_says_when_the_diagnosis_stays_untrained(monkeypatch):
    """The official checkpoints do not include our fusion classifier: after the download the diagnosis is still
    untrained, and the button's text must say so (a new user expected a real diagnosis after it)."""
    from skinapp import provisioning
    from skinapp.ui.blocks import _download_offer

    monkeypatch.setattr(provisioning, "blocker", lambda names: None)
    monkeypatch.setattr(provisioning, "download_size", lambda names: 3 * 2**20)
    demo = SimpleNamespace(mode="demo", reasons={}, analysis_weights=(untrained("fusion"), untrained("vit")))
    monkeypatch.setattr(provisioning, "missing", lambda variant: ["sam_vit_b", "vit_b16_augreg2"])
    assert _download_offer(demo, "vit_b") == (True, (
        "Downloads 2 official checkpoints (3 MiB): sam_vit_b, vit_b16_augreg2. The diagnosis stays untrained after "
        "it: the fusion classifier is trained, not downloaded (README \u2192 Training)."))
    # a release that serves a fusion classifier too (or one already trained): nothing more to say
    monkeypatch.setattr(provisioning, "missing", lambda variant: ["sam_vit_b", "fusion_classifier"])
    assert _download_offer(demo, "vit_b")[1] == (
        "Downloads 2 official checkpoints (3 MiB): sam_vit_b, fusion_classifier.")
    trained = SimpleNamespace(mode="demo", reasons={}, analysis_weights=(WeightsInfo("fusion", True, "f"),))
    monkeypatch.setattr(provisioning, "missing", lambda variant: ["sam_vit_b"])
    assert _download_offer(trained, "vit_b")[1] == "Downloads 1 official checkpoint (3 MiB): sam_vit_b."
