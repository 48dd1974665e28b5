"""Data types shared by every concept extractor (grounded SAM and the weight-free fallback)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from skinapp.boxes import check_boxes
from skinapp.provenance import WeightsInfo

#: Default prompts: "lesion" plus body-part words (editable in the app).
DEFAULT_PROMPTS: tuple[str, ...] = (
    "lesion", "face", "head", "neck", "shoulder", "arm", "forearm", "hand", "finger", "chest",
    "abdomen", "back", "leg", "knee", "foot", "toe",
)

#: Width of a concept feature (SAM's embedding channels).
FEATURE_DIM = 256


@dataclass
class Detections:
    """Boxes from one detector pass, in working-image pixels.

    Attributes:
        boxes: float32 [n, 4] (x0, y0, x1, y1) pixels.
        phrases: n prompt phrases, one per box.
        scores: float32 [n] detector confidence in [0, 1].
    """

    boxes: np.ndarray
    phrases: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), [], np.zeros((0,), np.float32))


@dataclass
class Concepts:
    """Visual concepts of one image.

    Attributes:
        boxes: float32 [n, 4] (x0, y0, x1, y1) in working-image pixels.
        phrases: n phrases (the prompt each concept answers, e.g. "lesion", "leg").
        scores: float32 [n] detector scores in [0, 1].
        masks: bool [n, H, W] at working-image size.
        mask_scores: float32 [n] mask quality (SAM's predicted IoU; fallback: its own score).
        features: float32 tensor [n, 256]: the concept's local feature (SAM embedding pooled under
            its mask, or the fallback's colour/texture statistics projected to 256-d).
        source: "grounded_sam" or "fallback".
        weights: provenance of every model that produced these concepts.
        image_key: content hash of the image they belong to.
    """

    boxes: np.ndarray
    phrases: list[str]
    scores: np.ndarray
    masks: np.ndarray
    mask_scores: np.ndarray
    features: torch.Tensor
    source: str
    weights: tuple[WeightsInfo, ...] = field(default_factory=tuple)
    image_key: str = ""

    def __post_init__(self) -> None:
        n, (H, W) = len(self.phrases), self.masks.shape[1:]
        shapes = (self.boxes.shape, self.scores.shape, self.masks.shape[0], self.mask_scores.shape,
                  tuple(self.features.shape[:1]))
        if shapes != ((n, 4), (n,), n, (n,), (n,)):
            raise ValueError(f"Concepts of {n} phrases have mismatched arrays {shapes}")
        check_boxes(self.boxes, W, H)  # every extractor must hand over valid boxes (boxes.sanitize_boxes)

    def __len__(self) -> int:
        return len(self.phrases)

    @property
    def trained(self) -> bool:
        """True only when every model behind these concepts had trained weights."""
        return bool(self.weights) and all(w.trained for w in self.weights)

    @property
    def is_fallback(self) -> bool:
        return self.source == "fallback"

    def labels(self) -> list[str]:
        """Display labels, "phrase 0.87", one per concept."""
        return [f"{p} {s:.2f}" for p, s in zip(self.phrases, self.scores)]

    @classmethod
    def empty(cls, height: int, width: int, source: str, weights: tuple[WeightsInfo, ...] = (),
              image_key: str = "") -> Concepts:
        return cls(
            boxes=np.zeros((0, 4), np.float32), phrases=[], scores=np.zeros((0,), np.float32),
            masks=np.zeros((0, height, width), bool), mask_scores=np.zeros((0,), np.float32),
            features=torch.zeros((0, FEATURE_DIM)), source=source, weights=weights, image_key=image_key,
        )
