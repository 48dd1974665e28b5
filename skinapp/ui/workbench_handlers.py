"""Handlers of the Review tab's mask workbench and its named API endpoints (thin: the work is in
:class:`skinapp.review.workbench.Workbench`).

Every handler acts on the photo key it is given; edits are kept per (browser or client session, photo key).
UI handlers return component values; the API functions (:meth:`WorkbenchHandlers.api_functions`) return JSON
with masks as COCO RLE (:func:`skinapp.review.export.rle_encode`).
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from skinapp.review.agreement import agreement, merge_notes, summary_lines
from skinapp.review.coco_import import import_coco
from skinapp.review.export import rle_encode
from skinapp.review.store import ConceptReview, Review
from skinapp.review.validation import validate_concept_review
from skinapp.review.workbench import Draft, Workbench
from skinapp.ui.handlers import find_review
from skinapp.ui.privacy import loggable
from skinapp.ui.review_rows import (
    REVIEW_COLUMNS,
    cell_text,
    renamed_message,
    renamed_rows,
    row_index,
    table_rows,
)
from skinapp.ui.workbench_view import SELECTED_COLOUR, concept_json, render
from skinapp.wording import counted

log = logging.getLogger(__name__)


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _key(value: Any) -> str:
    key = str(value or "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{8,63}", key):
        raise ValueError(f"Photo key {key} is cut short: edits need the whole key (64 hexadecimal characters; the "
                         "screen shows the first 12), as /analyze and /open_review return it.")
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ValueError("Analyse a photo (or reopen a saved review) first: there is no photo key.")
    return key


def _api(fn: Callable) -> Callable:
    """An API function whose ValueError reaches the client as its message (gr.Error), logged as one line."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError) as exc:
            log.info("%s refused: %s", fn.__name__, loggable(str(exc)))
            raise gr.Error(str(exc), print_exception=False) from exc
    return call


def _revision(source: str) -> int | None:
    """The revision a draft ``source`` names ("revision 3" -> 3), None for "analysis"."""
    return int(source.split()[1]) if source.startswith("revision ") else None


def _editing(draft: Draft) -> str:
    """The workbench status for a draft just opened: how many concepts, which photo, where it started."""
    revision = _revision(draft.source)
    source = f"saved version {revision}" if revision is not None else "from the analysis, not a saved version"
    return f"Editing {counted(len(draft.concepts), 'concept')} of photo `{draft.image_key[:12]}` ({source})."


