"""Event handlers: turn pipeline / review-store results into Gradio component values.

Each handler is a plain method (testable without a browser) that acts on the photo it is given: the
Analyse and Explain handlers on the photo input, the Review handlers on the photo key that travels with
the review table. Nothing about "the current photo" is kept per session; the only shared state is the
Analyzer's cache keyed by the photo's content. Every result names the photo it was computed for by its
short key (:func:`short_key`).

Bad input raises ``gr.Error`` with the pipeline's readable message, logged as one line without file
names (no traceback); the UI shows the message next to the action until the next action.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from skinapp.cache import LRUCache
from skinapp.drawing import numbered_photo
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo
from skinapp.results import METHOD_TITLES, AnalysisResult
from skinapp.review import ConceptReview, Review, ReviewStore, export_zip
from skinapp.review.validation import EDITED_BY_HAND
from skinapp.ui.figures import cam_figure, concept_figure
from skinapp.ui.privacy import loggable, new_export_path, session_cookie
from skinapp.ui.review_rows import (
    REVIEW_COLUMNS,
    cell_text,
    covers,
    renamed_message,
    renamed_rows,
    row_index,
    rows_match,
    table_rows,
)
from skinapp.ui.review_sync import ScreenState
from skinapp.wording import counted

log = logging.getLogger(__name__)

#: Opacity of the concept masks drawn over the photo (Gradio uses the mask value as alpha).
MASK_OPACITY = 0.5
#: Characters of the photo key shown on screen.
SHORT_KEY = 12
#: Titles of the photo-derived panels before any photo is analysed; :meth:`Handlers.cleared` restores them, so a
#: title naming the last photo never stays over the next one.
BLANK_TITLES = {"concepts": "Concepts", "diagnosis": "Diagnosis", "decisive": "Decisive concept",
                "review_image": "Photo with numbered concepts",
                "gallery": "photo / Grad-CAM / Grad E-CLIP / MedGrad E-CLIP"}
#: Where the README explains how to get real weights (the banner's one pointer).
WEIGHTS_HELP = "README \u2192 Real weights (python -m skinapp.checkpoints download ...)"
#: Added when the fusion classifier is untrained: no download brings it.
TRAINING_HELP = "; the fusion classifier is trained, not downloaded: README \u2192 Training"


def find_review(store: ReviewStore, key: Any) -> str:
    """The full key of the saved review ``key`` names: the full key, or a unique prefix of 8+ hex characters (the
    screen shows 12).

    Raises:
        ValueError: no key, not hexadecimal, no saved review or several starting with it.
    """
    key = cell_text(key).strip().lower()
    if not key:
        raise ValueError("Choose a saved review first.")
    if not re.fullmatch(r"[0-9a-f]{8,64}", key):
        raise ValueError("A review is named by its photo key (hexadecimal, at least 8 characters).")
    matches = [r.image_key for r in store.list_reviews() if r.image_key.startswith(key)]
    if not matches:
        raise ValueError(f"There is no saved review of photo {short_key(key)}.")
    if len(matches) > 1:
        raise ValueError(f"Several saved reviews start with {key}; give more of the key.")
    return matches[0]


def short_key(key: str) -> str:
    return key[:SHORT_KEY]


def banner_html(banner: str, weights: tuple[WeightsInfo, ...]) -> str:
    """One concise red banner when ``banner`` is set (the warning, which models, one link); else a quiet line."""
    if not banner:
        used = "; ".join(html.escape(w.describe()) for w in weights)
        return f'<div class="weights-ok">Weights used: {used}</div>'
    bad = [w.name for w in weights if not w.trained]
    which = f"Untrained: {html.escape(', '.join(dict.fromkeys(bad)))}. " if bad else ""
    return (f'<div class="untrained-banner" role="alert" style="background:#b00020;color:#fff;padding:8px 14px;'
            f'border-radius:6px;"><b style="font-size:1.15em;">&#9888; {html.escape(banner.splitlines()[0])}</b>'
            f'<span style="font-size:0.9em;margin-left:10px;">{which}How to fix: {html.escape(WEIGHTS_HELP)}'
            f'{html.escape(TRAINING_HELP) if "fusion" in bad else ""}</span></div>')


def review_table(concepts) -> pd.DataFrame:
    rows = [[i, concepts.phrases[i], round(float(concepts.scores[i]), 3), "pending", "", ""]
            for i in range(len(concepts))]
    return pd.DataFrame(rows, columns=REVIEW_COLUMNS)


def _photo_key(value: Any) -> str:
    key = cell_text(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ValueError("Analyse a photo (or reopen a saved review) before saving: the review has no photo key.")
    return key


class Handlers:
    """The app's event handlers over one :class:`Analyzer` and one :class:`ReviewStore`.

    Args:
        analyzer: the loaded models.
        store: where reviews go.
        export_dir: a temporary folder for review exports (swept by the app's retention).
        export_owners: {export token: session cookie}, shared with :class:`~skinapp.ui.privacy.ExportGuard`.
    """

    def __init__(self, analyzer: Analyzer, store: ReviewStore, export_dir: str | Path | None = None,
                 export_owners: dict[str, str | None] | None = None):
        self.analyzer = analyzer
        self.store = store
        self.export_dir = Path(export_dir) if export_dir else Path(tempfile.gettempdir()) / "skinapp-exports"
        self.export_owners = export_owners if export_owners is not None else {}
        self._errors: LRUCache[str] = LRUCache(1024)  # (session, action) -> the last error message shown
        self.screen = ScreenState(store)  # what each session's Review tab shows (the workbench and Save read it)

    # -- errors -------------------------------------------------------------------------------
    def _refuse(self, action: str, exc: Exception, request: gr.Request | None) -> gr.Error:
        """A user error: one log line (no file names, no traceback), remembered for :meth:`error_text`."""
        message = str(exc)
        log.info("%s refused: %s", action, loggable(message))
        session = getattr(request, "session_hash", None)
        if session:
            self._errors.put((session, action), message)
        return gr.Error(message, title="Cannot do that", print_exception=False, visible=False)

    def error_text(self, action: str, skipped: int = 0):
        """A handler for ``.failure``: the message of this session's failed ``action``, shown next to it.

        With ``skipped`` > 0 it returns ``skipped`` ``gr.skip()`` before the message: wired to the failed event's
        other outputs, this ends their "Error" status (Gradio marks every output of a failed event with a red
        badge) and leaves their values as they are.
        """
        def show(request: gr.Request):
            message = self._errors.get((getattr(request, "session_hash", None), action))
            text = f'<div class="action-error" role="alert">&#10060; {html.escape(message or "That failed.")}</div>'
            return (*[gr.skip()] * skipped, text) if skipped else text
        return show

    # -- analyse ------------------------------------------------------------------------------
    @staticmethod
    def cleared(status: str = "") -> tuple:
        """Empty values for every photo-derived output (analysis, review, explain), and ``status``.

        Order: annotated, diagnosis, CAM plot, decisive image, decisive text, banner, review key, review table,
        review image, review status, details, analyse status, gallery, similarities, explain banner, explain status.
        Panels whose title names a photo get their blank title back (``BLANK_TITLES``).
        """
        def blank(name: str) -> dict:
            return gr.update(value=None, label=BLANK_TITLES[name])

        empty = pd.DataFrame(columns=REVIEW_COLUMNS)
        return (blank("concepts"), blank("diagnosis"), None, blank("decisive"), "", "", "", empty,
                blank("review_image"), "", "", status, blank("gallery"), None, "", "")

    def analyze(self, image: Any, prompts: str, box_threshold: float, text_threshold: float,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
                request: gr.Request | None = None) -> tuple:
        """Analyse the photo given. Outputs: annotated image, diagnosis, CAM plot, decisive image, decisive
        text, banner, photo key, review table, review image, review status, details, analyse status."""
        try:
            result = self.analyzer.analyze(image, prompts, box_threshold, text_threshold, progress=progress)
        except ValueError as exc:
            raise self._refuse("analyze", exc, request) from exc
        p, k = result.prediction, short_key(result.image_key)
        self.screen.shown(request, result.image_key, "analysis")
        untrained = bool(result.banner)
        fig = cam_figure(p.cam, result.cam_rows, p.class_names, p.predicted_index, result.decisive_row,
                         untrained=untrained, photo=k)
        label_title = f"Diagnosis \u00b7 photo {k}" + (f" \u2014 {UNTRAINED_WARNING}" if untrained else "")
        times = ", ".join(f"{name} {v:.2f}s" for name, v in result.timings.items())
        notes = "; ".join(n.rstrip(".") for n in result.notes)  # fragments ("converted from CMYK") and sentences
        found = counted(len(result.concepts), "concept")
        details = (f"**Photo** `{k}` ({result.image.width}x{result.image.height}), {found} "
                   f"({result.concepts.source}). **Timings:** {times}."
                   + (f"\n\n**Notes:** {html.escape(notes)}." if notes else ""))
        masks = [(m * MASK_OPACITY, t) for m, t in result.annotations]
        numbered = [(m * MASK_OPACITY, f"#{i} {result.concepts.phrases[i]}") for i, (m, _) in
                    enumerate(result.annotations)]
        status = f"Analysed photo `{k}`: {found}, '{p.predicted}'."
        if notes:
            status += f" Note: {html.escape(notes)}."
        return (
            gr.AnnotatedImage(value=(result.image.pixels, masks),
                              label=f"Concepts ({len(result.concepts)}) \u00b7 photo {k}"
                              + (" \u2014 untrained" if untrained else "")),
            # untrained: the bars without the big headline class, which reads like a diagnosis
            gr.Label(value=result.class_probabilities(), label=label_title, show_heading=not untrained),
            fig,
            gr.Image(value=result.decisive_image, label=f"Decisive concept \u00b7 photo {k}"),
            f"Photo `{k}`: {result.decisive_text}",
            banner_html(result.banner, result.weights),
            result.image_key,
            review_table(result.concepts),
            gr.AnnotatedImage(value=(numbered_photo(result.image.pixels, result.concepts.masks,
                                                    list(range(len(result.concepts)))), numbered),
                              label=f"Photo {k} with numbered concepts"),
            f"{found} of photo `{k}` ready for review; nothing is stored until you press Save.",
            details,
            status,
        )

    # -- explain ------------------------------------------------------------------------------
    def explain(self, image: Any, phrases: str, clip_choice: str | None,
                progress: gr.Progress = gr.Progress(),  # noqa: B008
                request: gr.Request | None = None) -> tuple:
        """Heatmaps for the photo given. Outputs: gallery (row per phrase: photo, Grad-CAM, Grad E-CLIP,
        MedGrad E-CLIP), similarities, banner, status."""
        try:
            if image is None:
                raise ValueError("Upload a photo on the Analyse tab first.")
            result = self.analyzer.explain(image, phrases, clip_choice or None, progress=progress)
        except ValueError as exc:
            raise self._refuse("explain", exc, request) from exc
        k = short_key(result.image_key)
        similarity = np.round(result.similarities.astype(np.float64), 4)
        cut = [result.truncation_note(t) for t in range(len(result.phrases))]
        sims = pd.DataFrame({"photo": k, "phrase": result.phrases, "CLIP similarity": similarity,
                             "note": cut})
        titles = " / ".join(["photo", *(METHOD_TITLES.get(m, m) for m in result.methods)])
        status = (f"Explained {counted(len(result.phrases), 'phrase')} for photo `{k}` with CLIP weights "
                  f"{result.clip_label} ({', '.join(f'{name} {v:.2f}s' for name, v in result.timings.items())}).")
        for phrase, note in zip(result.phrases, cut):
            if note:
                status += (f"\n\n&#9888; '{html.escape(phrase[:60])}\u2026' is longer than CLIP's "
                           f"{result.context_length}-token text input: only its start was used {note}.")
        return (gr.Gallery(value=result.gallery(), label=f"Photo {k}: {titles}"), sims,
                banner_html(result.banner, result.weights), status)

    # -- concept scores -----------------------------------------------------------------------
    def concept_scores(self, image: Any, concepts: str, clip_choice: str | None,
                       request: gr.Request | None = None) -> tuple:
        """Score the concepts for the photo given. Outputs: bar chart, concept picker, status."""
        try:
            if image is None:
                raise ValueError("Upload a photo on the Analyse tab first.")
            result = self.analyzer.concept_scores(image, concepts, clip_choice or None)
        except ValueError as exc:
            raise self._refuse("concept_scores", exc, request) from exc
        k = short_key(result.image_key)
        fig = concept_figure(result.concepts, result.scores, result.producer, untrained=bool(result.banner), photo=k)
        status = (f"Scored {counted(len(result.concepts), 'concept')} for photo `{k}`. {html.escape(result.producer)}. "
                  "Click a concept to explain it.")
        return fig, gr.Radio(choices=result.choices(), value=None), status

    def explain_concept(self, image: Any, concept: str | None, clip_choice: str | None,
                        progress: gr.Progress = gr.Progress(),  # noqa: B008
                        request: gr.Request | None = None) -> tuple:
        """Explain one chosen concept with the three methods: the :meth:`explain` outputs."""
        if not concept:
            raise self._refuse("explain", ValueError("Choose a concept first."), request)
        return self.explain(image, concept, clip_choice, progress=progress, request=request)

    # -- review -------------------------------------------------------------------------------
    def save_review(self, photo_key: str | None, table: Any, reviewer: str, note: str,
                    request: gr.Request | None = None) -> tuple:
        """Save the review of the photo ``photo_key`` names with the model's masks (see :meth:`save_table`).

        Outputs: status, review list, table. (The Review tab's Save button goes through
        :meth:`skinapp.ui.workbench_handlers.WorkbenchHandlers.save`, which saves the edited masks when there are
        edits and calls :meth:`save_table` otherwise.)
        """
        try:
            review = self.save_table(photo_key, table, reviewer, note)
        except ValueError as exc:
            raise self._refuse("save_review", exc, request) from exc
        return self.saved_outputs(review)

    def save_table(self, photo_key: str | None, table: Any, reviewer: str, note: str) -> Review:
        """Save the table's verdicts with the model's masks (a fresh analysis) or amend the photo's saved review.

        The table must belong to that photo: its rows name the photo's concepts by number, phrase and score, one
        row per concept (a concept dropped or doubled is refused, not saved as a smaller review); otherwise (and for
        a photo neither in memory nor saved) ValueError with a message for the UI.
        """
        rows = table_rows(table)
        if not rows:
            raise ValueError("There are no concepts to review: analyse a photo (or reopen a review) first.")
        for row in rows:  # a row that names no concept number is the user's edit to point at, not a foreign table
            row_index(row)
        key = _photo_key(photo_key)
        result = next((a for a in self.analyzer.analyses_of(key)
                       if rows_match(rows, a.concepts.phrases, [float(s) for s in a.concepts.scores])), None)
        saved = self.store.load(key)
        if result is not None and covers(rows, range(len(result.concepts.phrases))):
            return self.store.save(key, result.image.pixels, result.concepts.masks,
                                   [self._verdict(r, result) for r in rows], reviewer=reviewer or "",
                                   note=note or "", prompts=list(result.prompts))
        saved_match = saved is not None and rows_match(rows, *self._saved_concepts(saved))
        if saved_match and covers(rows, [c.index for c in saved.concepts]):
            return self.store.amend(key, [self._verdict(r, None) for r in rows], reviewer or "", note or "")
        if result is not None or saved_match:
            n = len(result.concepts.phrases) if result is not None else len(saved.concepts)
            raise ValueError(f"The review table has {len(rows)} rows for the {n} concepts of photo {short_key(key)}: "
                             "keep one row per concept (leave the ones you have not judged as pending).")
        named = [{i: (p, float(s)) for i, (p, s) in enumerate(zip(a.concepts.phrases, a.concepts.scores))}
                 for a in self.analyzer.analyses_of(key)] + ([{c.index: (c.phrase, c.score) for c in saved.concepts}]
                                                             if saved is not None else [])
        renamed = next((r for r in (renamed_rows(rows, concepts) for concepts in named) if r), None)
        if renamed:  # this photo's table with the concept column edited (an API client can)
            raise ValueError(renamed_message(renamed))
        if named:
            raise ValueError(f"The review table does not belong to photo {short_key(key)}: analyse that photo "
                             "again (or reopen its review).")
        raise ValueError(f"Photo {short_key(key)} is no longer in the app's memory and has no saved review; "
                         "analyse it again before saving.")

    def saved_outputs(self, review: Review) -> tuple:
        """(status, review list, table) after a save: the version, the decisions, how many masks a person edited."""
        counts = {d: sum(c.decision == d for c in review.concepts) for d in ("accept", "reject", "relabel", "pending")}
        edited = sum(c.provenance in EDITED_BY_HAND for c in review.concepts)
        imported = sum(c.provenance == "imported" for c in review.concepts)
        status = (f"Saved version {review.revision} of photo `{short_key(review.image_key)}` (revision "
                  f"{review.revision}) at {time.strftime('%H:%M:%S', time.localtime(review.updated_at))}: "
                  + ", ".join(f"{n} {d}" for d, n in counts.items()) + f"; {edited} edited by hand"
                  + (f", {imported} imported." if imported else "."))
        return status, self.review_choices(selected=review.image_key), self._review_frame(review)

    @staticmethod
    def _saved_concepts(review: Review) -> tuple[list[str], list[float]]:
        phrases: dict[int, str] = {c.index: c.phrase for c in review.concepts}
        scores: dict[int, float] = {c.index: c.score for c in review.concepts}
        n = max(phrases, default=-1) + 1
        return [phrases.get(i, "\0") for i in range(n)], [round(scores.get(i, -9.0), 3) for i in range(n)]

    def _verdict(self, row: dict[str, Any], result: AnalysisResult | None) -> ConceptReview:
        index = row_index(row)
        if result is not None:
            c = result.concepts
            phrase, score, box = c.phrases[index], float(c.scores[index]), tuple(float(v) for v in c.boxes[index])
        else:
            phrase, score, box = cell_text(row.get("concept")), float(row.get("score") or 0.0), (0.0, 0.0, 0.0, 0.0)
        return ConceptReview(index=index, phrase=phrase, score=score, box=box,
                             decision=cell_text(row.get("decision")) or "pending",
                             label=cell_text(row.get("new label")), comment=cell_text(row.get("comment")))

    def _review_frame(self, review: Review) -> pd.DataFrame:
        rows = [[c.index, c.phrase, round(c.score, 3), c.decision, c.label, c.comment] for c in review.concepts]
        return pd.DataFrame(rows, columns=REVIEW_COLUMNS)

    def review_choices(self, selected: str | None = None) -> gr.Dropdown:
        choices = [(f"{short_key(r.image_key)} \u00b7 rev {r.revision} \u00b7 {counted(len(r.concepts), 'concept')} "
                    "\u00b7 "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r.updated_at))}"
                    + (f" \u00b7 {r.reviewer}" if r.reviewer else ""), r.image_key)
                   for r in self.store.list_reviews()]
        return gr.Dropdown(choices=choices, value=selected if selected else None)

    def open_review(self, image_key: str | None, request: gr.Request | None = None) -> tuple:
        """Reopen a saved review. Outputs: photo key, table, reviewer, note, photo with masks, status."""
        try:
            key = find_review(self.store, image_key)
            review = self.store.load(key)
            if review is None:
                raise ValueError("That review no longer exists.")
            photo = self.store.load_photo(key)
            masks = [self.store.load_mask(key, c.index, review.version) for c in review.concepts]
            annotations = [(m.astype(np.float32) * MASK_OPACITY,
                            f"#{c.index} {c.final_label or c.phrase} ({c.decision})")
                           for m, c in zip(masks, review.concepts)]
            photo = numbered_photo(photo, masks, [c.index for c in review.concepts])
        except (ValueError, OSError) as exc:
            raise self._refuse("open_review", exc, request) from exc
        k = short_key(key)
        self.screen.shown(request, key, f"revision {review.revision}", review.revision)
        status = f"Reopened review of photo `{k}` (revision {review.revision}); edit and press Save to amend it."
        return (key, self._review_frame(review), review.reviewer, review.note,
                gr.AnnotatedImage(value=(photo, annotations), label=f"Photo {k} (saved review, numbered concepts)"),
                status)

    def export_reviews(self, request: gr.Request | None = None) -> tuple:
        """Export every saved review (COCO JSON with RLE masks + PNG masks, zipped) for this session only.

        Outputs: file, status. The archive is temporary (deleted after the app's retention); only the session
        that asked may download it (see :class:`~skinapp.ui.privacy.ExportGuard`).
        """
        reviews = self.store.list_reviews()
        if not reviews:
            raise self._refuse("export_reviews", ValueError("No reviews have been saved yet."), request)
        owner = session_cookie(request.headers.get("cookie")) if request is not None else None
        target = new_export_path(self.export_dir, self.export_owners, owner)
        archive = export_zip(self.store, target.parent)
        shutil.move(str(archive), target)
        shutil.rmtree(archive.with_suffix(""), ignore_errors=True)  # the unzipped copy
        n = sum(1 for r in reviews for c in r.concepts if c.final_label)
        what = f"{counted(n, 'reviewed concept')} from {counted(len(reviews), 'photo')}"
        return str(target), (f"Exported {what}. The download is for this session only and is deleted after the "
                             "retention time: save it now.")
