"""How the mask workbench shows a draft: the rendered photo (:func:`render`) and the API's JSON
(:func:`concept_json`, masks as COCO RLE)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from skinapp.review.export import rle_encode
from skinapp.review.workbench import Draft

#: Colour of the selected concept's mask (RGB) and its opacity.
SELECTED_COLOUR = (0, 200, 255)
OPACITY = 0.45


def render(pixels: np.ndarray, draft: Draft, selected: Any) -> np.ndarray:
    """The photo with every concept's outline (white), the selected concept filled and outlined in colour, and its
    clicks (green positive, red negative). uint8 [H, W, 3] at working size, so a click's (x, y) is a pixel."""
    out = np.array(pixels, dtype=np.uint8, copy=True)
    chosen = next((c for c in draft.concepts if str(c.index) == str(selected)), None)
    for c in draft.concepts:
        contours, _ = cv2.findContours(c.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    if chosen is not None:
        fill = np.array(SELECTED_COLOUR, np.float32)
        out[chosen.mask] = (out[chosen.mask] * (1 - OPACITY) + fill * OPACITY).astype(np.uint8)
        contours, _ = cv2.findContours(chosen.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, SELECTED_COLOUR, 2)
        radius = max(3, round(max(out.shape[:2]) / 120))
        for x, y, label in chosen.points:
            cv2.circle(out, (int(x), int(y)), radius, (0, 200, 0) if label else (220, 0, 0), -1)
            cv2.circle(out, (int(x), int(y)), radius, (255, 255, 255), 1)
    return out


def concept_json(draft: Draft) -> dict[str, Any]:
    """The draft as JSON: photo key, size and each concept with its RLE mask, box, provenance, clicks."""
    return {"photo_key": draft.image_key, "height": draft.size[0], "width": draft.size[1], "source": draft.source,
            "concepts": [{"index": c.index, "phrase": c.phrase, "box": list(c.box), "provenance": c.provenance,
                          "decision": c.decision, "clicks": [list(p) for p in c.points], "mask": rle_encode(c.mask)}
                         for c in draft.concepts]}