class WorkbenchHandlers:
    """UI handlers and API functions over one :class:`Workbench`.

    Args:
        bench: the workbench.
        handlers: the app's :class:`~skinapp.ui.handlers.Handlers` (its ``_refuse``: one log line, the message
            remembered for the failure text; its table save for a photo without edits).
    """

    def __init__(self, bench: Workbench, handlers) -> None:
        self.bench = bench
        self.handlers = handlers
        self._refuse = handlers._refuse
        self.screen = handlers.screen

    def _view(self, key: str, draft: Draft, selected: Any, status: str) -> tuple:
        choices = [(f"#{c.index} {c.phrase} ({c.provenance})", str(c.index)) for c in draft.concepts]
        values = [v for _, v in choices]
        chosen = str(selected) if str(selected) in values else (values[0] if values else None)
        image = gr.Image(value=render(self.bench.pixels(key), draft, chosen),
                         label=f"Photo {key[:12]}: click to refine concept #{chosen}")
        return image, gr.Dropdown(choices=choices, value=chosen), status

    def _run(self, action: str, request, fn, key_value, selected, status) -> tuple:
        """``fn(session, key)`` -> Draft, shown with ``selected`` (a concept number, or a function of the draft)."""
        try:
            key = _key(key_value)
            draft = fn(_session(request), key)
            chosen = selected(draft) if callable(selected) else selected
            return self._view(key, draft, chosen, status(draft) if callable(status) else status)
        except (ValueError, OSError) as exc:
            raise self._refuse(action, exc, request) from exc

    # -- UI -----------------------------------------------------------------------------------
    def start(self, photo_key: str, request: gr.Request | None = None) -> tuple:
        """Show the photo's draft (started from its analysis or saved review). Outputs: image, concept, status."""
        if not str(photo_key or "").strip():
            return None, gr.Dropdown(choices=[], value=None), ""

        def draft(session: str, key: str) -> Draft:  # the review the table shows: the analysis or a saved version
            shown = self.screen.get(request, key)
            history = self.bench.histories.get((session, key))
            if shown is not None and (history is None or history.current.source != shown.source):
                return self.bench.open(session, key, _revision(shown.source))
            return self.bench.draft(session, key)
        return self._run("workbench", request, draft, photo_key, None, _editing)

    def reopen(self, photo_key: str, request: gr.Request | None = None) -> tuple:
        """After Reopen (or an import of the photo shown): the workbench starts again from the photo's latest saved
        version, as the table does; this session's unsaved edits of the photo are dropped. Outputs: image,
        concept, status."""
        def latest(session: str, key: str) -> Draft:
            review = self.bench.store.load(key)
            if review is None:
                raise ValueError(f"There is no saved review of photo {key[:12]}.")
            return self.bench.open(session, key, review.revision)
        return self._run("workbench", request, latest, photo_key, None, _editing)

    def show(self, photo_key: str, concept: Any, request: gr.Request | None = None) -> tuple:
        return self._run("workbench", request, self.bench.draft, photo_key, concept, "")

    def click(self, photo_key: str, concept: Any, mode: str, evt: gr.SelectData,
              request: gr.Request | None = None) -> tuple:
        """A click on the photo: a positive or negative point for the selected concept."""
        x, y = (float(v) for v in evt.index[:2])
        positive = mode != "negative"
        areas: list[int] = []

        def refine(session: str, key: str) -> Draft:
            areas.append(int(self.bench.draft(session, key).concept(concept).mask.sum()))
            draft = self.bench.refine(session, key, concept, x, y, positive)
            areas.append(int(draft.concept(concept).mask.sum()))
            return draft
        return self._run("workbench", request, refine, photo_key, concept,
                         lambda d: f"Concept #{concept}: {'positive' if positive else 'negative'} click at "
                                   f"({x:.0f}, {y:.0f}); mask {areas[0]} -> {areas[1]} px.")

    def undo(self, photo_key: str, concept: Any, request: gr.Request | None = None) -> tuple:
        return self._run("workbench", request, self.bench.undo, photo_key, concept, "Undone.")

    def redo(self, photo_key: str, concept: Any, request: gr.Request | None = None) -> tuple:
        return self._run("workbench", request, self.bench.redo, photo_key, concept, "Redone.")

    def delete(self, photo_key: str, concept: Any, request: gr.Request | None = None) -> tuple:
        return self._run("workbench", request, lambda s, k: self.bench.delete(s, k, concept), photo_key, None,
                         f"Deleted concept #{concept} (Undo brings it back).")

    def add(self, photo_key: str, box_text: str, phrase: str, request: gr.Request | None = None) -> tuple:
        """Add a concept from a box typed as "x0, y0, x1, y1" (pixels) and a phrase."""
        def add(session: str, key: str) -> Draft:
            numbers = re.findall(r"-?\d+(?:\.\d+)?", str(box_text or ""))
            if len(numbers) != 4:
                raise ValueError("Give the new concept's box as four numbers: x0, y0, x1, y1 (pixels).")
            return self.bench.add(session, key, [float(v) for v in numbers], phrase)
        return self._run("workbench", request, add, photo_key, lambda d: d.concepts[-1].index,
                         lambda d: f"Added concept #{d.concepts[-1].index} '{d.concepts[-1].phrase}'.")

    def paint(self, photo_key: str, concept: Any, editor: Any, request: gr.Request | None = None) -> tuple:
        """Apply the brush layer of the image editor: painted pixels become the concept's mask."""
        def paint(session: str, key: str) -> Draft:
            layers = (editor or {}).get("layers") or []
            if not layers or layers[0] is None:
                raise ValueError("Paint the concept on the brush layer first.")
            layer = np.asarray(layers[0])
            mask = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(
                layer.shape[:2] + (-1,)).max(-1) > 0
            return self.bench.paint(session, key, concept, mask)
        return self._run("workbench", request, paint, photo_key, concept, f"Painted concept #{concept}.")

    def brush_canvas(self, photo_key: str, concept: Any, request: gr.Request | None = None) -> dict | None:
        """The image editor's value: the photo as background, the selected concept's mask as the brush layer."""
        try:
            key = _key(photo_key)
            draft = self.bench.draft(_session(request), key)
            c = draft.concept(concept)
        except ValueError:
            return None
        layer = np.zeros((*draft.size, 4), np.uint8)
        layer[c.mask] = (*SELECTED_COLOUR, 255)
        return {"background": self.bench.pixels(key), "layers": [layer], "composite": None}

    def save_review(self, session: str, photo_key: Any, table: Any, reviewer: str, note: str) -> Review:
        """The one save: a new version of the photo's review, with this session's edited masks when it has edits
        (the table's decisions applied to them), else the model's masks (or the reopened review's) with the
        table's decisions (:meth:`skinapp.ui.handlers.Handlers.save_table`). ``table`` None: the draft's decisions.

        Raises:
            ValueError: no photo key, a table of another photo, nothing to save.
        """
        key = _key(photo_key)
        if table is not None and not self.bench.has_edits(session, key):
            return self.handlers.save_table(key, table, reviewer, note)
        draft = self.bench.draft(session, key)
        named = {c.index: (c.phrase, c.score) for c in draft.concepts}
        rows = table_rows(table)  # the review table in any form Gradio or gradio_client sends it
        renamed = renamed_rows([r for r in rows if row_index(r) in named], named)  # rows of deleted concepts: skipped
        if renamed:
            raise ValueError(renamed_message(renamed))
        verdicts = {}
        for row in rows:
            index = row_index(row)
            concept = next((c for c in draft.concepts if c.index == index), None)
            if concept is None:
                continue  # deleted in the editor
            if cell_text(row.get("concept")) != concept.phrase:
                raise ValueError(f"The review table does not belong to photo {key[:12]}: analyse that photo again "
                                 "(or reopen its review).")
            verdicts[index] = (cell_text(row.get("decision")) or "pending", cell_text(row.get("new label")),
                               cell_text(row.get("comment")))
        if verdicts:
            self.bench.set_verdicts(session, key, verdicts)
        return self.bench.save(session, key, reviewer or "", note or "")

    def save(self, photo_key: str, table: Any, reviewer: str, note: str, request: gr.Request | None = None) -> tuple:
        """The Review tab's Save button (API ``/save_review``). Outputs: status, saved reviews, table."""
        try:
            self.screen.check_save(request, _key(photo_key))  # never silently over a version this session missed
            review = self.save_review(_session(request), photo_key, table, reviewer, note)
        except (ValueError, OSError) as exc:
            raise self._refuse("save_review", exc, request) from exc
        self.screen.saved(request, review.image_key, review.revision)
        return self.handlers.saved_outputs(review)

    def table_of_draft(self, photo_key: str, table: Any, request: gr.Request | None = None) -> pd.DataFrame:
        """The review table after a workbench edit (add, delete, undo, redo): one row per concept of the session's
        draft, in order; a concept already in the table keeps its row (the reviewer's decision), an added one gets
        a row with the draft's verdict ('pending'), a deleted one loses its row. The table as given when the
        photo has no draft."""
        try:
            key = _key(photo_key)
            draft = self.bench.draft(_session(request), key)
            rows = {(row_index(r), cell_text(r.get("concept"))): r for r in table_rows(table)}
        except ValueError:
            return table
        return pd.DataFrame([rows.get((c.index, c.phrase)) or {
            "#": c.index, "concept": c.phrase, "score": round(c.score, 3), "decision": c.decision,
            "new label": c.label, "comment": c.comment} for c in draft.concepts], columns=REVIEW_COLUMNS)

    def set_decision(self, table: Any, concept: Any, decision: Any, label: Any, comment: Any,
                     request: gr.Request | None = None) -> tuple:
        """The Review tab's "Set decision for this concept": the table with concept ``concept``'s decision, new label
        and comment set, checked by the rule Save applies (:func:`~skinapp.review.validation.validate_concept_review`),
        and a status line (which replaces a stale refusal). Outputs: table, review status.

        Raises:
            gr.Error: no concept chosen, no such row, a verdict Save would refuse; the table is left as it is.
        """
        try:
            rows = table_rows(table)
            if cell_text(concept).strip() == "":
                raise ValueError("Choose a concept first.")
            wanted = cell_text(concept).strip()
            hit = [i for i, r in enumerate(rows) if wanted in (cell_text(r.get("#")), str(row_index(r)))]
            if not hit:
                raise ValueError(f"There is no concept #{wanted} in this review.")
            row = rows[hit[0]]
            checked = validate_concept_review(ConceptReview(row_index(row), cell_text(row.get("concept")), 0.0,
                                                            (0.0, 0.0, 0.0, 0.0), cell_text(decision) or "pending",
                                                            cell_text(label), cell_text(comment)))
        except ValueError as exc:
            raise self._refuse("set_decision", exc, request) from exc
        frame = pd.DataFrame(rows, columns=REVIEW_COLUMNS)
        frame.loc[hit[0], ["decision", "new label", "comment"]] = [checked.decision, checked.label, checked.comment]
        verdict = checked.decision + (f" as {checked.label!r}" if checked.label else "")
        return frame, (f"Concept #{checked.index} ({checked.phrase!r}): {verdict}. Press Save to store the "
                       "review.")

    def import_coco(self, file: Any, reviewer: str, request: gr.Request | None = None) -> str:
        """Import a COCO file (e.g. from CVAT) as a new version of each photo it annotates; returns the status,
        which names each version's reviewer and where the name came from (the Reviewer box ``reviewer``, else what
        the file records). Everything is checked before anything is saved
        (:func:`skinapp.review.coco_import.import_coco`)."""
        return self._import(file, reviewer, request)[0]

    def import_and_show(self, file: Any, reviewer: str, photo_key: Any, request: gr.Request | None = None) -> tuple:
        """The Review tab's Import: :meth:`import_coco`, the saved-review list refreshed and, when the file gave the
        photo on screen (``photo_key``) a new version, that version in the table, the review status, the review photo
        (as Reopen shows them) and the workbench (:meth:`reopen`). Outputs: import status, saved reviews, table,
        review status, review photo, image, concept, workbench status (the last six skipped when the photo on
        screen is not in the file)."""
        status, done = self._import(file, reviewer, request)
        key = str(photo_key or "").strip().lower()
        review = next((r for r in done.saved if r.image_key == key), None)
        if review is None:
            return status, gr.update(choices=self.handlers.review_choices().choices), *[gr.skip()] * 6
        _, table, _, _, photo, _ = self.handlers.open_review(key, request)  # also: the session now shows it
        shown = (f"Showing version {review.revision} of photo `{key[:12]}`, just imported: the table and the "
                 "workbench show it (unsaved changes to the earlier version were dropped). Edit and press Save to "
                 "amend it.")
        return (status, self.handlers.review_choices(selected=key), table, shown, photo, *self.reopen(key, request))

    def _import(self, file: Any, reviewer: str, request: gr.Request | None) -> tuple[str, Any]:
        path = getattr(file, "name", file)
        if not path:
            raise self._refuse("import_coco", ValueError("Choose a COCO JSON file first."), request)
        typed = (reviewer or "").strip()
        try:
            done = import_coco(self.bench.store, path, reviewer=typed)
        except (ValueError, OSError) as exc:
            raise self._refuse("import_coco", exc, request) from exc
        parts = [f"photo `{r.image_key[:12]}` as version {r.revision} ({counted(len(r.concepts), 'concept')}), "
                 + (f"reviewer '{html.escape(r.reviewer)}'" if r.reviewer else "no reviewer name")
                 for r in done.saved]
        parts += [f"photo `{r.image_key[:12]}` unchanged, already version {r.revision}" for r in done.unchanged]
        status = (("Imported " if done.saved else "Nothing new: ") + "; ".join(parts) + ".") if parts else \
            "Nothing imported."
        if done.saved and typed:
            status += (" The reviewer is the name in the Reviewer box (clear the box before an import to keep the "
                       "names the file records).")
        elif done.saved:
            status += " The Reviewer box is empty: each version keeps the reviewer the file records."
            if not all(r.reviewer for r in done.saved):
                status += " A version without a reviewer name is left out of the agreement between reviewers."
        if done.skipped:
            status += (f" Skipped {counted(len(done.skipped), 'photo')} without annotations (their reviews are "
                       "unchanged): " + ", ".join(f"`{k[:12]}`" for k in done.skipped) + ".")
        return status, done

    def version_choices(self, photo_key: str) -> gr.Dropdown:
        try:
            versions = self.bench.store.versions(_key(photo_key))
        except ValueError:
            versions = []
        return gr.Dropdown(choices=[(f"v{v.revision} \u00b7 {v.reviewer or '(unnamed)'} \u00b7 "
                                     f"{counted(len(v.concepts), 'concept')}", str(v.revision)) for v in versions],
                           value=str(versions[0].revision) if versions else None)

    def open_version(self, photo_key: str, revision: Any, request: gr.Request | None = None) -> tuple:
        try:
            number = int(str(revision))
        except ValueError:
            raise self._refuse("workbench", ValueError("Choose a saved version first."), request) from None
        return self._run("workbench", request, lambda s, k: self.bench.open(s, k, number), photo_key, None,
                         f"Opened version {number}: edits start from it.")

    # -- API ----------------------------------------------------------------------------------
    def api_functions(self) -> dict[str, Any]:
        """{api_name: function} for ``gr.api``: JSON in, JSON out (masks as RLE)."""
        bench = self.bench

        def refine(photo_key: str, concept: int, x: float, y: float, positive: bool = True,
                   request: gr.Request = None) -> dict:
            """One click on a concept; returns the photo's concepts (masks as COCO RLE)."""
            return concept_json(bench.refine(_session(request), _key(photo_key), concept, x, y, positive))

        def add_concept(photo_key: str, x0: float, y0: float, x1: float, y1: float, phrase: str,
                        request: gr.Request = None) -> dict:
            """Add a concept from a pixel box and a phrase; returns the photo's concepts."""
            return concept_json(bench.add(_session(request), _key(photo_key), (x0, y0, x1, y1), phrase))

        def delete_concept(photo_key: str, concept: int, request: gr.Request = None) -> dict:
            """Delete a concept; returns the remaining concepts."""
            return concept_json(bench.delete(_session(request), _key(photo_key), concept))

        def undo_edit(photo_key: str, request: gr.Request = None) -> dict:
            return concept_json(bench.undo(_session(request), _key(photo_key)))

        def save_version(photo_key: str, reviewer: str = "", note: str = "", request: gr.Request = None) -> dict:
            """The Save button without a table: a new version (edited masks if any, else the model's) with the
            editor's decisions; returns its revision and provenance."""
            review = self.save_review(_session(request), photo_key, None, reviewer, note)
            return {"photo_key": review.image_key, "revision": review.revision,
                    "provenance": {str(c.index): c.provenance for c in review.concepts}}

        def versions(photo_key: str, with_masks: bool = False) -> list:
            """Every saved version of the photo's review, newest first (masks as RLE when asked); the photo named by
            its key or a unique prefix of 8+ characters, as for /open_review."""
            key = find_review(bench.store, photo_key)
            return [{"revision": v.revision, "reviewer": v.reviewer, "saved_at": v.updated_at, "note": v.note,
                     "concepts": [{"index": c.index, "phrase": c.phrase, "decision": c.decision, "label": c.label,
                                   "comment": c.comment, "provenance": c.provenance,
                                   **({"mask": rle_encode(bench.store.load_mask(key, c.index, v.version))}
                                      if with_masks else {})} for c in v.concepts]}
                    for v in bench.store.versions(key)]

        def reviewer_agreement() -> dict:
            """Per reviewer pair: photos, concepts, mean mask IoU, Cohen's kappa (NaN as null)."""
            latest = bench.store.latest_by_reviewer()
            _, pairs = agreement(bench.store, latest)
            return {"lines": summary_lines(pairs) + merge_notes(latest),
                    "pairs": [{"reviewer_a": p.reviewer_a, "reviewer_b": p.reviewer_b, "n_photos": p.n_photos,
                               "n_concepts": p.n_concepts, "n_decided": p.n_decided, "mean_iou": p.mean_iou,
                               "kappa": None if np.isnan(p.kappa) else p.kappa} for p in pairs]}

        functions = {"refine": refine, "add_concept": add_concept, "delete_concept": delete_concept,
                     "undo_edit": undo_edit, "save_version": save_version, "versions": versions,
                     "agreement": reviewer_agreement}
        return {name: _api(fn) for name, fn in functions.items()}
