"""Event handlers: turn pipeline / review-store results into Gradio component values.

Each handler is a plain method (testable without a browser). Bad input raises ``gr.Error`` with the
pipeline's own readable message; the app stays responsive. The only per-session state is the
photo key (``LoadedImage.key``) the UI keeps in ``gr.State``.
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from skinapp.pipeline import METHOD_TITLES, AnalysisResult, Analyzer
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo
from skinapp.review import ConceptReview, ReviewStore, export_zip
from skinapp.ui.figures import cam_figure

log = logging.getLogger(__name__)

#: Opacity of the concept masks drawn over the photo (Gradio uses the mask value as alpha).
MASK_OPACITY = 0.5

REVIEW_COLUMNS = ["#", "concept", "score", "decision", "new label", "comment"]


def banner_html(banner: str, weights: tuple[WeightsInfo, ...]) -> str:
    """An unmissable red banner when ``banner`` is set; else a quiet line naming the weights used."""
    used = "; ".join(html.escape(w.describe()) for w in weights)
    if not banner:
        return f'<div class="weights-ok">Weights used: {used}</div>'
    lines = banner.split("\n")
    details = "<br>".join(html.escape(line) for line in lines[1:])
    return (f'<div class="untrained-banner" role="alert" style="background:#b00020;color:#fff;padding:14px 18px;'
            f'border-radius:8px;border:4px solid #ff5252;">'
            f'<div style="font-size:1.6em;font-weight:800;letter-spacing:0.03em;color:#fff;">'
            f'&#9888; {html.escape(lines[0])}'
            f'</div><div style="font-size:0.9em;margin-top:6px;color:#fff;">{details}</div></div>')


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), title="Cannot do that")


def review_table(result: AnalysisResult) -> pd.DataFrame:
    c = result.concepts
    rows = [[i, c.phrases[i], round(float(c.scores[i]), 3), "pending", "", ""] for i in range(len(c))]
    return pd.DataFrame(rows, columns=REVIEW_COLUMNS)


def _table_rows(table: Any) -> list[dict[str, Any]]:
    """Rows of the review table as dicts, whatever form Gradio or gradio_client gives it in."""
    if table is None:
        return []
    if isinstance(table, dict):  # gradio_client: {"headers": [...], "data": [[...]]}
        table = pd.DataFrame(table.get("data") or [], columns=table.get("headers") or REVIEW_COLUMNS)
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table, columns=REVIEW_COLUMNS)
    missing = set(REVIEW_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"The review table lacks the columns {sorted(missing)}.")
    rows = []
    for rec in table.to_dict("records"):
        if rec.get("#") in (None, "") or (isinstance(rec.get("#"), float) and np.isnan(rec["#"])):
            continue
        rows.append(rec)
    return rows


def _rows_match(rows: list[dict[str, Any]], result: AnalysisResult) -> bool:
    """True when every table row names a concept of ``result`` by its index and phrase."""
    phrases = result.concepts.phrases
    for row in rows:
        try:
            index = int(row["#"])
        except (TypeError, ValueError):
            return False
        if not 0 <= index < len(phrases) or _text(row.get("concept")) != phrases[index]:
            return False
    return True


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


class Handlers:
    """The app's event handlers over one :class:`Analyzer` and one :class:`ReviewStore`.

    Args:
        analyzer: the loaded models.
        store: where reviews go.
        export_dir: where review exports are written (default: ``<store data dir>/exports``).
    """

    def __init__(self, analyzer: Analyzer, store: ReviewStore, export_dir: str | Path | None = None):
        self.analyzer = analyzer
        self.store = store
        self.export_dir = Path(export_dir) if export_dir else store.data_dir / "exports"

    # -- analyse ------------------------------------------------------------------------------
    def analyze(self, image: Any, prompts: str, box_threshold: float, text_threshold: float,
                progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 (Gradio injects the tracker)
        """Outputs: annotated image, diagnosis, CAM plot, decisive image, decisive text, banner, photo key,
        review table, review status, details."""
        try:
            result = self.analyzer.analyze(image, prompts, box_threshold, text_threshold, progress=progress)
        except ValueError as exc:
            raise _error(exc) from exc
        p = result.prediction
        untrained = bool(result.banner)
        fig = cam_figure(p.cam, result.cam_rows, p.class_names, p.predicted_index, result.decisive_row,
                         untrained=untrained)
        label_title = f"Diagnosis \u2014 {UNTRAINED_WARNING}" if untrained else "Diagnosis (class probabilities)"
        times = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        notes = "; ".join(result.notes)
        details = (f"**Photo** `{result.image_key[:12]}` ({result.image.width}x{result.image.height}), "
                   f"{len(result.concepts)} concepts ({result.concepts.source}). **Timings:** {times}."
                   + (f"\n\n**Notes:** {html.escape(notes)}" if notes else ""))
        return (
            gr.AnnotatedImage(value=(result.image.pixels, [(m * MASK_OPACITY, t) for m, t in result.annotations]),
                              label=f"Concepts ({len(result.concepts)})" + (" \u2014 untrained" if untrained else "")),
            gr.Label(value=result.class_probabilities(), label=label_title),
            fig,
            result.decisive_image,
            result.decisive_text,
            banner_html(result.banner, result.weights),
            result.image_key,
            review_table(result),
            f"{len(result.concepts)} concepts ready for review (photo `{result.image_key[:12]}`); nothing is "
            "stored until you press Save review.",
            details,
        )

    # -- explain ------------------------------------------------------------------------------
    def explain(self, key: str | None, image: Any, phrases: str, clip_choice: str | None,
                progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        """Outputs: gallery (row per phrase: photo, Grad-CAM, Grad E-CLIP, MedGrad E-CLIP), similarities, banner."""
        source = key if key else image
        try:
            if source is None:
                raise ValueError("Upload a photo on the Analyse tab first.")
            try:
                result = self.analyzer.explain(source, phrases, clip_choice or None, progress=progress)
            except ValueError:
                if key and image is not None:  # the cached photo was evicted: read it again
                    result = self.analyzer.explain(image, phrases, clip_choice or None, progress=progress)
                else:
                    raise
        except ValueError as exc:
            raise _error(exc) from exc
        similarity = np.round(result.similarities.astype(np.float64), 4)
        sims = pd.DataFrame({"phrase": result.phrases, "CLIP similarity": similarity})
        titles = " / ".join(["photo", *(METHOD_TITLES.get(m, m) for m in result.methods)])
        header = (f"{titles} \u2014 CLIP weights: {result.clip_label}. "
                  f"Times: {', '.join(f'{k} {v:.2f}s' for k, v in result.timings.items())}.")
        return gr.Gallery(value=result.gallery(), label=header), sims, banner_html(result.banner, result.weights)

    # -- review -------------------------------------------------------------------------------
    def save_review(self, key: str | None, image: Any, table: Any, reviewer: str, note: str) -> tuple:
        """Save the review of the analysed photo, or amend a reopened one. Outputs: status, review list, table.

        Args:
            key: the photo key kept in gr.State (None from gradio_client: then ``image`` names the photo).
            image: the photo input (used only when ``key`` is empty).
            table: the review table (decision / new label / comment per concept).
        """
        try:
            rows = _table_rows(table)
            if not rows:
                raise ValueError("There are no concepts to review: analyse a photo (or reopen a review) first.")
            if not key and image is not None:
                key = self.analyzer.state_for(image).image.key
            if not key:
                raise ValueError("Analyse a photo (or reopen a saved review) before saving.")
            key = key.split(":")[0]
            result = self.analyzer.latest_analysis(key)
            if result is not None and _rows_match(rows, result):
                review = self._save_analysis(result, rows, reviewer or "", note or "")
            elif self.store.load(key) is not None:
                review = self.store.amend(key, [self._verdict(r, None) for r in rows], reviewer or "", note or "")
            elif result is not None:
                raise ValueError("The review table does not match this photo's analysis; analyse the photo again.")
            else:
                raise ValueError("This photo is no longer in the app's memory; analyse it again before saving.")
        except ValueError as exc:
            raise _error(exc) from exc
        counts = {d: sum(c.decision == d for c in review.concepts) for d in ("accept", "reject", "relabel", "pending")}
        status = (f"Saved review of `{review.image_key[:12]}` (revision {review.revision}) at "
                  f"{time.strftime('%H:%M:%S', time.localtime(review.updated_at))}: "
                  + ", ".join(f"{n} {d}" for d, n in counts.items()) + ".")
        return status, self.review_choices(selected=review.image_key), self._review_frame(review)

    def _verdict(self, row: dict[str, Any], result: AnalysisResult | None) -> ConceptReview:
        try:
            index = int(row["#"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Row '#' must be a concept number; got {row['#']!r}.") from exc
        if result is not None:
            c = result.concepts
            if not 0 <= index < len(c):
                raise ValueError(f"Concept #{index} does not exist in this analysis.")
            phrase, score, box = c.phrases[index], float(c.scores[index]), tuple(float(v) for v in c.boxes[index])
        else:
            phrase, score, box = _text(row.get("concept")), 0.0, (0.0, 0.0, 0.0, 0.0)
        return ConceptReview(index=index, phrase=phrase, score=score, box=box,
                             decision=_text(row.get("decision")) or "pending", label=_text(row.get("new label")),
                             comment=_text(row.get("comment")))

    def _save_analysis(self, result: AnalysisResult, rows: list[dict[str, Any]], reviewer: str, note: str):
        verdicts = [self._verdict(r, result) for r in rows]
        return self.store.save(result.image_key, result.image.pixels, result.concepts.masks, verdicts,
                               reviewer=reviewer, note=note, prompts=list(result.prompts))

    def _review_frame(self, review) -> pd.DataFrame:
        rows = [[c.index, c.phrase, round(c.score, 3), c.decision, c.label, c.comment] for c in review.concepts]
        return pd.DataFrame(rows, columns=REVIEW_COLUMNS)

    def review_choices(self, selected: str | None = None) -> gr.Dropdown:
        choices = [(f"{r.image_key[:12]} \u00b7 rev {r.revision} \u00b7 {len(r.concepts)} concepts \u00b7 "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r.updated_at))}"
                    + (f" \u00b7 {r.reviewer}" if r.reviewer else ""), r.image_key)
                   for r in self.store.list_reviews()]
        return gr.Dropdown(choices=choices, value=selected if selected else None)

    def open_review(self, image_key: str | None) -> tuple:
        """Reopen a saved review. Outputs: photo key (state), table, reviewer, note, preview, status."""
        try:
            if not image_key:
                raise ValueError("Choose a saved review first.")
            review = self.store.load(image_key)
            if review is None:
                raise ValueError("That review no longer exists.")
            photo = self.store.load_photo(image_key)
            annotations = [(self.store.load_mask(image_key, c.index, review.version).astype(np.float32),
                            f"#{c.index} {c.final_label or c.phrase} ({c.decision})") for c in review.concepts]
        except (ValueError, OSError) as exc:
            raise _error(exc) from exc
        status = (f"Reopened review of `{image_key[:12]}` (revision {review.revision}); edit and press Save review "
                  "to amend it.")
        return image_key, self._review_frame(review), review.reviewer, review.note, (photo, annotations), status

    def export_reviews(self) -> tuple:
        """Export every saved review (COCO JSON with RLE masks + PNG masks, zipped). Outputs: file, status."""
        reviews = self.store.list_reviews()
        if not reviews:
            raise gr.Error("No reviews have been saved yet.", title="Nothing to export")
        archive = export_zip(self.store, self.export_dir)
        n = sum(1 for r in reviews for c in r.concepts if c.final_label)
        return str(archive), f"Exported {n} reviewed concepts from {len(reviews)} photos to `{archive.name}`."
