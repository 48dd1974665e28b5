"""What a review save accepts: the decision and provenance vocabularies, the reviewer / note rule
(:func:`checked_signature`), one concept's verdict (:func:`validate_concept_review`) and a save's set of concepts
(:func:`checked_concepts`). Every refusal is a ValueError worded for the UI.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import TYPE_CHECKING

import numpy as np

from skinapp.boxes import sanitize_boxes

if TYPE_CHECKING:  # store.py imports this module
    from skinapp.review.store import ConceptReview

#: What a reviewer can decide about one concept.
DECISIONS: tuple[str, ...] = ("pending", "accept", "reject", "relabel")

#: Where a concept's mask came from: the analysis, refined by clicks, painted with the brush, added by the
#: reviewer (box + phrase), or imported from a COCO file.
PROVENANCE: tuple[str, ...] = ("model", "refined", "painted", "added", "imported")
#: The provenances of a mask a person drew or changed in the app (not the model's, not imported from a file).
EDITED_BY_HAND: tuple[str, ...] = ("refined", "painted", "added")

#: Longest reviewer name and note (characters) a save accepts: names are shown in tables and status lines.
MAX_REVIEWER_CHARS = 100
MAX_NOTE_CHARS = 5000


def checked_signature(reviewer: str | None, note: str | None) -> tuple[str, str]:
    """(reviewer, note) stripped, or ValueError: a name longer than :data:`MAX_REVIEWER_CHARS` or holding a line
    break or other control character, a note longer than :data:`MAX_NOTE_CHARS`."""
    reviewer, note = (reviewer or "").strip(), (note or "").strip()
    if len(reviewer) > MAX_REVIEWER_CHARS:
        raise ValueError(f"A reviewer name has at most {MAX_REVIEWER_CHARS} characters; this one has {len(reviewer)}.")
    if any(unicodedata.category(ch).startswith("C") for ch in reviewer):
        raise ValueError("A reviewer name cannot hold line breaks, tabs or other control characters.")
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"A note has at most {MAX_NOTE_CHARS} characters; this one has {len(note)}.")
    return reviewer, note


def validate_concept_review(c: ConceptReview) -> ConceptReview:
    """Normalise and check one verdict (a new ConceptReview; ``c`` is left as it is); raises ValueError with a
    message fit for the UI."""
    decision = (c.decision or "pending").strip().lower()
    if decision not in DECISIONS:
        raise ValueError(f"Concept {c.index}: decision must be one of {', '.join(DECISIONS)}; got {c.decision!r}.")
    label = (c.label or "").strip()
    if decision == "relabel" and not label:
        raise ValueError(f"Concept {c.index} ({c.phrase!r}): 'relabel' needs a new label.")
    if label and decision in ("accept", "reject"):  # kept but never used: the reviewer meant something else
        raise ValueError(f"Concept {c.index} ({c.phrase!r}): a new label is used only with 'relabel' (the decision "
                         f"is {decision!r}): choose 'relabel' or clear the label.")
    if any(unicodedata.category(ch).startswith("C") for ch in label):  # a label is one line, like a name
        raise ValueError(f"Concept {c.index} ({c.phrase!r}): a new label cannot hold line breaks, tabs or other "
                         "control characters.")
    if len(label) > 200 or len(c.comment or "") > 5000:
        raise ValueError(f"Concept {c.index}: label (200) or comment (5000 characters) too long.")
    provenance = (c.provenance or "model").strip().lower()
    if provenance not in PROVENANCE:
        raise ValueError(f"Concept {c.index}: provenance must be one of {', '.join(PROVENANCE)}; got {c.provenance!r}.")
    return dataclasses.replace(c, index=int(c.index), phrase=str(c.phrase), score=float(c.score),
                               box=tuple(float(v) for v in c.box), decision=decision, label=label,
                               comment=(c.comment or "").strip(), provenance=provenance)


def checked_concepts(concepts: list[ConceptReview], n_masks: int, width: int, height: int) -> list[ConceptReview]:
    """The verdicts of one save, each checked (:func:`validate_concept_review`) with its box clipped to the
    ``width`` x ``height`` photo (pixels).

    Raises:
        ValueError: a verdict refused, a concept reviewed twice, an index outside 0..``n_masks`` - 1, a box with no
            area inside the photo.
    """
    checked = [validate_concept_review(c) for c in concepts]
    indices = [c.index for c in checked]
    if len(set(indices)) != len(indices):
        raise ValueError("Each concept can be reviewed only once per save.")
    if any(i < 0 or i >= n_masks for i in indices):
        raise ValueError(f"Concept indices must be in 0..{n_masks - 1}.")
    for c in checked:  # boxes are stored clipped to the photo; one with nothing inside is refused
        box, valid = sanitize_boxes(np.array([c.box]), width, height)
        if not valid[0]:
            raise ValueError(f"Concept {c.index} ({c.phrase!r}): its box {list(c.box)} has no area inside the "
                             f"{width}x{height} photo.")
        c.box = tuple(float(v) for v in box[0])
    return checked
