"""The annotator's workbench: edit a photo's concept masks (clicks, brush, add, delete), undo/redo, save a version.

:class:`Workbench` holds, per (session, photo key), an :class:`EditHistory` of immutable :class:`Draft` s in a
bounded LRU: a cache keyed by the photo's content, never "the current photo". A draft starts from the photo's
latest analysis in the Analyzer's memory, else from a saved version of its review. Each edit pushes a new draft;
undo / redo move along the history. Saving writes the draft as a new version of the review
(:meth:`skinapp.review.store.ReviewStore.save`) with each concept's provenance.

Refinement runs SAM's interactive step on the photo's cached embedding when the concepts come from grounded SAM
(``analyzer.extractor`` has a ``segmenter``), GrabCut otherwise (:mod:`skinapp.concepts.refine`).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from skinapp.boxes import sanitize_boxes
from skinapp.cache import LRUCache
from skinapp.concepts.prompts import normalise_prompts
from skinapp.concepts.refine import Refinement, grabcut_refine, sam_refine
from skinapp.review.store import ConceptReview, Review, ReviewStore
from skinapp.review.validation import validate_concept_review

log = logging.getLogger(__name__)

#: Drafts kept per photo and session (undo depth).
HISTORY_LIMIT = 50
#: (session, photo) histories kept in memory.
MAX_HISTORIES = 128


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask = np.array(mask, dtype=bool, copy=True)
    mask.setflags(write=False)
    return mask


def _pixel(value: Any, name: str) -> float:
    """A click coordinate in pixels (a finite number), or ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number of pixels; got {value!r}.")
    return v


@dataclass(frozen=True, eq=False)
class DraftConcept:
    """One concept being edited.

    Attributes:
        index: its number (mask file name; added concepts take the next free number).
        phrase, score: what the analysis (or the reviewer, for an added concept) called it, detector score.
        box: (x0, y0, x1, y1) working-image pixels.
        mask: bool [H, W], read-only.
        provenance: "model", "refined", "painted", "added" or "imported" (an added concept stays "added").
        points: the clicks so far, ((x, y, label), ...) with label 1 positive, 0 negative.
        low_res: SAM's last low-res logits [1, 1, 4g, 4g] (the next click's mask prompt), or None.
        decision, label, comment: the verdict (as in :class:`~skinapp.review.store.ConceptReview`).
    """

    index: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    provenance: str = "model"
    points: tuple[tuple[float, float, int], ...] = ()
    low_res: np.ndarray | None = None
    decision: str = "pending"
    label: str = ""
    comment: str = ""

    def edited(self, kind: str, mask: np.ndarray, **changes: Any) -> DraftConcept:
        """A copy with a new mask; provenance becomes ``kind`` unless the concept was added by the reviewer."""
        provenance = self.provenance if self.provenance == "added" else kind
        return replace(self, mask=_frozen(mask), provenance=provenance, **changes)


@dataclass(frozen=True, eq=False)
class Draft:
    """One state of a photo's edited concepts (immutable; each edit makes a new one).

    Attributes:
        image_key: the photo's content key.
        size: (H, W) of the working photo.
        concepts: the concepts, by index.
        prompts: the analysis prompts (kept with the saved review).
        source: where the draft started: "analysis" or "revision N".
    """

    image_key: str
    size: tuple[int, int]
    concepts: tuple[DraftConcept, ...]
    prompts: tuple[str, ...] = ()
    source: str = "analysis"

    def concept(self, index: Any) -> DraftConcept:
        """The concept numbered ``index``. Raises ValueError when there is none."""
        try:
            i = int(index)
            whole = float(index) == i  # 1.5 names no concept (int() would quietly take #1)
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole or isinstance(index, bool):
            raise ValueError(f"Choose a concept by its number; got {index!r}.")
        for c in self.concepts:
            if c.index == i:
                return c
        raise ValueError(f"There is no concept #{i} on photo {self.image_key[:12]}.")

    def with_concept(self, concept: DraftConcept) -> Draft:
        kept = [c for c in self.concepts if c.index != concept.index]
        return replace(self, concepts=tuple(sorted([*kept, concept], key=lambda c: c.index)))

    def masks(self) -> np.ndarray:
        """bool [max index + 1, H, W]: concept i's mask at position i (zeros for deleted numbers)."""
        h, w = self.size
        out = np.zeros((max((c.index for c in self.concepts), default=-1) + 1, h, w), bool)
        for c in self.concepts:
            out[c.index] = c.mask
        return out


@dataclass
class EditHistory:
    """Undo / redo over the drafts of one photo (``limit`` states kept)."""

    states: list[Draft]
    position: int = 0
    limit: int = HISTORY_LIMIT
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def current(self) -> Draft:
        return self.states[self.position]

    def push(self, draft: Draft) -> Draft:
        """Make ``draft`` current; anything that was undone is dropped (as in every editor)."""
        self.states = [*self.states[: self.position + 1], draft][-self.limit:]
        self.position = len(self.states) - 1
        return draft

    def undo(self) -> Draft:
        if self.position == 0:
            raise ValueError("Nothing to undo.")
        self.position -= 1
        return self.current

    def redo(self) -> Draft:
        if self.position >= len(self.states) - 1:
            raise ValueError("Nothing to redo.")
        self.position += 1
        return self.current


