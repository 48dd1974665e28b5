"""The Gradio Blocks layout: Analyse, Explain and Review tabs wired to :class:`~skinapp.ui.handlers.Handlers`.

Named API endpoints (usable from ``gradio_client``): ``/analyze``, ``/explain``, ``/save_review``,
``/open_review``, ``/list_reviews``, ``/export_reviews``. ``gr.State`` holds only the photo's key
(``LoadedImage.key``); gradio_client leaves State out, so the API endpoints name the photo by the
image input instead (the per-photo cache makes that cheap: the photo's hash finds its analysis).
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.examples import example_paths
from skinapp.pipeline import SUGGESTED_PHRASES, Analyzer, banner_text
from skinapp.review import DECISIONS, ReviewStore
from skinapp.ui.components import photo_input
from skinapp.ui.handlers import REVIEW_COLUMNS, Handlers, banner_html

CSS = """
.untrained-banner { box-shadow: 0 0 0 3px #ffcdd2; }
.untrained-banner, .untrained-banner * { color: #fff !important; }
.weights-ok { color: #2e7d32; font-size: 0.9em; }
"""

#: Model events share one concurrency group: at most this many run at once (Gradio's queue).
MODEL_CONCURRENCY = 1


def build_demo(analyzer: Analyzer, store: ReviewStore, *, gpu: Callable[[Callable], Callable] | None = None,
               model_concurrency: int = MODEL_CONCURRENCY, delete_cache: tuple[int, int] = (300, 600)) -> gr.Blocks:
    """Build the app.

    Args:
        analyzer: the loaded models.
        store: the review store.
        gpu: a decorator for GPU handlers (``spaces.GPU`` on Hugging Face Spaces), or None.
        model_concurrency: concurrent model events (Gradio queue concurrency limit).
        delete_cache: (every, older than) seconds: Gradio's temporary files (uploads, outputs) are deleted.
    """
    h = Handlers(analyzer, store)
    wrap = gpu or (lambda fn: fn)
    start_banner = _start_banner(analyzer)
    phrase_examples = [[p] for group in SUGGESTED_PHRASES.values() for p in group]

    with gr.Blocks(title="skinapp \u2014 skin photo concepts, diagnosis and explanations",
                   delete_cache=delete_cache) as demo:
        photo_key = gr.State(None)
        gr.Markdown("## skinapp \u2014 visual concepts, fused diagnosis and phrase explanations for skin photos")
        gr.HTML(start_banner, elem_id="startup-banner")

        with gr.Tab("Analyse", id="analyse"):
            with gr.Row():
                with gr.Column(scale=2):
                    image = photo_input(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                                     height=360, elem_id="photo")
                    examples = example_paths()
                    photo_examples = gr.Examples([[str(p)] for p in examples], inputs=[image], label="Example photos",
                                                 cache_examples=False) if examples else None
                    with gr.Accordion("Advanced: prompts and thresholds", open=False):
                        prompts = gr.Textbox(label="Concept prompts (separated by '.' or ',')",
                                             value=" . ".join(DEFAULT_PROMPTS), lines=2)
                        box_t = gr.Slider(0.05, 0.95, value=analyzer.box_threshold, step=0.01,
                                          label="Box threshold")
                        text_t = gr.Slider(0.05, 0.95, value=analyzer.text_threshold, step=0.01,
                                           label="Text threshold")
                    analyse_btn = gr.Button("Analyse", variant="primary", elem_id="analyse-btn")
                with gr.Column(scale=3):
                    banner = gr.HTML(elem_id="analysis-banner")
                    annotated = gr.AnnotatedImage(label="Concepts", height=360, elem_id="concepts")
                    diagnosis = gr.Label(label="Diagnosis", num_top_classes=5, elem_id="diagnosis")
            with gr.Row():
                cam_plot = gr.Plot(label="CAM: concept x class", elem_id="cam-plot")
                with gr.Column():
                    decisive_img = gr.Image(label="Decisive concept", interactive=False, elem_id="decisive")
                    decisive_txt = gr.Markdown(elem_id="decisive-text")
            details = gr.Markdown(elem_id="analysis-details")

        with gr.Tab("Explain", id="explain"), gr.Row():
            with gr.Column(scale=1):
                phrases = gr.Textbox(label="Diagnostic phrases (one per line)", lines=5,
                                     value="irregular streaks\nblue-whitish veil\nulcer with undermined edges",
                                     elem_id="phrases")
                clip_choice = gr.Radio(analyzer.clip_choices, value=analyzer.clip_choices[0],
                                       label="CLIP weights", visible=len(analyzer.clip_choices) > 1)
                explain_btn = gr.Button("Explain", variant="primary", elem_id="explain-btn")
                gr.Examples(phrase_examples, inputs=[phrases], label="Suggested phrases (7-point checklist, PH2, "
                            "NTD)", examples_per_page=8)
            with gr.Column(scale=3):
                explain_banner = gr.HTML()
                gallery = gr.Gallery(label="photo / Grad-CAM / Grad E-CLIP / MedGrad E-CLIP", columns=4,
                                     object_fit="contain", height=700, elem_id="heatmaps")
                sims = gr.Dataframe(headers=["phrase", "CLIP similarity"], label="CLIP similarity",
                                    interactive=False)

        with gr.Tab("Review", id="review"):
            gr.Markdown("For each concept of the current photo set **decision** to one of "
                        f"{', '.join(d for d in DECISIONS if d != 'pending')} (relabel needs a new label) and add a "
                        "comment if useful. The photo and its masks are stored only when you save.")
            with gr.Row():
                with gr.Column(scale=3):
                    table = gr.Dataframe(headers=REVIEW_COLUMNS, interactive=True, static_columns=[0, 1, 2],
                                         label="Concepts", elem_id="review-table")
                    with gr.Row():
                        reviewer = gr.Textbox(label="Reviewer", scale=1)
                        note = gr.Textbox(label="Note on the photo", scale=2)
                    with gr.Row():
                        accept_all = gr.Button("Mark all pending as accepted")
                        save_btn = gr.Button("Save review", variant="primary", elem_id="save-review")
                    review_status = gr.Markdown(elem_id="review-status")
                with gr.Column(scale=2):
                    saved = gr.Dropdown(label="Saved reviews", choices=[], interactive=True)
                    with gr.Row():
                        refresh_btn = gr.Button("Refresh list")
                        open_btn = gr.Button("Reopen")
                    preview = gr.AnnotatedImage(label="Reopened review")
                    export_btn = gr.Button("Export reviewed concepts (COCO JSON + PNG masks)")
                    export_file = gr.File(label="Export", interactive=False)
                    export_status = gr.Markdown()

        model_events = {"concurrency_id": "models", "concurrency_limit": model_concurrency}
        analyse_outputs = [annotated, diagnosis, cam_plot, decisive_img, decisive_txt, banner, photo_key, table,
                           review_status, details]
        analyse_inputs = [image, prompts, box_t, text_t]
        analyse_btn.click(wrap(h.analyze), analyse_inputs, analyse_outputs, api_name="analyze", **model_events)
        image.upload(wrap(h.analyze), analyse_inputs, analyse_outputs, api_visibility="private", **model_events)
        if photo_examples is not None:  # clicking an example photo analyses it too
            photo_examples.load_input_event.then(wrap(h.analyze), analyse_inputs, analyse_outputs,
                                                 api_visibility="private", **model_events)
        explain_btn.click(wrap(h.explain), [photo_key, image, phrases, clip_choice], [gallery, sims, explain_banner],
                          api_name="explain", **model_events)
        save_btn.click(h.save_review, [photo_key, image, table, reviewer, note], [review_status, saved, table],
                       api_name="save_review")
        accept_all.click(_accept_all, [table], [table], api_visibility="private")
        refresh_btn.click(h.review_choices, None, [saved], api_name="list_reviews")
        open_btn.click(h.open_review, [saved], [photo_key, table, reviewer, note, preview, review_status],
                       api_name="open_review")
        export_btn.click(h.export_reviews, None, [export_file, export_status], api_name="export_reviews")
        demo.load(h.review_choices, None, [saved], api_visibility="private")
    return demo


def _start_banner(analyzer: Analyzer) -> str:
    weights = (*analyzer.analysis_weights, *(b.weights for b in analyzer.clips.values()))
    text = ""
    if not all(w.trained for w in weights):
        text = banner_text(weights, [r for items in analyzer.reasons.values() for r in items])
        text += "\nDemo mode: see the README for how to download or train real weights."
    return banner_html(text, weights)


def _accept_all(table):
    frame = table.copy()
    if "decision" in frame:
        frame.loc[frame["decision"].isin(["", "pending"]) | frame["decision"].isna(), "decision"] = "accept"
    return frame
