"""The Review tab's mask workbench (layout and events) and its named API endpoints.

Called inside the Review tab by :func:`skinapp.ui.blocks.build_demo`; the handlers are
:class:`skinapp.ui.workbench_handlers.WorkbenchHandlers`. API endpoints (``gradio_client``): ``/refine``,
``/add_concept``, ``/delete_concept``, ``/undo_edit``, ``/save_version``, ``/versions``, ``/agreement``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from skinapp.ui.workbench_handlers import WorkbenchHandlers


def add_workbench(wb: WorkbenchHandlers, error_text, review_key: Any, table: Any, reviewer: Any, note: Any,
                  saved: Any, review_choices) -> None:
    """Lay out the workbench under the review table and wire its events (see the module docstring)."""
    private = {"api_visibility": "private"}
    with gr.Accordion("Edit masks: click to refine, brush, add or delete concepts, undo; save a version",
                      open=True, elem_id="workbench"):
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(label="Click on the photo to refine the selected concept", interactive=False,
                                 elem_id="wb-image", height=420, buttons=[])
            with gr.Column(scale=2):
                concept = gr.Dropdown(label="Concept to edit", choices=[], elem_id="wb-concept")
                mode = gr.Radio(["positive", "negative"], value="positive", label="A click marks",
                                elem_id="wb-mode")
                with gr.Row():
                    undo = gr.Button("Undo", elem_id="wb-undo", size="sm")
                    redo = gr.Button("Redo", elem_id="wb-redo", size="sm")
                    delete = gr.Button("Delete concept", elem_id="wb-delete", size="sm", variant="stop")
                with gr.Row():
                    box = gr.Textbox(label="New concept box x0, y0, x1, y1 (pixels)", elem_id="wb-box", scale=2)
                    phrase = gr.Textbox(label="Phrase", value="lesion", elem_id="wb-phrase", scale=1)
                add = gr.Button("Add concept", elem_id="wb-add", size="sm")
                save = gr.Button("Save version (edited masks + decisions)", variant="primary", elem_id="wb-save")
                status = gr.Markdown(elem_id="wb-status")
                with gr.Row():
                    versions = gr.Dropdown(label="Saved versions of this photo", choices=[], elem_id="wb-versions",
                                           scale=2)
                    open_version = gr.Button("Open version", elem_id="wb-open-version", scale=1, size="sm")
        with gr.Accordion("Brush / eraser: paint the selected concept's mask", open=False):
            editor = gr.ImageEditor(label="Brush layer = the concept's mask", elem_id="wb-editor", type="numpy",
                                    sources=[], transforms=[], height=420,
                                    brush=gr.Brush(colors=["#00c8ff"], color_mode="fixed"))
            with gr.Row():
                load_brush = gr.Button("Load the selected concept into the brush", size="sm")
                apply_brush = gr.Button("Apply the painting", size="sm", elem_id="wb-apply-brush")

    view = [image, concept, status]

    def on_failure(event) -> None:
        event.failure(error_text("workbench"), None, [status], **private, queue=False)

    review_key.change(wb.start, [review_key], view, **private).then(wb.version_choices, [review_key], [versions],
                                                                    **private)
    concept.input(wb.show, [review_key, concept], view, **private)
    on_failure(image.select(wb.click, [review_key, concept, mode], view, **private))
    on_failure(undo.click(wb.undo, [review_key, concept], view, **private))
    on_failure(redo.click(wb.redo, [review_key, concept], view, **private))
    on_failure(delete.click(wb.delete, [review_key, concept], view, **private))
    on_failure(add.click(wb.add, [review_key, box, phrase], view, **private))
    saving = save.click(wb.save, [review_key, table, reviewer, note], [status], **private)
    on_failure(saving)
    saving.success(wb.version_choices, [review_key], [versions], **private).then(review_choices, None, [saved],
                                                                                   **private)
    on_failure(open_version.click(wb.open_version, [review_key, versions], view, **private))
    load_brush.click(wb.brush_canvas, [review_key, concept], [editor], **private)
    on_failure(apply_brush.click(wb.paint, [review_key, concept, editor], view, **private))
    for name, fn in wb.api_functions().items():
        gr.api(fn, api_name=name)
