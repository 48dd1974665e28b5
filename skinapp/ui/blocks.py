"""The Gradio Blocks layout: Analyse, Explain and Review tabs wired to :class:`~skinapp.ui.handlers.Handlers`.

Named API endpoints (usable from ``gradio_client``; the README lists their inputs and outputs):
``/analyze``, ``/explain``, ``/concept_scores``, ``/save_review``, ``/open_review``, ``/list_reviews``,
``/export_reviews``, and the mask workbench's (:mod:`skinapp.ui.workbench_blocks`).
No ``gr.State`` holds a photo: Analyse and Explain act on the Photo input, Review on the photo key shown
next to the review table (set together with the table by an analysis or a reopened review).

The Review tab has one Save (:meth:`WorkbenchHandlers.save <skinapp.ui.workbench_handlers.WorkbenchHandlers.save>`):
the edited masks when the session has edits, else the model's.

Every action first clears what it will replace (panel titles that name a photo included) and shows its status
next to its button; a failed action leaves its message there (``.failure``) until the next action, and its other
outputs get no red "Error" badge: the message next to the button says it once.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from skinapp import provisioning
from skinapp.concept_scores import DEFAULT_CONCEPTS
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.examples import example_paths
from skinapp.models import FUSION_CHECKPOINT
from skinapp.phrases import SUGGESTED_PHRASES
from skinapp.pipeline import Analyzer
from skinapp.provenance import banner_text
from skinapp.review import DECISIONS, ReviewStore
from skinapp.review.workbench import Workbench
from skinapp.ui.agreement_handlers import AgreementHandlers
from skinapp.ui.components import photo_input, quiet_validation
from skinapp.ui.handlers import BLANK_TITLES, REVIEW_COLUMNS, Handlers, banner_html
from skinapp.ui.workbench_blocks import add_workbench
from skinapp.ui.workbench_handlers import WorkbenchHandlers
from skinapp.wording import counted

CSS = """
.untrained-banner, .untrained-banner * { color: #fff !important; }
.weights-ok { color: #2e7d32; font-size: 0.9em; }
.action-error { color: #b00020; font-weight: 600; }
#heatmaps .caption-label, #heatmaps figcaption { white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; unicode-bidi: plaintext; }
"""

#: Model events share one concurrency group: at most this many run at once (Gradio's queue).
MODEL_CONCURRENCY = 1


def build_demo(analyzer: Analyzer, store: ReviewStore, *, gpu: Callable[[Callable], Callable] | None = None,
               model_concurrency: int = MODEL_CONCURRENCY, delete_cache: tuple[int, int] = (300, 600),
               export_dir: str | Path | None = None, export_owners: dict[str, str | None] | None = None,
               sam_variant: str = "vit_b") -> gr.Blocks:
    """Build the app.

    Args:
        analyzer: the loaded models.
        store: the review store.
        gpu: a decorator for GPU handlers (``spaces.GPU`` on Hugging Face Spaces), or None.
        model_concurrency: concurrent model events (Gradio queue concurrency limit).
        delete_cache: (every, older than) seconds: Gradio's own sweep of its temporary files.
        export_dir, export_owners: see :class:`~skinapp.ui.handlers.Handlers`.
        sam_variant: the SAM the "Download the real models" button fetches and loads.
    """
    h = Handlers(analyzer, store, export_dir=export_dir, export_owners=export_owners)
    wrap = gpu or (lambda fn: fn)
    phrase_examples = [[p] for group in SUGGESTED_PHRASES.values() for p in group]

    with gr.Blocks(title="skinapp \u2014 skin photo concepts, diagnosis and explanations",
                   delete_cache=delete_cache) as demo:
        start_banner = gr.HTML(_start_banner(analyzer), elem_id="startup-banner")
        can_download, offer = _download_offer(analyzer, sam_variant)
        with gr.Row():
            download_btn = gr.Button("Download the real models", elem_id="download-models", visible=can_download,
                                     size="sm", scale=0, min_width=220)
            download_status = gr.Markdown(offer, elem_id="download-status")

        with gr.Tab("Analyse", id="analyse"):
            with gr.Row():
                with gr.Column(scale=2):
                    image = photo_input(label="Photo", sources=["upload", "webcam", "clipboard"], height=300,
                                        elem_id="photo")
                    with gr.Row():
                        analyse_btn = gr.Button("Analyse", variant="primary", elem_id="analyse-btn", scale=1)
                        analyse_status = gr.Markdown(elem_id="analyse-status")
                    examples = example_paths()
                    photo_examples = gr.Examples([[str(p)] for p in examples], inputs=[image], label="Example photos",
                                                 cache_examples=False) if examples else None
                    with gr.Accordion("Advanced: prompts and thresholds", open=False):
                        prompts = gr.Textbox(label="Concept prompts (separated by '.' or ',')",
                                             value=" . ".join(DEFAULT_PROMPTS), lines=2)
                        box_t = quiet_validation(gr.Slider(0.05, 0.95, value=analyzer.box_threshold, step=0.01,
                                                           label="Box threshold"), "analyze")
                        text_t = quiet_validation(gr.Slider(0.05, 0.95, value=analyzer.text_threshold, step=0.01,
                                                            label="Text threshold"), "analyze")
                with gr.Column(scale=3):
                    # the API's copy of the banner; on screen the one banner at the top says it
                    banner = gr.HTML(elem_id="analysis-banner", visible=False)
                    diagnosis = gr.Label(label=BLANK_TITLES["diagnosis"], num_top_classes=3, elem_id="diagnosis")
                    annotated = gr.AnnotatedImage(label=BLANK_TITLES["concepts"], height=300, elem_id="concepts")
            with gr.Row():
                cam_plot = gr.Plot(label="CAM: concept x class", elem_id="cam-plot", show_label=False)
                with gr.Column():
                    decisive_txt = gr.Markdown(elem_id="decisive-text")
                    # no label or toolbar over the image: they would hide the burned-in warning strip
                    decisive_img = gr.Image(label=BLANK_TITLES["decisive"], interactive=False, elem_id="decisive",
                                            show_label=False, buttons=[])
            details = gr.Markdown(elem_id="analysis-details")

        with gr.Tab("Explain", id="explain"), gr.Row():
            with gr.Column(scale=1):
                phrases = gr.Textbox(label="Diagnostic phrases (one per line)", lines=5,
                                     value="irregular streaks\nblue-whitish veil\nulcer with undermined edges",
                                     elem_id="phrases")
                clip_choice = quiet_validation(gr.Radio(analyzer.clip_choices, value=analyzer.clip_choices[0],
                                                        label="CLIP weights",
                                                        visible=len(analyzer.clip_choices) > 1), "explain")
                gr.Markdown(clip_info(analyzer), elem_id="clip-info")
                explain_btn = gr.Button("Explain the photo on the Analyse tab", variant="primary",
                                        elem_id="explain-btn")
                explain_status = gr.Markdown(elem_id="explain-status")
                gr.Examples(phrase_examples, inputs=[phrases], label="Suggested phrases (7-point checklist, PH2, "
                            "NTD)", examples_per_page=8)
            with gr.Column(scale=3):
                explain_banner = gr.HTML(visible=False)  # the API's copy; the top banner says it on screen
                gallery = gr.Gallery(label=BLANK_TITLES["gallery"], columns=4,
                                     object_fit="contain", height="auto", elem_id="heatmaps", show_label=False)
                sims = gr.Dataframe(headers=["photo", "phrase", "CLIP similarity", "note"], label="CLIP similarity",
                                    interactive=False, elem_id="similarities")
                with gr.Accordion("Concept scores: the photo's CLIP similarity to dermatology concepts",
                                  open=True), gr.Row():
                    with gr.Column(scale=1):
                        concept_list = gr.Textbox(label="Concepts (one per line; 7-point checklist and clinical "
                                                  "descriptors by default)", value="\n".join(DEFAULT_CONCEPTS),
                                                  lines=8, elem_id="concept-list")
                        concept_btn = gr.Button("Score concepts", elem_id="concept-btn")
                        concept_status = gr.Markdown(elem_id="concept-status")
                    with gr.Column(scale=2):
                        concept_plot = gr.Plot(label="Concept scores", show_label=False, elem_id="concept-plot")
                        concept_pick = gr.Radio([], label="Click a concept to explain it with the three methods",
                                                elem_id="concept-pick")

        with gr.Tab("Review", id="review"):
            with gr.Row():
                with gr.Column(scale=2):
                    review_image = gr.AnnotatedImage(label=BLANK_TITLES["review_image"], height=380,
                                                     elem_id="review-image")
                    review_key = gr.Textbox(label="Photo key (the photo this review belongs to)", interactive=False,
                                            elem_id="review-key")
                with gr.Column(scale=3):
                    table = gr.Dataframe(headers=REVIEW_COLUMNS, interactive=False, label="Concepts",
                                         elem_id="review-table", wrap=True)
                    with gr.Row():
                        pick = gr.Dropdown(label="Concept #", choices=[], allow_custom_value=True, scale=1,
                                           elem_id="pick-concept")
                        decision = quiet_validation(gr.Dropdown(list(DECISIONS), value="accept", label="Decision",
                                                                scale=1, elem_id="pick-decision"), "set_decision")
                        new_label = gr.Textbox(label="New label (relabel)", scale=1)
                    comment = gr.Textbox(label="Comment", lines=2)
                    with gr.Row():
                        apply_btn = gr.Button("Set decision for this concept", elem_id="apply-verdict")
                        accept_all = gr.Button("Mark all pending as accepted")
                    with gr.Row():
                        reviewer = gr.Textbox(label="Reviewer", scale=1)
                        note = gr.Textbox(label="Note on the photo", scale=2)
                    save_btn = gr.Button("Save", variant="primary", elem_id="save-review")
                    review_status = gr.Markdown(elem_id="review-status")
            with gr.Row():
                saved = gr.Dropdown(label="Saved reviews", choices=[], interactive=True, allow_custom_value=True,
                                    elem_id="saved-reviews")
                with gr.Column():
                    refresh_btn = gr.Button("Refresh list")
                    open_btn = gr.Button("Reopen", elem_id="reopen")
                with gr.Column():
                    export_btn = gr.Button("Export reviewed concepts (COCO JSON + PNG masks)")
                    export_file = gr.File(label="Export (this session only, temporary)", interactive=False)
                    export_status = gr.Markdown()
            wb = WorkbenchHandlers(Workbench(analyzer, store), h)
            agree = AgreementHandlers(store, h._refuse, h.export_dir, h.export_owners)
            reopened = [review_key, table, reviewer, note, review_image, review_status]
            reopening = open_btn.click(h.open_review, [saved], reopened, api_name="open_review")
            add_workbench(wb, agree, h.error_text, review_key, table, reviewer, note, saved, save_btn, review_status,
                          verdict=(apply_btn, pick, decision, new_label, comment), reopen=reopening,
                          review_image=review_image)

        model_events = {"concurrency_id": "models", "concurrency_limit": model_concurrency}
        # chained model steps: a new request while one runs is served when it ends, with the inputs then shown
        latest_wins = {**model_events, "trigger_mode": "always_last"}
        analyse_outputs = [annotated, diagnosis, cam_plot, decisive_img, decisive_txt, banner, review_key, table,
                           review_image, review_status, details, analyse_status]
        cleared = [*analyse_outputs, gallery, sims, explain_banner, explain_status]
        analyse_inputs = [image, prompts, box_t, text_t]

        def on_failure(event, action: str, outputs: list, status) -> None:
            """Show this session's refusal of ``action`` in ``status``; the event's other outputs keep their
            values and lose Gradio's red "Error" badge (the message next to the button says it once)."""
            others = [o for o in outputs if o is not status]
            event.failure(h.error_text(action, len(others)), None, [*others, status], api_visibility="private",
                          queue=False, show_progress="hidden")

        explain = explain_btn.click(lambda: (None, None, "", "Explaining\u2026"), None,
                                    [gallery, sims, explain_banner, explain_status], api_visibility="private",
                                    queue=False, show_progress="hidden")
        explain = explain.then(wrap(h.explain), [image, phrases, clip_choice],
                               [gallery, sims, explain_banner, explain_status], api_name="explain", **latest_wins)
        on_failure(explain, "explain", [gallery, sims, explain_banner, explain_status], explain_status)

        scores = concept_btn.click(lambda: _no_concept_scores("Scoring\u2026"), None,
                                   [concept_plot, concept_pick, concept_status], api_visibility="private",
                                   queue=False, show_progress="hidden")
        scores = scores.then(wrap(h.concept_scores), [image, concept_list, clip_choice],
                             [concept_plot, concept_pick, concept_status], api_name="concept_scores", **latest_wins)
        on_failure(scores, "concept_scores", [concept_plot, concept_pick, concept_status], concept_status)
        picked = concept_pick.input(lambda: (None, None, "", "Explaining\u2026"), None,
                                    [gallery, sims, explain_banner, explain_status], api_visibility="private",
                                    queue=False, show_progress="hidden")
        picked = picked.then(wrap(h.explain_concept), [image, concept_pick, clip_choice],
                             [gallery, sims, explain_banner, explain_status], api_visibility="private", **latest_wins)
        on_failure(picked, "explain", [gallery, sims, explain_banner, explain_status], explain_status)

        # A new photo (upload, button, example, clear) cancels explain / concept-score work still pending for the
        # previous one, so its heatmaps never land under the new photo. A photo uploaded while an analysis runs is
        # analysed when that one ends ("always_last" on the chained model steps: Gradio's default "once" skips a
        # chained step whose last run is still queued, which left the previous photo's results under the new one
        # for good); until then the panels are titled with the photo they show.
        earlier_photo_work = [explain, scores, picked]

        def analyse_after(trigger, api_name: str | None) -> None:
            """Clear every photo-derived output, then analyse; a failure stays next to the button."""
            names = {"api_name": api_name} if api_name else {"api_visibility": "private"}
            event = trigger(lambda: h.cleared("Analysing\u2026"), None, cleared, api_visibility="private",
                            queue=False, show_progress="hidden", cancels=earlier_photo_work)
            trigger(_no_concept_scores, None, [concept_plot, concept_pick, concept_status], api_visibility="private",
                    queue=False, show_progress="hidden")  # the concept panel is photo-derived too
            event = event.then(wrap(h.analyze), analyse_inputs, analyse_outputs, **names, **latest_wins)
            on_failure(event, "analyze", analyse_outputs, analyse_status)

        analyse_after(analyse_btn.click, "analyze")
        analyse_after(image.upload, None)
        image.clear(lambda: h.cleared(""), None, cleared, api_visibility="private", queue=False,
                    cancels=earlier_photo_work)
        image.clear(_no_concept_scores, None, [concept_plot, concept_pick, concept_status], api_visibility="private",
                    queue=False)
        if photo_examples is not None:  # clicking an example photo analyses it too
            analyse_after(photo_examples.load_input_event.then, None)

        table.change(_concept_choices, [table], [pick], api_visibility="private", queue=False)
        accept_all.click(_accept_all, [table], [table], api_visibility="private")
        refresh_btn.click(h.review_choices, None, [saved], api_name="list_reviews")
        on_failure(reopening, "open_review", reopened, review_status)
        export = export_btn.click(h.export_reviews, None, [export_file, export_status], api_name="export_reviews")
        on_failure(export, "export_reviews", [export_file, export_status], export_status)
        demo.load(h.review_choices, None, [saved], api_visibility="private")

        # Demo mode: download the real models and swap them in; every page load shows the models now served.
        banner_outputs = [start_banner, download_btn, download_status, clip_choice]

        def download_models(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's progress idiom)
            message = provisioning.hot_swap(analyzer, sam_variant=sam_variant, progress=progress)
            return _banner_state(analyzer, sam_variant, message)

        download_btn.click(lambda: "Downloading\u2026", None, [download_status], api_visibility="private",
                           queue=False, show_progress="hidden").then(
            download_models, None, banner_outputs, api_name="download_models", concurrency_id="provision",
            concurrency_limit=1)
        demo.load(lambda: _banner_state(analyzer, sam_variant), None, banner_outputs, api_visibility="private")
    return demo


def _download_offer(analyzer: Analyzer, sam_variant: str) -> tuple[bool, str]:
    """(show the download button, the text beside it). No button in full mode, when nothing downloadable is
    missing (what is left is ours to train: the banner says so), or where a download cannot work (the text
    says exactly why)."""
    if analyzer.mode == "full":
        return False, ""
    names = provisioning.missing(sam_variant)
    if not names:
        return False, ""
    size = provisioning.download_size(names) / 2**20
    why_not = provisioning.blocker(names)
    if why_not:
        return False, f"The real models cannot be downloaded here: {why_not}."
    failed = " ".join(analyzer.reasons.get("download", []))  # the start-up download that failed, and why
    offer = f"Downloads {counted(len(names), 'official checkpoint')} ({size:,.0f} MiB): {', '.join(names)}."
    fusion_trained = any(w.name == "fusion" and w.trained for w in analyzer.analysis_weights)
    if not fusion_trained and FUSION_CHECKPOINT not in names:  # ours to train: no download brings it
        offer += (" The diagnosis stays untrained after it: the fusion classifier is trained, not downloaded "
                  "(README \u2192 Training).")
    return True, f"{failed} {offer}".strip()


def _banner_state(analyzer: Analyzer, sam_variant: str, message: str | None = None) -> tuple:
    """Values of the start banner, the download button, its text and the CLIP choice, for the models now served."""
    can_download, offer = _download_offer(analyzer, sam_variant)
    choices = analyzer.clip_choices
    return (_start_banner(analyzer), gr.Button(visible=can_download), message or offer,
            gr.Radio(choices=choices, value=choices[0], visible=len(choices) > 1))


def _start_banner(analyzer: Analyzer) -> str:
    weights = (*analyzer.analysis_weights, *(b.weights for b in analyzer.clips.values()))
    text = ""
    if not all(w.trained for w in weights):
        text = banner_text(weights, [r for items in analyzer.reasons.values() for r in items])
        text += "\nDemo mode: see the README for how to download or train real weights."
    return banner_html(text, weights)


def _no_concept_scores(status: str = "") -> tuple:
    """Empty concept panel: no chart, no choices, ``status``."""
    return None, gr.Radio(choices=[], value=None), status


def clip_info(analyzer: Analyzer) -> str:
    """Markdown: each offered CLIP choice with its licence, then the notes (untrained demo, refused checkpoints)."""
    lines = [f"- **{choice}**: licence {bundle.licence or 'n/a (random demo weights)'}"
             for choice, bundle in analyzer.clips.items()]
    lines += [f"- {html.escape(reason)}" for reason in analyzer.reasons.get("clip", [])]  # refusals say "refused"
    return "CLIP weights for Explain and concept scores:\n\n" + "\n".join(lines)


def _concept_choices(table) -> gr.Dropdown:
    rows = [] if table is None or "#" not in getattr(table, "columns", []) else table.to_dict("records")
    choices = [(f"#{r['#']} {r['concept']}", str(r["#"])) for r in rows if str(r.get("#", "")) != ""]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


def _accept_all(table):
    frame = table.copy()
    if "decision" in frame:
        frame.loc[frame["decision"].isin(["", "pending"]) | frame["decision"].isna(), "decision"] = "accept"
    return frame
