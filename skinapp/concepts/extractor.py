"""Grounded SAM: text-prompted boxes (Grounding DINO) -> masks (SAM) -> 256-d concept features.

Per image, at most one detector pass (all prompts at once), one SAM image embedding and one batched
mask decode. Both the SAM embedding (per image key) and the final :class:`Concepts` (per image key,
prompts, thresholds and cap) are cached, so asking again with other prompts re-runs only the
detector and the cheap decode, never the SAM image encoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from skinapp.boxes import sanitize_boxes
from skinapp.cache import LRUCache
from skinapp.concepts.prompts import check_threshold, normalise_prompts
from skinapp.concepts.segmenter import SamEmbedding, SamSegmenter
from skinapp.concepts.types import DEFAULT_PROMPTS, Concepts, Detections
from skinapp.image import LoadedImage, load_image
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

SOURCE = "grounded_sam"


@runtime_checkable
class Detector(Protocol):
    """What the extractor needs from a text-prompted detector (e.g. ``GroundingDinoDetector``)."""

    weights: WeightsInfo

    def detect(self, pixels: np.ndarray, prompts: Iterable[str], box_threshold: float | None = None,
               text_threshold: float | None = None) -> Detections:
        """Boxes for all prompts in one pass over uint8 RGB ``pixels`` [H, W, 3]."""
        ...


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class GroundedSamExtractor:
    """Concepts from a detector and a :class:`SamSegmenter`, cached per image.

    Args:
        detector: anything with ``.weights`` and ``.detect(pixels, prompts, box_threshold, text_threshold)``.
        segmenter: the SAM stage.
        max_concepts: keep at most this many detections (highest detector score first).
        cache_size: images (embeddings) and results kept in each LRU cache.
    """

    def __init__(self, detector: Detector, segmenter: SamSegmenter, max_concepts: int = 30,
                 cache_size: int = 16) -> None:
        if int(max_concepts) < 1:
            raise ValueError(f"max_concepts must be >= 1, got {max_concepts}")
        self.detector = detector
        self.segmenter = segmenter
        self.max_concepts = int(max_concepts)
        self.embeddings: LRUCache[SamEmbedding] = LRUCache(cache_size)
        self.results: LRUCache[Concepts] = LRUCache(cache_size)

    @property
    def weights(self) -> tuple[WeightsInfo, WeightsInfo]:
        return self.detector.weights, self.segmenter.weights

    def embedding(self, image: Any) -> SamEmbedding:
        """The image's SAM embedding, computed once per image key and cached."""
        image = load_image(image)
        return self.embeddings.get_or_compute(image.key, lambda: self.segmenter.embed(image.pixels))

    def extract(self, image: Any, prompts: str | Iterable[str] = DEFAULT_PROMPTS,
                box_threshold: float | None = None, text_threshold: float | None = None) -> Concepts:
        """Visual concepts of one image.

        Args:
            image: a :class:`LoadedImage` (or anything :func:`load_image` accepts).
            prompts: phrases to ground ("lesion", "leg", ...), or one "leg . lesion" string.
            box_threshold, text_threshold: detector thresholds in [0, 1] (None: the detector's defaults).

        Returns:
            :class:`Concepts` with n <= ``max_concepts`` concepts, highest detector score first:
            masks bool [n, H, W], features float32 [n, 256]. The cached object is shared: its arrays
            are read-only.
        """
        image = load_image(image)
        phrases = normalise_prompts(prompts)
        box_threshold = check_threshold("box_threshold", box_threshold)
        text_threshold = check_threshold("text_threshold", text_threshold)
        key = (image.key, phrases, box_threshold, text_threshold, self.max_concepts)
        return self.results.get_or_compute(key, lambda: self._extract(image, phrases, box_threshold, text_threshold))

    def _extract(self, image: LoadedImage, phrases: tuple[str, ...], box_threshold: float | None,
                 text_threshold: float | None) -> Concepts:
        t0 = time.perf_counter()
        dets = self.detector.detect(image.pixels, list(phrases), box_threshold=box_threshold,
                                    text_threshold=text_threshold)
        t_detect = time.perf_counter() - t0
        if len(dets) == 0:
            log.info("No concepts found for %d prompts (detect %.2fs)", len(phrases), t_detect)
            return Concepts.empty(image.height, image.width, SOURCE, weights=self.weights, image_key=image.key)
        boxes, valid = sanitize_boxes(dets.boxes, image.width, image.height)
        if not valid.all():
            log.info("Dropped %d degenerate detector boxes (outside the image, empty or not finite)",
                     int((~valid).sum()))
        scores = np.asarray(dets.scores, np.float32)
        order = np.argsort(-scores, kind="stable")
        keep = order[valid[order]][: self.max_concepts]
        boxes = boxes[keep]
        if len(keep) == 0:
            return Concepts.empty(image.height, image.width, SOURCE, weights=self.weights, image_key=image.key)
        t1 = time.perf_counter()
        emb = self.embedding(image)
        masks, mask_scores = self.segmenter.decode(emb, boxes)
        features = self.segmenter.pool_features(emb, masks, boxes).float().cpu()
        log.info("%d concepts from %d detections (detect %.2fs, sam %.2fs incl. embedding if new)", len(keep),
                 len(dets), t_detect, time.perf_counter() - t1)
        return Concepts(
            boxes=_readonly(boxes), phrases=[dets.phrases[i] for i in keep], scores=_readonly(scores[keep]),
            masks=_readonly(masks), mask_scores=_readonly(mask_scores), features=features, source=SOURCE,
            weights=self.weights, image_key=image.key,
        )

    def clear(self) -> None:
        """Drop every cached embedding and result."""
        self.embeddings.clear()
        self.results.clear()
