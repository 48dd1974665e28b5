"""Weight-free masks for the fallback extractor: skin from colour, lesions from colour contrast.

Everything here works on a small *analysis* image (RGB float in [0, 1], long side a few hundred
pixels) and returns boolean masks on that grid; :mod:`skinapp.concepts.fallback` upsamples them to
the working image.

Pipeline:

1. :func:`skin_mask`: a YCrCb chroma box AND an HSV hue/saturation rule (valid from very light to
   very dark skin, see ``skinapp.synthetic.SKIN_TONES``), cleaned by opening/closing, holes filled,
   and only large connected components kept.
2. :func:`lesion_candidates`: per-pixel CIELAB distance from the *local* skin colour (a normalised
   Gaussian average over pixels that pass the skin rule, so that shading across a limb does not look like a lesion),
   thresholded adaptively (the largest of Otsu, a robust z-score and an absolute floor) with
   hysteresis; connected components that lie inside, or mostly enclosed by, skin are kept after
   size filters and hole filling (lesions are often too dark/red/blue to pass the skin rule).
3. :func:`refine_with_superpixels`: a candidate becomes the union of SLIC superpixels that lie
   mostly inside it, which snaps its outline to colour edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage import filters, segmentation

log = logging.getLogger(__name__)

#: YCrCb chroma box for skin (OpenCV 8-bit scale), from Chai & Ngan (1999), widened slightly.
CR_RANGE = (137.0, 180.0)
CB_RANGE = (70.0, 130.0)
#: HSV rule: hue within this many degrees of red-orange (0..50 deg), saturation range in [0, 1].
HUE_MAX_DEG = 50.0
HUE_WRAP_DEG = 340.0
SAT_RANGE = (0.08, 0.80)
#: Chroma below this (max-min of RGB in [0, 1]) everywhere means a grayscale photo.
GRAYSCALE_CHROMA = 0.02


@dataclass(frozen=True)
class SkinResult:
    """Skin on the analysis grid.

    Attributes:
        mask: bool [h, w] cleaned skin region (large components, holes filled).
        raw: bool [h, w] pixels passing the colour rule before clean-up.
        region: bool [h, w] where lesions may lie: ``mask`` closed and hole-filled.
    """

    mask: np.ndarray
    raw: np.ndarray
    region: np.ndarray


@dataclass(frozen=True)
class Candidate:
    """One lesion candidate on the analysis grid.

    Attributes:
        mask: bool [h, w].
        contrast: median CIELAB distance (Delta E) of its pixels to the local skin colour.
        threshold: the adaptive Delta E threshold it passed.
        enclosure: fraction of its outer ring that lies in the skin region, in [0, 1].
        solidity: area / convex-hull area, in (0, 1].
        stability: IoU of the component thresholded at 0.8x and 1.25x the threshold (SAM-style).
    """

    mask: np.ndarray
    contrast: float
    threshold: float
    enclosure: float
    solidity: float
    stability: float


def disk(radius: int) -> np.ndarray:
    """A uint8 disk structuring element of the given radius (>= 1)."""
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def is_grayscale(rgb: np.ndarray) -> bool:
    """True when the image carries no colour (R = G = B up to noise); ``rgb`` float [h, w, 3] in [0, 1]."""
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return float(np.percentile(chroma, 99)) < GRAYSCALE_CHROMA


def skin_rule(rgb: np.ndarray) -> np.ndarray:
    """Pixel-wise skin colour rule. ``rgb`` float [h, w, 3] in [0, 1] -> bool [h, w]."""
    u8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    ycrcb = cv2.cvtColor(u8, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    cr, cb = ycrcb[..., 1], ycrcb[..., 2]
    chroma_ok = (cr >= CR_RANGE[0]) & (cr <= CR_RANGE[1]) & (cb >= CB_RANGE[0]) & (cb <= CB_RANGE[1])
    hsv = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees, S and V in [0, 1]
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hue_ok = (hue <= HUE_MAX_DEG) | (hue >= HUE_WRAP_DEG)
    sat_ok = (sat >= SAT_RANGE[0]) & (sat <= SAT_RANGE[1])
    return chroma_ok & hue_ok & sat_ok & (val >= 0.12)


def keep_large_components(mask: np.ndarray, min_fraction_of_image: float, min_fraction_of_largest: float
                          ) -> np.ndarray:
    """Drop connected components smaller than either bound. bool [h, w] -> bool [h, w]."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    floor = max(min_fraction_of_image * mask.size, min_fraction_of_largest * float(areas.max()))
    keep = np.zeros(n, bool)
    keep[1:] = areas >= floor
    return keep[labels]


