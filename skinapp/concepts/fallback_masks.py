"""Weight-free skin masks for the fallback extractor (lesions: :mod:`skinapp.concepts.fallback_lesions`).

Everything here works on a small *analysis* image (RGB float in [0, 1], long side a few hundred
pixels) and returns boolean masks on that grid; :mod:`skinapp.concepts.fallback` upsamples them to
the working image.

:func:`skin_mask`: a YCrCb chroma box AND an HSV hue/saturation rule (valid from very light to very
dark skin, see ``skinapp.synthetic.SKIN_TONES``, and for the pink-violet skin of dermoscopy), cleaned by
opening/closing, holes filled, and only large connected components kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: YCrCb chroma box for skin (OpenCV 8-bit scale), from Chai & Ngan (1999), Cb widened to 150 for pink skin.
CR_RANGE = (137.0, 180.0)
CB_RANGE = (70.0, 150.0)
#: HSV rule: hue in red-orange (0..50 deg) or pink-magenta (300..360 deg: erythema, dermoscopy light); saturation.
HUE_MAX_DEG = 50.0
HUE_WRAP_DEG = 300.0
SAT_RANGE = (0.08, 0.80)
#: Chroma distance (Delta E in the a*b* plane) to the photo's own skin chroma that still counts as skin:
#: about 4 just-noticeable differences (JND ~ 2.3); beige walls and clothing lie farther.
SKIN_CHROMA_DELTA = 10.0
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


def adaptive_skin(rgb: np.ndarray, seeds: np.ndarray, max_delta_ab: float = SKIN_CHROMA_DELTA) -> np.ndarray:
    """Seeds plus pixels whose CIELAB chroma (a*, b*) lies within ``max_delta_ab`` of the seeds' median chroma.

    A fixed colour rule misses pale, low-saturation or oddly lit skin; the photo's own skin colour
    (estimated from the pixels the rule is sure of) recovers it (image-adaptive skin models: Phung,
    Bouzerdoum & Chai, IEEE TPAMI 2005). Lightness is ignored, so shading does not matter.
    ``rgb`` float [h, w, 3] in [0, 1], ``seeds`` bool [h, w] -> bool [h, w].
    """
    if seeds.sum() < 16:
        return seeds
    ab = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2LAB)[..., 1:]
    centre = np.median(ab[seeds], axis=0)
    return seeds | (np.linalg.norm(ab - centre, axis=-1) < max_delta_ab)


def skin_mask(rgb: np.ndarray, min_skin_fraction: float = 0.005) -> SkinResult:
    """Skin region of an analysis image ``rgb`` float [h, w, 3] in [0, 1].

    The colour rule, widened to this photo's own skin chroma (:func:`adaptive_skin`), is cleaned with an
    opening (removes speckle), a closing (bridges pores and hair), hole filling, and a component filter
    (components >= ``min_skin_fraction`` of the image and >= 10 % of the largest one).
    """
    h, w = rgb.shape[:2]
    raw = adaptive_skin(rgb, skin_rule(rgb))
    r = max(1, round(min(h, w) / 160))
    cleaned = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, disk(r))
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, disk(2 * r)).astype(bool)
    cleaned = ndimage.binary_fill_holes(cleaned)
    cleaned = keep_large_components(cleaned, min_skin_fraction, 0.1)
    region = cv2.morphologyEx(cleaned.astype(np.uint8), cv2.MORPH_CLOSE, disk(max(2, round(min(h, w) / 40))))
    region = ndimage.binary_fill_holes(region.astype(bool)) | cleaned
    return SkinResult(mask=cleaned, raw=raw, region=region)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
