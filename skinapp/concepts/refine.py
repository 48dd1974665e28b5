"""Correct one concept's mask from clicks: SAM on the cached embedding, or GrabCut without weights.

Two small units, one per method, with the same inputs (the concept's box and the clicks so far):

- :func:`sam_refine`: SAM's interactive step (``segment_anything.SamPredictor.predict_torch``): the box,
  the positive / negative points and the previous low-resolution mask logits as the mask prompt go
  through the prompt encoder and the mask decoder, on the photo's cached image embedding
  (:meth:`SamSegmenter.decode_interactive`). No image-encoder pass; one decoder call per click
  (``SamSegmenter.n_decode`` counts it).
- :func:`grabcut_refine`: the weight-free path (demo mode). OpenCV GrabCut (Rother et al., "GrabCut:
  interactive foreground extraction using iterated graph cuts", SIGGRAPH 2004) initialised from a mask:
  outside the box is background, inside it "probably foreground" where the previous mask was set and
  "probably background" elsewhere; a disk around each positive click is foreground, around each negative
  click background.

``mask_iou`` (from :mod:`skinapp.concepts.fallback_masks`) is re-exported for the tests and the benchmark.

Points are (x, y) in working-image pixels; labels 1 (positive, "this is part of it") or 0 (negative).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from skinapp.concepts.fallback_masks import mask_iou
from skinapp.concepts.segmenter import SamEmbedding, SamSegmenter

#: Radius of the disk fixed around each click, as a fraction of the image's long side (GrabCut).
CLICK_RADIUS_FRACTION = 0.015
#: Long side (pixels) GrabCut works at; the mask is upsampled back (keeps a click well under a second).
GRABCUT_SIDE = 320
#: GrabCut iterations per click.
GRABCUT_ITERATIONS = 4


@dataclass(frozen=True)
class Refinement:
    """The result of one click.

    Attributes:
        mask: bool [H, W] at the working image's size.
        low_res_logits: SAM's float32 [1, 1, 4g, 4g] mask logits (the next click's mask prompt), or None (GrabCut).
        score: SAM's predicted IoU, or the fraction of the box the GrabCut mask covers.
        method: "sam" or "grabcut".
    """

    mask: np.ndarray
    low_res_logits: np.ndarray | None
    score: float
    method: str


def check_points(points, labels, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate clicks: float32 [k, 2] (x, y) inside the image of ``size`` (H, W) and int64 [k] labels in {0, 1}.

    Raises:
        ValueError: wrong shapes, labels other than 0/1, or a point outside the image.
    """
    pts = np.asarray(points if points is not None else np.zeros((0, 2)), dtype=np.float32).reshape(-1, 2)
    lab = np.asarray(labels if labels is not None else np.zeros((0,)), dtype=np.int64).reshape(-1)
    if len(pts) != len(lab):
        raise ValueError(f"got {len(pts)} points but {len(lab)} labels")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError("point labels must be 1 (positive) or 0 (negative)")
    h, w = size
    if len(pts) and (not np.isfinite(pts).all() or (pts < 0).any() or (pts[:, 0] >= w).any()
                     or (pts[:, 1] >= h).any()):
        raise ValueError(f"a click lies outside the {w}x{h} photo")
    return pts, lab


def sam_refine(segmenter: SamSegmenter, emb: SamEmbedding, box, points, labels,
               mask_input: np.ndarray | None = None, lock: threading.Lock | None = None) -> Refinement:
    """One interactive SAM step on a cached embedding (prompt encoder + mask decoder, no encoder pass).

    Args:
        segmenter: the SAM stage whose embedding ``emb`` is.
        emb: the photo's :class:`SamEmbedding` (``GroundedSamExtractor.embedding`` caches it per photo).
        box: (x0, y0, x1, y1) working-image pixels, or None for points only.
        points: float [k, 2] (x, y) working-image pixels; labels: int [k] (1 positive, 0 negative).
        mask_input: the previous click's ``low_res_logits`` [1, 1, 4g, 4g] (None on the first click).
        lock: held around the model call when the segmenter is shared with other stages.

    Returns:
        :class:`Refinement` with the single-mask output (``multimask_output=False``: box plus points are
        unambiguous, as in SAM's interactive demo).
    """
    pts, lab = check_points(points, labels, emb.original_size)
    if box is None and not len(pts):
        raise ValueError("refining needs a box or at least one click")
    with lock or threading.Lock():
        mask, low_res, score = segmenter.decode_interactive(emb, box, pts, lab, mask_input=mask_input)
    return Refinement(mask=mask, low_res_logits=low_res, score=score, method="sam")


def grabcut_refine(pixels: np.ndarray, box, points, labels, previous: np.ndarray | None = None,
                   iterations: int = GRABCUT_ITERATIONS, side: int = GRABCUT_SIDE) -> Refinement:
    """GrabCut seeded by the box, the previous mask and the clicks (the weight-free refinement).

    Args:
        pixels: uint8 RGB [H, W, 3].
        box: (x0, y0, x1, y1) pixels; everything outside is background. None: the whole photo.
        points, labels: the clicks (see :func:`check_points`).
        previous: bool [H, W], the mask before this click (None: the box alone).
        iterations: GrabCut iterations.
        side: long side the cut is computed at (the mask is upsampled to [H, W]).

    Returns:
        :class:`Refinement` (``low_res_logits`` None).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB pixels [H, W, 3]; got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    pts, lab = check_points(points, labels, (h, w))
    scale = min(1.0, side / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(pixels, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else pixels
    x0, y0, x1, y1 = (0.0, 0.0, float(w), float(h)) if box is None else (float(v) for v in box)
    bx0, by0 = int(np.clip(np.floor(x0 * scale), 0, sw - 1)), int(np.clip(np.floor(y0 * scale), 0, sh - 1))
    bx1, by1 = int(np.clip(np.ceil(x1 * scale), bx0 + 1, sw)), int(np.clip(np.ceil(y1 * scale), by0 + 1, sh))
    seed = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    seed[by0:by1, bx0:bx1] = cv2.GC_PR_BGD
    if previous is not None:
        prev = cv2.resize(np.asarray(previous, np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST).astype(bool)
        inside = np.zeros_like(prev)
        inside[by0:by1, bx0:bx1] = True
        seed[prev & inside] = cv2.GC_PR_FGD
    else:
        seed[by0:by1, bx0:bx1] = cv2.GC_PR_FGD
    radius = max(2, round(CLICK_RADIUS_FRACTION * max(sh, sw)))
    for (x, y), label in zip(pts, lab):
        cv2.circle(seed, (int(x * scale), int(y * scale)), radius, cv2.GC_FGD if label else cv2.GC_BGD, -1)
    if not ((seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)).any() or not ((seed == cv2.GC_BGD)
                                                                           | (seed == cv2.GC_PR_BGD)).any():
        cut = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)  # GrabCut needs both sides; nothing to cut
    else:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's RNG: the same clicks give the same mask
        cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), seed, None, bgd, fgd, int(iterations),
                    cv2.GC_INIT_WITH_MASK)
        cut = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
    mask = cv2.resize(cut.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool) \
        if scale < 1 else cut
    area = max(1.0, (x1 - x0) * (y1 - y0))
    return Refinement(mask=mask, low_res_logits=None, score=float(mask.sum() / area), method="grabcut")


__all__ = ["Refinement", "check_points", "grabcut_refine", "mask_iou", "sam_refine"]