def skin_mask(rgb: np.ndarray, min_skin_fraction: float = 0.005) -> SkinResult:
    """Skin region of an analysis image ``rgb`` float [h, w, 3] in [0, 1].

    The colour rule is cleaned with an opening (removes speckle), a closing (bridges pores and
    hair), hole filling, and a component filter (components >= ``min_skin_fraction`` of the image
    and >= 10 % of the largest one).
    """
    h, w = rgb.shape[:2]
    raw = skin_rule(rgb)
    r = max(1, round(min(h, w) / 160))
    cleaned = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, disk(r))
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, disk(2 * r)).astype(bool)
    cleaned = ndimage.binary_fill_holes(cleaned)
    cleaned = keep_large_components(cleaned, min_skin_fraction, 0.1)
    region = cv2.morphologyEx(cleaned.astype(np.uint8), cv2.MORPH_CLOSE, disk(max(2, round(min(h, w) / 40))))
    region = ndimage.binary_fill_holes(region.astype(bool)) | cleaned
    return SkinResult(mask=cleaned, raw=raw, region=region)


def local_reference(lab: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean colour over ``support`` pixels (normalised Gaussian convolution).

    Args:
        lab: float [h, w, 3] CIELAB.
        support: bool [h, w], the pixels that define "skin colour" (must be non-empty).
        sigma: Gaussian width in pixels.

    Returns:
        float [h, w, 3]: at every pixel, the Gaussian-weighted mean of nearby support colours
        (the global support median where no support pixel is near).
    """
    weight = support.astype(np.float32)
    fallback = np.median(lab[support], axis=0)
    num = cv2.GaussianBlur(lab.astype(np.float32) * weight[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    ok = den > 1e-3
    return np.where(ok, num / np.maximum(den, 1e-6), fallback[None, None, :]).astype(np.float32)


def colour_distance(lab: np.ndarray, reference: np.ndarray, lightness_weight: float = 1.0) -> np.ndarray:
    """Delta E (CIE76, optional lightness weight) between ``lab`` [h, w, 3] and ``reference`` [h, w, 3] or [3]."""
    diff = lab - reference
    diff[..., 0] *= lightness_weight
    return np.sqrt((diff ** 2).sum(axis=-1))


def adaptive_threshold(values: np.ndarray, floor: float, z: float) -> float:
    """max(Otsu, median + z * 1.4826 * MAD, floor) over a 1-D sample of distances."""
    if values.size < 8:
        return float(floor)
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * 1.4826
    robust = med + z * max(mad, 0.5)
    otsu = float(filters.threshold_otsu(values)) if np.ptp(values) > 1e-6 else floor
    return float(max(otsu, robust, floor))


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), disk(width)).astype(bool) & ~mask


def _solidity(mask: np.ndarray) -> float:
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None or len(pts) < 3:
        return 1.0
    hull_area = cv2.contourArea(cv2.convexHull(pts)) + 0.5 * cv2.arcLength(cv2.convexHull(pts), True) + 1.0
    return float(min(1.0, mask.sum() / hull_area))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def lesion_candidates(lab: np.ndarray, skin: SkinResult, *, floor: float = 7.0, z: float = 4.0,
                      lightness_weight: float = 1.0, min_area_fraction: float = 4e-4,
                      max_area_fraction_of_region: float = 0.5, min_enclosure: float = 0.5,
                      min_solidity: float = 0.0, interior_only: bool = False, max_candidates: int = 64
                      ) -> tuple[list[Candidate], np.ndarray]:
    """Lesion candidates: blobs whose colour differs from the surrounding skin.

    Args:
        lab: float [h, w, 3] CIELAB of the (lightly smoothed) analysis image.
        skin: the :func:`skin_mask` result (for grayscale photos, a whole-frame region).
        floor: minimum Delta E threshold (no lesions are invented in uniform skin).
        z: robust z-score multiplier of the threshold.
        lightness_weight: weight of L* in the distance (1 = plain CIE76).
        min_area_fraction: smallest candidate, as a fraction of the analysis image.
        max_area_fraction_of_region: largest candidate, as a fraction of the skin region.
        min_enclosure: keep a component only if this fraction of its outer ring is skin region.
        min_solidity: drop components less convex than this (area / convex-hull area).
        interior_only: drop components touching the frame border (used when the region is the whole frame).
        max_candidates: keep at most this many (largest contrast x area first).

    Returns:
        (candidates, distance map float [h, w]).
    """
    h, w = lab.shape[:2]
    region = skin.region
    if region.sum() < 16:
        return [], np.zeros((h, w), np.float32)
    sigma = max(2.0, 0.08 * min(h, w))
    # The reference colour comes from pixels that pass the skin rule inside the skin mask: the mask's
    # filled holes are often the lesions themselves, and a large lesion would otherwise tint its own
    # reference (on synthetic photos with 50-70 px lesions: mean IoU 0.59 -> 0.94).
    support = skin.mask & skin.raw
    if support.sum() < 16:
        support = skin.mask if skin.mask.any() else region
    # Pass 1: distance to the local mean colour of all skin; pass 2: of skin outside pass-1 blobs.
    dist = colour_distance(lab, local_reference(lab, support, sigma), lightness_weight)
    for _ in range(2):
        inside = dist[region]
        thr = adaptive_threshold(inside, floor, z)
        blobs = cv2.dilate((dist > 0.6 * thr).astype(np.uint8) & region.astype(np.uint8), disk(2)).astype(bool)
        clean = support & ~blobs
        if clean.sum() < 16:
            break
        dist = colour_distance(lab, local_reference(lab, clean, sigma), lightness_weight)
    inside = dist[region]
    thr = adaptive_threshold(inside, floor, z)
    # Components over the whole frame, so that a background patch merely touching the skin is seen
    # whole (and rejected by its enclosure), not clipped to a strip along the skin's edge.
    strong = filters.apply_hysteresis_threshold(dist, 0.7 * thr, thr)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(strong.astype(np.uint8), connectivity=8)
    touches_region = np.bincount(labels[region], minlength=n) > 0
    min_area = max(6.0, min_area_fraction * h * w)
    max_area = max_area_fraction_of_region * float(region.sum())
    ring_width = max(1, round(min(h, w) / 100))
    # Pad by a margin that counts as "not skin", so the frame border never encloses a component.
    pad = 2 * ring_width + 2
    region_p, labels_p, dist_p = (np.pad(a, pad) for a in (region, labels, dist))
    found: list[tuple[float, Candidate]] = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area < min_area or area > max_area or not touches_region[i]:
            continue
        if interior_only and (x == 0 or y == 0 or x + bw == w or y + bh == h):
            continue
        # Crop (padded coordinates) around the component with room for its outer ring.
        y0, y1, x0, x1 = y, y + bh + 2 * pad, x, x + bw + 2 * pad
        comp = ndimage.binary_fill_holes(labels_p[y0:y1, x0:x1] == i)
        ring = _ring(comp, ring_width)
        enclosure = float(region_p[y0:y1, x0:x1][ring].mean()) if ring.any() else 0.0
        if enclosure < min_enclosure:
            continue
        solidity = _solidity(comp)
        if solidity < min_solidity:
            continue
        d = dist_p[y0:y1, x0:x1]
        contrast = float(np.median(d[comp]))
        low = ndimage.binary_fill_holes(comp | (ndimage.binary_dilation(comp, iterations=2) & (d > 0.8 * thr)))
        high = comp & (d > 1.25 * thr)
        mask = np.zeros((h + 2 * pad, w + 2 * pad), bool)
        mask[y0:y1, x0:x1] = comp
        mask = mask[pad:-pad, pad:-pad]
        cand = Candidate(mask=mask, contrast=contrast, threshold=thr, enclosure=enclosure,
                         solidity=solidity, stability=mask_iou(low, high))
        found.append((contrast * area, cand))
    found.sort(key=lambda t: -t[0])
    return [c for _, c in found[:max_candidates]], dist


def superpixels(rgb: np.ndarray, target_px: int = 60) -> np.ndarray:
    """SLIC superpixels of ``rgb`` float [h, w, 3]: int labels [h, w], about ``target_px`` pixels each."""
    h, w = rgb.shape[:2]
    n_segments = max(16, int(h * w / target_px))
    return segmentation.slic(rgb, n_segments=n_segments, compactness=10.0, start_label=0, sigma=0.5,
                             channel_axis=-1, enforce_connectivity=True)


def refine_with_superpixels(mask: np.ndarray, labels: np.ndarray, min_inside: float = 0.5) -> np.ndarray:
    """Union of superpixels with more than ``min_inside`` of their pixels in ``mask`` (bool [h, w]).

    Returns the original mask when no superpixel qualifies (the candidate is smaller than one).
    """
    ids = labels[mask]
    if ids.size == 0:
        return mask
    n = int(labels.max()) + 1
    inside = np.bincount(ids, minlength=n)
    total = np.bincount(labels.ravel(), minlength=n)
    keep = inside > min_inside * np.maximum(total, 1)
    refined = keep[labels]
    return refined if refined.any() else mask
