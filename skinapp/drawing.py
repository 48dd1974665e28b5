"""Drawing what the user sees: concept masks and boxes, the untrained-weights banner, the Explain view.

Every function takes and returns uint8 RGB arrays [H, W, 3] and never changes its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from skinapp.clip.model import letterbox
from skinapp.provenance import UNTRAINED_WARNING


def clip_view(pixels: np.ndarray, display_size: int) -> np.ndarray:
    """The whole photo as the explainers see it (letterboxed to a square), at ``display_size``.

    Returns uint8 [display_size, display_size, 3], aligned with the explainers' heatmaps.
    """
    square = letterbox(np.ascontiguousarray(pixels))
    return cv2.resize(square, (display_size, display_size), interpolation=cv2.INTER_AREA)


def stamp_banner(image: np.ndarray, text: str = UNTRAINED_WARNING) -> np.ndarray:
    """A copy of ``image`` (uint8 [H, W, 3]) with a red strip and ``text`` across its top."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    strip = max(14, h // 14)
    out[:strip] = (200, 0, 0)
    text = text.replace("\u2014", "-")
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
    scale = max(0.3, min(0.92 * w / tw, 0.6 * strip / th))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, text, (max(2, (w - tw) // 2), (strip + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_concept(image: np.ndarray, mask: np.ndarray, box: Sequence[float], label: str,
                 colour: Sequence[int] = (255, 40, 40)) -> np.ndarray:
    """The photo with one concept's mask tinted, its outline and box drawn, and its label."""
    out = image.astype(np.float32)
    tint = np.array(colour, np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * tint
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 2)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), 2)
    cv2.putText(out, label, (x0 + 2, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return out
