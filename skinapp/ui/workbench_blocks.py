"""The Review tab's mask workbench (layout and events) and its named API endpoints.

Called inside the Review tab by :func:`skinapp.ui.blocks.build_demo`; the handlers are
:class:`skinapp.ui.workbench_handlers.WorkbenchHandlers`. API endpoints (``gradio_client``): ``/refine``,
``/add_concept``, ``/delete_concept``, ``/undo_edit``, ``/save_version``, ``/versions``, ``/agreement``.
The Review tab's one Save button (API ``/save_review``; ``/save_version`` is the same save without a table) is
wired here: it saves the edited masks when the session has edits, else the model's masks
(:meth:`WorkbenchHandlers.save_review`). Under the workbench, the agreement panel
(:class:`skinapp.ui.agreement_handlers.AgreementHandlers`) compares the photo's reviewers and exports the CSV.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from skinapp.ui.agreement_handlers import AGREEMENT_COLUMNS, AgreementHandlers
from skinapp.ui.components import quiet_validation
from skinapp.ui.workbench_handlers import WorkbenchHandlers


def add_workbench(wb: WorkbenchHandlers, agree: AgreementHandlers, error_text, review_key: Any, table: Any,
                  reviewer: Any, note: Any, saved: Any, save_btn: Any, review_status: Any, verdict: tuple,
                  reopen: Any, review_image: Any) -> None:
    """Lay out the workbench and agreement panel under the review table and wire their events and the Save button
    (see the module docstring). ``verdict``: (the "Set decision" button, concept #, decision, new label, comment),
    wired to :meth:`WorkbenchHandlers.set_decision` (its refusal in ``review_status``). ``reopen``: the Reopen
    event, after which the workbench starts again from the reopened version (:meth:`WorkbenchHandlers.reopen`).
    ``review_image``: the review photo, which an import of the photo on screen updates."""
    private = {"api_visibility": "private"}
    with gr.Accordion("Edit masks: click to refine, brush, add or delete concepts, undo (Save keeps the edits)",
                      open=True, elem_id="workbench"):
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(label="Click on the photo to refine the selected concept", interactive=False,
                                 elem_id="wb-image", height=420, buttons=[])
            with gr.Column(scale=2):
                concept = quiet_validation(gr.Dropdown(label="Concept to edit", choices=[], elem_id="wb-concept"),
                                           "workbench")
                mode = quiet_validation(gr.Radio(["positive", "negative"], value="positive", label="A click marks",
                                                 elem_id="wb-mode"), "workbench")
                with gr.Row():
                    undo = gr.Button("Undo", elem_id="wb-undo", size="sm")
                    redo = gr.Button("Redo", elem_id="wb-redo", size="sm")
                    delete = gr.Button("Delete concept", elem_id="wb-delete", size="sm", variant="stop")
                with gr.Row():
                    box = gr.Textbox(label="New concept box x0, y0, x1, y1 (pixels)", elem_id="wb-box", scale=2)
                    phrase = gr.Textbox(label="Phrase", value="lesion", elem_id="wb-phrase", scale=1)
                add = gr.Button("Add concept", elem_id="wb-add", size="sm")
                status = gr.Markdown(elem_id="wb-status")
                with gr.Row():
                    versions = quiet_validation(gr.Dropdown(label="Saved versions of this photo", choices=[],
                                                            elem_id="wb-versions", scale=2), "workbench")
                    open_version = gr.Button("Open version", elem_id="wb-open-version", scale=1, size="sm")
        with gr.Accordion("Brush / eraser: paint the selected concept's mask", open=False):
            editor = gr.ImageEditor(label="Brush layer = the concept's mask", elem_id="wb-editor", type="numpy",
                                    sources=[], transforms=[], height=420,
                                    brush=gr.Brush(colors=["#00c8ff"], color_mode="fixed"))
            with gr.Row():
                load_brush = gr.Button("Load the selected concept into the brush", size="sm")
                apply_brush = gr.Button("Apply the painting", size="sm", elem_id="wb-apply-brush")

    with gr.Accordion("Agreement between reviewers of this photo", open=False, elem_id="agreement"):
        with gr.Row():
            compare = gr.Button("Compare reviewers", size="sm", elem_id="agreement-btn")
            export = gr.Button("Download agreement CSV (all photos)", size="sm", elem_id="agreement-csv-btn")
        agreement_status = gr.Markdown(elem_id="agreement-status")
        agreement_table = gr.Dataframe(headers=AGREEMENT_COLUMNS, interactive=False, elem_id="agreement-table")
        agreement_file = gr.File(label="Agreement CSV (this session only, temporary)", interactive=False)

    with gr.Accordion("Import annotations (COCO JSON, e.g. from CVAT, or an export zip) as new versions", open=False,
                      elem_id="coco-import"):
        with gr.Row():
            coco_file = gr.File(label="COCO file or export zip", file_types=[".json", ".zip"], elem_id="coco-file")
            import_btn = gr.Button("Import", size="sm", elem_id="coco-import-btn")
        import_status = gr.Markdown(elem_id="coco-import-status")

    view = [image, concept, status]

    def failed(event, action: str, outputs: list, shown_in) -> None:
        """This session's refusal in ``shown_in``; the other outputs keep their values, without Gradio's badge."""
        others = [o for o in outputs if o is not shown_in]
        event.failure(error_text(action, len(others)), None, [*others, shown_in], **private, queue=False,
                      show_progress="hidden")

    def on_failure(event) -> None:
        failed(event, "workbench", view, status)

    on_failure(reopen.success(wb.reopen, [review_key], view, **private))
    review_key.change(wb.start, [review_key], view, **private).then(wb.version_choices, [review_key], [versions],
                                                                    **private)
    # another photo (or none): the agreement shown was the previous photo's
    review_key.change(no_agreement, None, [agreement_table, agreement_status], **private, queue=False)
    concept.input(wb.show, [review_key, concept], view, **private)
    on_failure(image.select(wb.click, [review_key, concept, mode], view, **private))
    for edit in (undo.click(wb.undo, [review_key, concept], view, **private),
                 redo.click(wb.redo, [review_key, concept], view, **private),
                 delete.click(wb.delete, [review_key, concept], view, **private),
                 add.click(wb.add, [review_key, box, phrase], view, **private)):
        on_failure(edit)  # the table follows the draft's concepts (an added one as 'pending')
        edit.success(wb.table_of_draft, [review_key, table], [table], **private, queue=False)
    apply_btn, *verdict_inputs = verdict
    setting = apply_btn.click(wb.set_decision, [table, *verdict_inputs], [table, review_status], **private,
                              queue=False)
    failed(setting, "set_decision", [table, review_status], review_status)
    saving = save_btn.click(wb.save, [review_key, table, reviewer, note], [review_status, saved, table],
                            api_name="save_review")
    failed(saving, "save_review", [review_status, saved, table], review_status)
    saving.success(wb.version_choices, [review_key], [versions], **private)
    for outputs, event in (([agreement_table, agreement_status],
                            compare.click(agree.photo, [review_key], [agreement_table, agreement_status], **private)),
                           ([agreement_file, agreement_status],
                            export.click(agree.export_csv, None, [agreement_file, agreement_status], **private))):
        failed(event, "agreement", outputs, agreement_status)
    shown = [import_status, saved, table, review_status, review_image, *view]  # the photo shows what was imported
    importing = import_btn.click(wb.import_and_show, [coco_file, reviewer, review_key], shown, **private)
    failed(importing, "import_coco", shown, import_status)
    importing.success(wb.version_choices, [review_key], [versions], **private)
    on_failure(open_version.click(wb.open_version, [review_key, versions], view, **private))
    load_brush.click(wb.brush_canvas, [review_key, concept], [editor], **private)
    on_failure(apply_brush.click(wb.paint, [review_key, concept, editor], view, **private))
    for name, fn in wb.api_functions().items():
        gr.api(fn, api_name=name)


def no_agreement() -> tuple:
    """The agreement panel emptied: a table with its columns and no rows, no status."""
    return pd.DataFrame(columns=AGREEMENT_COLUMNS), ""
