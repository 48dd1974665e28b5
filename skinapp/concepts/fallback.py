"""Weight-free concept extractor: the demo/offline stand-in for Grounding DINO + SAM.

:class:`ColourConceptExtractor` returns the same :class:`~skinapp.concepts.types.Concepts` as the
grounded extractor (``source="fallback"``), from colour heuristics alone:

- one body-part concept for the skin region, labelled ``"skin"``: colour cannot tell a leg from
  an arm or a face, so every body-part prompt is answered by this single concept;
- one ``"lesion"`` concept per blob whose CIELAB colour differs from the local skin colour (hair
  removed by black-hat + inpainting, iterated Otsu split, GrabCut outline), ranked by contrast,
  compactness, enclosure by skin, centrality and size so that the first one is the lesion
  (see :mod:`skinapp.concepts.fallback_lesions`; skin masks in :mod:`skinapp.concepts.fallback_masks`);
- 256-d features from colour/texture/shape statistics under a fixed random projection
  (see :mod:`skinapp.concepts.fallback_features`); they are NOT SAM embeddings, so a model
  trained on SAM features must not be fed these as if they were.

The analysis runs on a copy downsampled to ``FallbackConfig.analysis_side`` (long side) and masks
are upsampled to the working size, so a 1024-px photo takes well under a second on a CPU.
Grayscale photos (no colour cue) get no skin concept; lesion candidates are then searched over the
whole frame, with halved scores. When the skin rule finds under ``FallbackConfig.min_region_fraction``
of the frame (e.g. dermoscopy under violet light), lesions are searched over the whole frame too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from skimage import color

from skinapp.cache import LRUCache
from skinapp.concepts import fallback_masks as fm
from skinapp.concepts.fallback_features import FeatureMaps, concept_features
from skinapp.concepts.fallback_lesions import LesionCandidate, LesionConfig, lesion_candidates
from skinapp.concepts.prompts import check_threshold, normalise_prompts
from skinapp.concepts.types import DEFAULT_PROMPTS, FEATURE_DIM, Concepts
from skinapp.image import LoadedImage, load_image
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

FALLBACK_WEIGHTS = WeightsInfo(name="colour_fallback", trained=False, source="weight-free colour heuristics")
SOURCE = "fallback"
#: The phrase of the single body-part concept.
SKIN_PHRASE = "skin"
LESION_PHRASE = "lesion"
#: Prompt words answered by the lesion concepts.
LESION_WORDS = frozenset({"lesion", "lesions", "skin lesion", "skin lesions"})
#: Prompt words answered by the skin concept (every default body part plus common extras).
BODY_PART_WORDS = frozenset(set(DEFAULT_PROMPTS) - LESION_WORDS) | frozenset({
    "skin", "body", "torso", "trunk", "limb", "limbs", "arms", "legs", "hands", "feet", "fingers", "toes",
    "wrist", "elbow", "palm", "thigh", "shin", "calf", "ankle", "heel", "sole", "hip", "buttock", "groin",
    "breast", "belly", "scalp", "forehead", "cheek", "chin", "nose", "ear", "lip", "mouth", "eyelid", "nail",
})


@dataclass(frozen=True)
class FallbackConfig:
    """Settings of the colour fallback (configs as data).

    Attributes:
        analysis_side: long side (pixels) of the internal analysis image (256: lesions of a few
            percent of the frame still span tens of pixels; keeps a 1024-px photo well under 1 s).
        min_skin_fraction: smallest skin component, as a fraction of the image.
        min_region_fraction: below this skin-region fraction of the frame, lesions are searched over
            the whole frame (the skin rule failed, e.g. on violet-lit dermoscopy; a lesion photo is skin).
        lesion: :class:`~skinapp.concepts.fallback_lesions.LesionConfig`, the lesion search.
    """

    analysis_side: int = 256
    min_skin_fraction: float = 0.005
    min_region_fraction: float = 0.05
    lesion: LesionConfig = field(default_factory=LesionConfig)

    def __post_init__(self):
        if self.analysis_side < 32:
            raise ValueError(f"analysis_side must be >= 32, got {self.analysis_side}")


@dataclass
class _Concept:
    phrase: str
    mask: np.ndarray  # bool [h, w] on the analysis grid
    score: float
    mask_score: float


class ColourConceptExtractor:
    """Lesion and skin concepts from colour heuristics; no model weights.

    Emits one "lesion" concept per colour-contrast blob (only if "lesion" is among the prompts) and
    one "skin" concept for the whole skin region (only if some body-part word is): colour cannot
    tell a leg from an arm or a face, so no body-part phrase is ever claimed. Grayscale photos get
    no skin concept. Results are cached per (image key, prompts, max_concepts).

    Args:
        max_concepts: at most this many concepts per image (the skin concept is always kept).
        config: :class:`FallbackConfig`.
        cache_size: images kept in the per-extractor LRU cache.

    Example:
        >>> concepts = ColourConceptExtractor().extract(load_image(path))
        >>> concepts.masks.shape   # bool [n, H, W]
    """

    def __init__(self, max_concepts: int = 30, config: FallbackConfig | None = None, cache_size: int = 16):
        if isinstance(max_concepts, bool) or not isinstance(max_concepts, int) or max_concepts < 1:
            raise ValueError(f"max_concepts must be a positive integer, got {max_concepts!r}")
        self.max_concepts = max_concepts
        self.config = config or FallbackConfig()
        self.weights: tuple[WeightsInfo, ...] = (FALLBACK_WEIGHTS,)
        self.results: LRUCache[Concepts] = LRUCache(cache_size)

    def extract(self, image: LoadedImage, prompts: str | Iterable[str] = DEFAULT_PROMPTS,
                box_threshold: float | None = None, text_threshold: float | None = None) -> Concepts:
        """Concepts of one image.

        Args:
            image: a :class:`LoadedImage` (anything :func:`load_image` accepts is loaded first).
            prompts: phrases; "lesion" enables lesion concepts, any body-part word the skin concept.
            box_threshold: drop concepts scoring below it (None keeps all).
            text_threshold: accepted for API parity with the grounded extractor; unused here.

        Returns:
            :class:`Concepts` with source "fallback": masks bool [n, H, W] at working size, boxes
            float32 [n, 4], scores and mask_scores float32 [n] in [0, 1], features float32 [n, 256],
            sorted by score (highest first). The cached object is shared: its arrays are read-only.

        Raises:
            ValueError: no prompt phrase, or a threshold outside [0, 1].
        """
        image = load_image(image)
        phrases = normalise_prompts(prompts)
        box_threshold = check_threshold("box_threshold", box_threshold)
        check_threshold("text_threshold", text_threshold)  # validated for parity; no text encoder here
        key = (image.key, phrases, self.max_concepts)
        concepts = self.results.get_or_compute(key, lambda: self._extract(image, phrases))
        if box_threshold is not None:
            concepts = _select(concepts, concepts.scores >= box_threshold)
        return concepts

    def clear(self) -> None:
        """Drop every cached result."""
        self.results.clear()

    def _extract(self, image: LoadedImage, phrases: tuple[str, ...]) -> Concepts:
        H, W = image.size
        want_lesions = any(p in LESION_WORDS for p in phrases)
        want_skin = any(p in BODY_PART_WORDS for p in phrases)
        empty = Concepts.empty(H, W, SOURCE, self.weights, image.key)
        if not (want_lesions or want_skin):
            return empty
        cfg = self.config
        rgb = _downsample(image.pixels, cfg.analysis_side).astype(np.float32) / 255.0
        h, w = rgb.shape[:2]
        grayscale = fm.is_grayscale(rgb)
        if grayscale:
            full = np.ones((h, w), bool)
            skin = fm.SkinResult(mask=np.zeros((h, w), bool), raw=np.zeros((h, w), bool), region=full)
        else:
            skin = fm.skin_mask(rgb, cfg.min_skin_fraction)
            if not skin.mask.any():
                log.info("fallback concepts: no skin-coloured region found in image %s", image.key[:12])
                return empty
        lab = color.rgb2lab(rgb).astype(np.float32)
        found: list[_Concept] = []
        if want_skin and not grayscale:
            found.append(_skin_concept(skin))
        if want_lesions:
            found.extend(self._lesion_concepts(rgb, skin, grayscale))
        found.sort(key=lambda c: -c.score)
        found = _cap(found, self.max_concepts)
        if not found:
            return empty
        masks_small = [c.mask for c in found]
        features = concept_features(FeatureMaps(rgb, lab, skin.mask), masks_small)
        masks = np.stack([_upsample(m, H, W) for m in masks_small])
        return Concepts(
            boxes=_readonly(_boxes(masks)), phrases=[c.phrase for c in found],
            scores=_readonly(np.array([c.score for c in found], np.float32)),
            masks=_readonly(masks), mask_scores=_readonly(np.array([c.mask_score for c in found], np.float32)),
            features=features.reshape(-1, FEATURE_DIM), source=SOURCE, weights=self.weights, image_key=image.key,
        )

    def _lesion_concepts(self, rgb: np.ndarray, skin: fm.SkinResult, grayscale: bool) -> list[_Concept]:
        region = skin.region
        if region.mean() < self.config.min_region_fraction:
            region = np.ones_like(region)
        scale = 0.5 if grayscale else 1.0
        return [_Concept(LESION_PHRASE, c.mask, scale * c.score, lesion_mask_score(c))
                for c in lesion_candidates(rgb, region, self.config.lesion)]


def lesion_mask_score(cand: LesionCandidate) -> float:
    """Mask quality in [0, 1]: solidity x agreement of the threshold and GrabCut outlines."""
    return float(np.clip(cand.solidity * cand.stability, 0.0, 1.0))


def _skin_concept(skin: fm.SkinResult) -> _Concept:
    """The body-part concept: score = rule purity x size factor; mask score = IoU(raw rule, cleaned)."""
    purity = float(skin.raw[skin.mask].mean())
    size = min(1.0, float(skin.mask.mean()) / 0.02)
    return _Concept(SKIN_PHRASE, skin.mask, float(np.clip(purity * size, 0.0, 1.0)), fm.mask_iou(skin.raw, skin.mask))


def _cap(found: list[_Concept], limit: int) -> list[_Concept]:
    """Keep the ``limit`` best concepts (already sorted), never dropping the skin concept."""
    if len(found) <= limit:
        return found
    skin = [c for c in found if c.phrase == SKIN_PHRASE]
    lesions = [c for c in found if c.phrase != SKIN_PHRASE][: limit - len(skin)]
    return sorted(skin + lesions, key=lambda c: -c.score)


def _downsample(pixels: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] with long side <= ``side`` (area filter)."""
    H, W = pixels.shape[:2]
    scale = min(1.0, side / max(H, W))
    if scale >= 1.0:
        return np.ascontiguousarray(pixels)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    return cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)


def _upsample(mask: np.ndarray, H: int, W: int) -> np.ndarray:
    """bool [h, w] -> bool [H, W]: bilinear then > 0.5 (smooth outline); nearest if that empties it."""
    if mask.shape == (H, W):
        return mask.copy()
    up = cv2.resize(mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) > 0.5
    if not up.any():
        up = cv2.resize(mask.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
    return up


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1), exclusive max, of bool masks [n, H, W] -> float32 [n, 4]."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if cols.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _select(concepts: Concepts, keep: np.ndarray) -> Concepts:
    """A copy of ``concepts`` restricted to the boolean selection ``keep`` [n]."""
    idx = np.flatnonzero(keep)
    return Concepts(
        boxes=concepts.boxes[idx], phrases=[concepts.phrases[i] for i in idx], scores=concepts.scores[idx],
        masks=concepts.masks[idx], mask_scores=concepts.mask_scores[idx],
        features=concepts.features[torch.as_tensor(idx, dtype=torch.long)], source=concepts.source,
        weights=concepts.weights, image_key=concepts.image_key,
    )