class Workbench:
    """Edit, undo, redo and save the concept masks of photos, per session.

    Args:
        analyzer: the app's :class:`~skinapp.pipeline.Analyzer` (only ``analyses_of`` and ``extractor`` are used).
        store: where versions are saved.
        max_histories: (session, photo) histories kept (LRU).
    """

    def __init__(self, analyzer: Any, store: ReviewStore, max_histories: int = MAX_HISTORIES) -> None:
        self.analyzer = analyzer
        self.store = store
        self.histories: LRUCache[EditHistory] = LRUCache(max_histories)
        self._model_lock = threading.Lock()

    # -- drafts -------------------------------------------------------------------------------
    def _analysis(self, key: str):
        analyses = self.analyzer.analyses_of(key) if self.analyzer is not None else []
        return analyses[0] if analyses else None

    def pixels(self, key: str) -> np.ndarray:
        """The working photo uint8 [H, W, 3]: from the Analyzer's memory, else the review store."""
        analysis = self._analysis(key)
        if analysis is not None:
            return analysis.image.pixels
        if self.store.photo_path(key).is_file():
            return self.store.load_photo(key)
        raise ValueError(f"Photo {key[:12]} is neither in the app's memory nor in a saved review; analyse it first.")

    def _fresh_draft(self, key: str, revision: int | None) -> Draft:
        analysis = self._analysis(key) if revision is None else None
        if analysis is not None:
            c = analysis.concepts
            concepts = tuple(DraftConcept(index=i, phrase=c.phrases[i], score=float(c.scores[i]),
                                          box=tuple(float(v) for v in c.boxes[i]), mask=_frozen(c.masks[i]))
                             for i in range(len(c.phrases)))
            return Draft(key, analysis.image.pixels.shape[:2], concepts, tuple(analysis.prompts), "analysis")
        review = self.store.load(key) if revision is None else self.store.load_version(key, revision)
        if review is None:
            raise ValueError(f"Photo {key[:12]} has no analysis in memory and no saved review"
                             + (f" revision {revision}" if revision is not None else "") + ".")
        concepts = tuple(DraftConcept(index=c.index, phrase=c.phrase, score=c.score, box=tuple(c.box),
                                      mask=_frozen(self.store.load_mask(key, c.index, review.version)),
                                      provenance=c.provenance, decision=c.decision, label=c.label,
                                      comment=c.comment) for c in review.concepts)
        return Draft(key, (review.height, review.width), concepts, tuple(review.prompts), f"revision {review.revision}")

    def open(self, session: str, key: str, revision: int | None = None) -> Draft:
        """Start a new edit history for the photo: from ``revision`` of its saved review, or (None) its latest
        analysis in memory, else its latest saved version."""
        history = EditHistory([self._fresh_draft(key, revision)])
        self.histories.put((session, key), history)
        return history.current

    def history(self, session: str, key: str) -> EditHistory:
        """This session's history of the photo, started (:meth:`open`) on first use."""
        history = self.histories.get((session, key))
        if history is None:
            self.open(session, key)
            history = self.histories.get((session, key))
        return history

    def draft(self, session: str, key: str) -> Draft:
        return self.history(session, key).current

    # -- edits --------------------------------------------------------------------------------
    def _segment(self, key: str, box, points, labels, previous: DraftConcept | None) -> Refinement:
        extractor = getattr(self.analyzer, "extractor", None)
        segmenter = getattr(extractor, "segmenter", None)
        if segmenter is not None and hasattr(extractor, "embedding"):
            analysis = self._analysis(key)
            emb = extractor.embedding(analysis.image if analysis is not None else self.pixels(key))
            low_res = previous.low_res if previous is not None else None
            return sam_refine(segmenter, emb, box, points, labels, mask_input=low_res, lock=self._model_lock)
        return grabcut_refine(self.pixels(key), box, points, labels,
                              previous=previous.mask if previous is not None else None)

    def refine(self, session: str, key: str, index: Any, x: float, y: float, positive: bool = True) -> Draft:
        """Add one click (positive: part of the concept; negative: not) and re-segment the concept."""
        x, y = _pixel(x, "x"), _pixel(y, "y")
        if not isinstance(positive, bool | np.bool_):
            raise ValueError(f"positive is true (part of the concept) or false (not); got {positive!r}.")
        history = self.history(session, key)
        with history.lock:
            concept = history.current.concept(index)
            h, w = history.current.size
            if not (0 <= x < w and 0 <= y < h):
                raise ValueError(f"The click ({x:g}, {y:g}) is outside the {w}x{h} photo.")
            points = (*concept.points, (x, y, int(bool(positive))))
            pts = [p[:2] for p in points]
            labels = [p[2] for p in points]
            result = self._segment(key, concept.box, pts, labels, concept)
            updated = concept.edited("refined", result.mask, points=points, low_res=result.low_res_logits)
            log.info("Refined concept %d of %s (%s, %d clicks)", concept.index, key[:12], result.method, len(points))
            return history.push(history.current.with_concept(updated))

    def paint(self, session: str, key: str, index: Any, mask: np.ndarray) -> Draft:
        """Replace a concept's mask by a painted one (bool [H, W], e.g. brush strokes minus eraser)."""
        history = self.history(session, key)
        with history.lock:
            draft = history.current
            concept = draft.concept(index)
            mask = np.asarray(mask, bool)
            if mask.shape != draft.size:
                raise ValueError(f"The painted mask is {mask.shape[1]}x{mask.shape[0]}; the photo is "
                                 f"{draft.size[1]}x{draft.size[0]}.")
            return history.push(draft.with_concept(concept.edited("painted", mask, low_res=None)))

    def add(self, session: str, key: str, box, phrase: str) -> Draft:
        """Add a missed concept from a box (x0, y0, x1, y1 pixels) and a phrase; SAM or GrabCut segments it. Its
        decision is 'pending': the reviewer decides, as for a detected concept."""
        try:  # the prompt rule every extractor applies, so an added concept reads like a detected one
            phrases = normalise_prompts(str(phrase or ""))
        except ValueError as exc:
            raise ValueError(f"Name the new concept with one phrase of words (e.g. 'lesion'): {exc}") from None
        if len(phrases) != 1:
            raise ValueError(f"Name the new concept with one phrase (e.g. 'lesion'); got {len(phrases)}.")
        phrase = phrases[0]
        history = self.history(session, key)
        with history.lock:
            draft = history.current
            h, w = draft.size
            clipped, valid = sanitize_boxes(np.asarray([box], np.float64).reshape(1, 4), w, h)
            if not valid[0]:
                raise ValueError(f"The box {list(box)} has no area inside the {w}x{h} photo.")
            box = tuple(float(v) for v in clipped[0])
            result = self._segment(key, box, [], [], None)
            index = max((c.index for c in draft.concepts), default=-1) + 1
            concept = DraftConcept(index=index, phrase=phrase, score=1.0, box=box, mask=_frozen(result.mask),
                                   provenance="added", low_res=result.low_res_logits)
            log.info("Added concept %d to %s (%s)", index, key[:12], result.method)
            return history.push(draft.with_concept(concept))

    def delete(self, session: str, key: str, index: Any) -> Draft:
        history = self.history(session, key)
        with history.lock:
            draft = history.current
            concept = draft.concept(index)
            return history.push(replace(draft, concepts=tuple(c for c in draft.concepts if c is not concept)))

    def set_verdict(self, session: str, key: str, index: Any, decision: str, label: str = "",
                    comment: str = "") -> Draft:
        """Set one concept's decision (checked as the store checks it)."""
        return self.set_verdicts(session, key, {index: (decision, label, comment)})

    def set_verdicts(self, session: str, key: str, verdicts: dict[Any, tuple[str, str, str]]) -> Draft:
        """Set several concepts' (decision, label, comment) in one edit (one undo step; none when nothing changes)."""
        history = self.history(session, key)
        with history.lock:
            draft = history.current
            for index, (decision, label, comment) in verdicts.items():
                concept = draft.concept(index)
                checked = validate_concept_review(ConceptReview(concept.index, concept.phrase, concept.score,
                                                                concept.box, decision, label, comment))
                if (checked.decision, checked.label, checked.comment) != (concept.decision, concept.label,
                                                                           concept.comment):
                    draft = draft.with_concept(replace(concept, decision=checked.decision, label=checked.label,
                                                       comment=checked.comment))
            return draft if draft is history.current else history.push(draft)

    def has_edits(self, session: str, key: str) -> bool:
        """Whether this session changed the photo's draft since it was opened (undone back to the start: no)."""
        history = self.histories.get((session, key))
        return history is not None and history.current is not history.states[0]

    def undo(self, session: str, key: str) -> Draft:
        history = self.history(session, key)
        with history.lock:
            return history.undo()

    def redo(self, session: str, key: str) -> Draft:
        history = self.history(session, key)
        with history.lock:
            return history.redo()

    # -- save ---------------------------------------------------------------------------------
    def save(self, session: str, key: str, reviewer: str = "", note: str = "") -> Review:
        """Save the current draft as a new version of the photo's review (masks, verdicts, provenance)."""
        draft = self.draft(session, key)
        if not draft.concepts:
            raise ValueError("There are no concepts to save: add one or undo the deletions.")
        concepts = [ConceptReview(c.index, c.phrase, c.score, c.box, c.decision, c.label, c.comment, c.provenance)
                    for c in draft.concepts]
        return self.store.save(key, self.pixels(key), draft.masks(), concepts, reviewer=reviewer or "",
                               note=note or "", prompts=list(draft.prompts))
