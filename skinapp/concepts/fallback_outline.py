"""Lesion outlines (delineation after detection): GrabCut refinement, hysteresis rim growth and the two
shape alternatives each outline is compared with.

Detection (which blob is a lesion, in what order) happens in :mod:`skinapp.concepts.fallback_lesions`;
this module only moves a candidate's outline. All masks are bool [h, w] on the analysis grid.

- :func:`grabcut_refine`: GrabCut (Rother et al., SIGGRAPH 2004; ``cv2.grabCut``) from the rough mask.
- :func:`grow_outline`: hysteresis growth (Canny 1986) down to a lower contrast level.
- :func:`convex_outline` and :func:`opened_outline`: the outline's convex hull (fills the notches that
  threshold outlines cut into a lesion along hair, glare or texture) and its morphological opening by a
  disk a fraction of its equivalent radius (cuts thin leaks of the rim along shadows, folds and texture).
  Which of the three outlines a candidate keeps is decided by the same evidence that ranks candidates
  (``fallback_lesions.rank_score``); see ``lesion_candidates``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from skinapp.concepts.fallback_masks import disk

#: GrabCut runs on its crop downscaled to at most this long side (pixels): its colour GMMs and graph cut
#: need no more, and its cost grows with the pixel count.
GRABCUT_SIDE = 128


def grabcut_refine(rgb: np.ndarray, mask: np.ndarray, iterations: int = 5) -> np.ndarray:
    """GrabCut from a rough mask: the mask is "probable lesion", a band around it "probable skin", the rest skin.

    The band's width is the mask's equivalent radius (so the outline may move by up to one radius).
    Returns the refined bool mask [h, w] (its component overlapping the input most, holes filled), or
    the input when GrabCut empties it.
    """
    h, w = mask.shape
    radius = max(2, round(math.sqrt(mask.sum() / math.pi)))
    band = cv2.dilate(mask.astype(np.uint8), disk(radius)).astype(bool)
    if band.all() or (~band).sum() < 16:
        return mask
    # GrabCut only sees a crop: the band plus a margin of certain skin (its colour model needs some).
    ys, xs = np.nonzero(band)
    y0, y1 = max(0, ys.min() - radius), min(h, ys.max() + radius + 1)
    x0, x1 = max(0, xs.min() - radius), min(w, xs.max() + radius + 1)
    crop_mask, crop_band = mask[y0:y1, x0:x1], band[y0:y1, x0:x1]
    if crop_band.all():
        return mask
    gc = np.full(crop_mask.shape, cv2.GC_BGD, np.uint8)
    gc[crop_band] = cv2.GC_PR_BGD
    gc[crop_mask] = cv2.GC_PR_FGD
    u8 = np.ascontiguousarray(np.clip(np.round(rgb[y0:y1, x0:x1] * 255), 0, 255).astype(np.uint8))
    ch, cw = gc.shape
    f = min(1.0, GRABCUT_SIDE / max(ch, cw))  # colour models need no more pixels than this
    if f < 1.0:
        size = (max(1, round(cw * f)), max(1, round(ch * f)))
        u8 = cv2.resize(u8, size, interpolation=cv2.INTER_AREA)
        gc = cv2.resize(gc, size, interpolation=cv2.INTER_NEAREST)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(u8, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = cv2.resize(fg, (cw, ch), interpolation=cv2.INTER_LINEAR) > 0.5 if f < 1.0 else fg > 0.5
    labels, n = ndimage.label(out)
    if n == 0:
        return mask
    overlap = np.bincount(labels[mask], minlength=n + 1)
    overlap[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(overlap)))


def grow_outline(mask: np.ndarray, low_fg: np.ndarray) -> np.ndarray:
    """Hysteresis growth: ``mask`` plus every component of ``low_fg`` that touches it, holes filled.

    ``mask`` bool [h, w] is a candidate found above the high (two-class Otsu) split; ``low_fg`` bool [h, w]
    the pixels above the low split (the lower of the three-class Otsu thresholds, used when it lies between
    :data:`JND_DELTA_E` and the high split). A low-contrast rim
    connected to a high-contrast core is lesion (Canny's hysteresis argument: weak evidence counts when it
    is connected to strong evidence); low-contrast blobs on their own are not added.
    """
    labels, n = ndimage.label(low_fg)
    if n == 0:
        return mask
    touched = np.unique(labels[mask])
    touched = touched[touched > 0]
    return ndimage.binary_fill_holes(mask | np.isin(labels, touched)) if touched.size else mask


def _largest_overlap(mask: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The component of ``mask`` overlapping ``ref`` most, holes filled; ``ref`` when none overlaps."""
    labels, n = ndimage.label(mask)
    overlap = np.bincount(labels[ref], minlength=n + 1)
    overlap[0] = 0
    if n == 0 or overlap.max() == 0:
        return ref
    return ndimage.binary_fill_holes(labels == int(np.argmax(overlap)))


def convex_outline(mask: np.ndarray) -> np.ndarray:
    """Convex hull of bool ``mask`` [h, w] (``cv2.convexHull`` of its pixels, filled) -> bool [h, w].

    Expert lesion masks are smooth, mostly convex outlines; a threshold outline is notched wherever hair,
    glare or texture inside the lesion falls below the split. A hull that reaches the frame is not offered
    (``mask`` is returned): the shape beyond the frame is unknown, and such hulls are mostly leaks along the
    edge filled into large polygons.
    """
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None or len(pts) < 3:
        return mask
    out = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(out, [cv2.convexHull(pts)], 1)
    if out[0].any() or out[-1].any() or out[:, 0].any() or out[:, -1].any():
        return mask
    return out.astype(bool) | mask


def opened_outline(mask: np.ndarray, core: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Morphological opening of bool ``mask`` [h, w] by a disk of radius ``fraction`` x its equivalent radius
    (sqrt(area / pi)); the component overlapping ``core`` (bool [h, w]) most, holes filled -> bool [h, w].

    Removes every part of the outline narrower than the disk: rim growth that leaked along a shadow, fold
    or texture line, while the lesion body (wider than the disk) stays.
    """
    radius = max(1, round(fraction * math.sqrt(mask.sum() / math.pi)))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk(radius)).astype(bool)
    if not opened.any():
        return mask
    return _largest_overlap(opened, core & opened if (core & opened).any() else opened)
