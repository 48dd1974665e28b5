"""Boxes the app keeps are valid boxes in their image, whoever produced them (detector, user, import).

A box is (x0, y0, x1, y1) in working-image pixels with an exclusive max: it is valid in a W x H image when
every coordinate is finite, 0 <= x0, x0 + MIN_SIDE <= x1 <= W, and likewise for y.
"""

from __future__ import annotations

import numpy as np

#: Smallest side (pixels) of a kept box; anything thinner covers no whole pixel.
MIN_SIDE = 1.0


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 [n, 4]: ``boxes`` clipped to the W x H image (NaN stays NaN, so :func:`valid_boxes` drops it)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes


def valid_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool [n]: which of ``boxes`` [n, 4] are valid in a W x H image (see the module docstring)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= width) & (b[:, 3] <= height)
        wide = (b[:, 2] - b[:, 0] >= MIN_SIDE) & (b[:, 3] - b[:, 1] >= MIN_SIDE)
    return np.isfinite(b).all(axis=1) & inside & wide


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``boxes`` [n, 4] to the image and mark the degenerate ones.

    Returns:
        (clipped float32 [n, 4], keep bool [n]): keep is False for non-finite, inverted, or (after
        clipping) thinner than :data:`MIN_SIDE` boxes, e.g. a box entirely outside the image.
    """
    clipped = clip_boxes(boxes, width, height)
    return clipped, valid_boxes(clipped, width, height)


def check_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    """Raise ValueError naming the first box [n, 4] that is not valid in a W x H image."""
    bad = np.flatnonzero(~valid_boxes(boxes, width, height))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"box {i} {np.asarray(boxes)[i].tolist()} is not a valid box in the {width}x{height} "
                         f"image ({bad.size} invalid)")
