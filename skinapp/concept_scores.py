"""Concept scores: a photo's CLIP similarity to a list of dermatology concepts, from the cached image pass.

Zero-shot concept annotation as MONET's paper uses it (Kim et al., Nature Medicine 2024: the image-text
similarity of a photo to each concept ranks how much the concept is present). Here the score is the plain
cosine similarity cos(f_I, f_T) of the photo (the whole-photo CLIP view Explain also uses) and the concept's
text; MONET's paper additionally averages prompt templates and subtracts a reference prompt, which is not
reproduced. Scores are relative: compare concepts of one photo with one model, not across models.

Cost: the image feature comes from the photo's cached Explain image pass (no image-tower work when the
photo was explained or scored before); all concepts go through the text tower in ONE batch
(:data:`~skinapp.clip.text.TEXT_BATCH` phrases; at most :data:`MAX_CONCEPTS`), cached per phrase.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch.nn.functional as F

from skinapp.clip.model import ClipBundle
from skinapp.clip.text import TEXT_BATCH, TEXT_CACHE, TextFeatureCache, encode_texts
from skinapp.explain.base import ImagePass
from skinapp.phrases import SUGGESTED_PHRASES, clean_phrases
from skinapp.provenance import WeightsInfo

#: Default concepts: the 7-point checklist's dermoscopic criteria (Argenziano et al. 1998), then common
#: clinical descriptors of primary and secondary lesions.
SEVEN_POINT = SUGGESTED_PHRASES["7-point checklist"]
CLINICAL = ("erythema", "scale", "crust", "ulcer", "papule", "plaque", "pustule", "vesicle", "nodule",
            "hyperpigmentation", "hypopigmentation", "excoriation", "lichenification", "telangiectasia")
DEFAULT_CONCEPTS: tuple[str, ...] = SEVEN_POINT + CLINICAL
#: Most concepts scored at once (one text batch).
MAX_CONCEPTS = min(64, TEXT_BATCH)
MAX_CONCEPT_CHARS = 200


def parse_concepts(concepts: str | Iterable[str] | None) -> list[str]:
    """Concepts from one-per-line text (commas also separate) or a list, by the phrase rule
    (:func:`skinapp.phrases.clean_phrases`): stripped, blanks and repeats dropped.

    Raises:
        ValueError: no concept, more than :data:`MAX_CONCEPTS`, one too long or without a letter.
    """
    return clean_phrases(concepts, noun="concept", examples=("erythema", "erythema"), limit=MAX_CONCEPTS,
                         max_chars=MAX_CONCEPT_CHARS, commas=True)


@dataclass
class ConceptScores:
    """One photo's similarity to each concept, highest first.

    Attributes:
        image_key: the photo's key.
        concepts: K concepts, sorted by score (highest first; ties keep the input order).
        scores: float32 [K] cosine similarity cos(f_I, f_T) in [-1, 1], in ``concepts`` order.
        clip_label: the CLIP weights that produced the scores (the Explain choice).
        licence: those weights' licence ("" when unknown).
        weights: provenance of the CLIP weights.
        banner: UNTRAINED_WARNING plus details when the weights are untrained, else "".
        timings: seconds ("image_pass": 0 when cached, "text", "total").
    """

    image_key: str
    concepts: list[str]
    scores: np.ndarray
    clip_label: str
    licence: str
    weights: tuple[WeightsInfo, ...]
    banner: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def producer(self) -> str:
        """"Scores from <weights> (licence ...)": which model produced the scores, for every display."""
        return f"Scores from CLIP weights {self.clip_label}" + (f" (licence: {self.licence})" if self.licence else "")

    def choices(self) -> list[tuple[str, str]]:
        """(label "concept · 0.231", value concept) per concept, highest first (for a gr.Radio)."""
        return [(f"{c} \u00b7 {s:.3f}", c) for c, s in zip(self.concepts, self.scores)]


def score_concepts(bundle: ClipBundle, image_pass: ImagePass, concepts: list[str],
                   cache: TextFeatureCache | None = TEXT_CACHE) -> tuple[list[str], np.ndarray]:
    """Concepts sorted by cos(f_I, f_T) with their scores float32 [K] (one batched text pass, cached per phrase).

    Args:
        bundle: the CLIP model whose ``image_pass`` this is (its tokenizer encodes the concepts).
        image_pass: the photo's cached image pass (``image_features`` [E] from the real forward).
        concepts: K cleaned concepts (see :func:`parse_concepts`), K <= :data:`MAX_CONCEPTS`.
        cache: per-phrase text-feature cache (None: no caching).

    Raises:
        ValueError: the image pass belongs to another model, or a concept has no readable token.
    """
    if image_pass.model_ref and image_pass.model_ref != id(bundle.model):
        raise ValueError("This image pass was computed with a different CLIP model.")
    if len(concepts) > MAX_CONCEPTS:
        raise ValueError(f"Too many concepts ({len(concepts)}); at most {MAX_CONCEPTS} at once.")
    text = encode_texts(bundle.model, bundle.tokenizer, list(concepts), cache=cache, batch_size=MAX_CONCEPTS)
    image = F.normalize(image_pass.image_features.float().cpu(), dim=-1)
    scores = (text.features.float() @ image).numpy().astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return [text.phrases[i] for i in order], scores[order]
