"""Weight-free lesion candidates on real photos: hair removal, colour contrast, Otsu, GrabCut, ranking.

Everything works on the small analysis image (RGB float [h, w, 3] in [0, 1]) and returns bool masks on
that grid. Steps, each a well-known classic method:

1. :func:`remove_hair`: DullRazor (Lee et al., Comput Biol Med 1997) as morphological black-hat on L*
   (thin, elongated dark structures: hair, marker lines), then Telea inpainting (OpenCV ``cv2.inpaint``).
2. :func:`contrast_map`: CIE76 Delta E of every pixel to the *local* skin colour (normalised Gaussian
   convolution over the region's pixels that are not lesion). The split is found by iterating Otsu's
   threshold (Otsu 1979) on Delta E and re-estimating the skin colour from the pixels below it (the
   iterative two-class scheme of Ridler & Calvard / ISODATA, with Otsu as the split).
3. :func:`lesion_candidates`: connected components above the split, and above the lower split of a
   three-class Otsu (faint lesions), opened and hole-filled; the best-ranked ``grabcut_candidates``
   are refined by GrabCut (Rother et al., SIGGRAPH 2004; ``cv2.grabCut``) started from the component
   as "probable lesion" in a band of "probable skin", which snaps the outline to colour edges.
   After ranking, each candidate's outline is grown by hysteresis (:func:`grow_outline`; Canny 1986,
   ``skimage.filters.apply_hysteresis_threshold`` style): the connected pixels above the lower split of
   the three-class Otsu join it, so a lesion's faint rim belongs to the lesion, as in expert masks.
   Detection (which blob, its score) uses the core; delineation (the outline) uses the grown mask, or its
   convex hull, or its opening (:mod:`skinapp.concepts.fallback_outline`), whichever :func:`rank_score`
   rates highest: the hull fills notches cut by hair and texture, the opening cuts rims that leaked
   along shadows. The same evidence that picks the lesion picks its outline.
4. :func:`rank_score`: the evidence that separates lesions from texture on real photos, multiplied:
   colour contrast to the surrounding ring, compactness (solidity), enclosure by skin, centrality
   (photographers centre the lesion) and a size prior. Each factor's constant is a :class:`LesionConfig` field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, filters

from skinapp.concepts.fallback_masks import disk
from skinapp.concepts.fallback_outline import convex_outline, grabcut_refine, grow_outline, opened_outline

__all__ = ["JND_DELTA_E", "MIN_SPLIT_DELTA_E", "LesionCandidate", "LesionConfig", "contrast_map", "grabcut_refine",
           "grow_outline", "lesion_candidates", "local_reference", "rank_score", "remove_hair"]

#: Smallest Otsu split (Delta E) that counts as a lesion at all: a few just-noticeable differences
#: (JND ~ 2.3 Delta E, Sharma 2003); below it the region is treated as uniform skin.
MIN_SPLIT_DELTA_E = 6.0

#: One just-noticeable difference in CIE76 Delta E (Sharma 2003): the floor of the hysteresis (rim) level;
#: below it a "rim" is invisible and growth would only follow noise.
JND_DELTA_E = 2.3


@dataclass(frozen=True)
class LesionConfig:
    """Parameters of the lesion search (configs as data); defaults are a-priori choices, see each.

    Attributes:
        hair_kernel_fraction: black-hat structuring element diameter as a fraction of the analysis short
            side (1/50: ~5 px at 256 px; in a close-up of a ~5 cm field that is ~1 mm, wider than hair
            (~0.1 mm) and marker lines, narrower than all but the smallest lesions).
        hair_delta_l: black-hat response (L* units) above which a pixel is hair/ink (DullRazor-style;
            10 L* is several JNDs: pores and skin texture stay below it).
        otsu_rounds: rounds of "Otsu split, re-estimate skin colour from the lower class" (2 settle it).
        min_area_fraction: smallest candidate as a fraction of the image (0.1 %: ~65 px at 256 px).
        contrast_scale: Delta E at which the contrast factor reaches 1 - 1/e (10: a clearly visible
            difference, ~4 JND).
        centre_sigma: width of the centrality prior, as a fraction of the image diagonal (0.25: a lesion
            halfway to a corner keeps ~60 % of its score; an off-centre lesion can still win on contrast).
        grabcut_iterations: GrabCut EM iterations (OpenCV's examples use 5).
        grabcut_candidates: how many of the best-ranked candidates GrabCut refines (cost control).
        grow_rim: grow each ranked candidate by hysteresis down to the lower three-class Otsu split
            (:func:`grow_outline`); False keeps the core outline (for comparisons).
        choose_outline: compare each candidate's outline with its convex hull and its opening
            (:mod:`skinapp.concepts.fallback_outline`) and keep the one :func:`rank_score` rates highest;
            False keeps the (grown) outline (for comparisons).
        outline_candidates: how many of the best-ranked candidates get that choice (cost control: each
            alternative is described once more; the rest keep the grown outline).
        open_fraction: radius of the opening's disk as a fraction of the outline's equivalent radius (1/4:
            a leak narrower than half the lesion's radius is cut, the lesion body is not).
    """

    hair_kernel_fraction: float = 1 / 50
    hair_delta_l: float = 10.0
    otsu_rounds: int = 2
    min_area_fraction: float = 1e-3
    contrast_scale: float = 10.0
    centre_sigma: float = 0.25
    grabcut_iterations: int = 5
    grabcut_candidates: int = 1
    grow_rim: bool = True
    choose_outline: bool = True
    outline_candidates: int = 8
    open_fraction: float = 0.25


@dataclass(frozen=True)
class LesionCandidate:
    """One lesion candidate on the analysis grid.

    The statistics describe the candidate's core (the blob above the two-class split, GrabCut-refined);
    ``mask`` is its outline after :func:`grow_outline` (``LesionConfig.grow_rim``) and the outline choice
    (``LesionConfig.choose_outline``).

    Attributes:
        mask: bool [h, w].
        contrast: Delta E between the candidate's median colour and its surrounding ring's.
        solidity: area / convex-hull area in (0, 1].
        enclosure: fraction of the surrounding ring that is skin region inside the frame, in [0, 1].
        centrality: the centrality factor in (0, 1].
        size: the size factor in (0, 1].
        stability: IoU of the thresholded component and its GrabCut refinement (1 when not refined); the
            refinement is kept only when this is >= 0.5.
        score: the ranking score in [0, 1].
    """

    mask: np.ndarray
    contrast: float
    solidity: float
    enclosure: float
    centrality: float
    size: float
    stability: float
    score: float


def remove_hair(rgb: np.ndarray, kernel_fraction: float = 1 / 50, delta_l: float = 10.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """DullRazor-style hair removal. ``rgb`` float [h, w, 3] in [0, 1] -> (inpainted rgb, bool hair mask [h, w]).

    Black-hat (closing minus image) of L* with a disk of diameter ``kernel_fraction`` x short side marks thin
    dark structures; pixels above ``delta_l`` in elongated components (length >= 3x thickness: hair and
    ink lines, not compact dark spots, which may be lesions), dilated by 1 px, are filled by Telea inpainting.
    """
    h, w = rgb.shape[:2]
    u8 = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    lightness = cv2.cvtColor(u8, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) * (100.0 / 255.0)
    radius = max(1, round(kernel_fraction * min(h, w) / 2))
    blackhat = cv2.morphologyEx(lightness, cv2.MORPH_BLACKHAT, disk(radius))
    hair = _elongated((blackhat > delta_l).astype(np.uint8))
    hair = cv2.dilate(hair.astype(np.uint8), disk(1))
    if not hair.any():
        return rgb, hair.astype(bool)
    clean = cv2.inpaint(u8, hair, 3, cv2.INPAINT_TELEA)
    return clean.astype(np.float32) / 255.0, hair.astype(bool)


def _elongated(mask: np.ndarray, min_elongation: float = 3.0) -> np.ndarray:
    """Components of uint8 ``mask`` at least ``min_elongation`` times longer (box diagonal) than thick
    (twice the largest inscribed radius): hair and ink lines, not compact spots (naevi, dots)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    radius = ndimage.maximum(cv2.distanceTransform(mask, cv2.DIST_L2, 3), labels, np.arange(n))
    length = np.hypot(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = length >= min_elongation * 2.0 * np.maximum(np.asarray(radius), 0.5)
    keep[0] = False
    return keep[labels]


def local_reference(lab: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Local skin colour: Gaussian-weighted mean CIELAB over ``support`` pixels (normalised convolution).

    Args:
        lab: float [h, w, 3]; support: bool [h, w] non-empty; sigma: Gaussian width in pixels.

    Returns:
        float32 [h, w, 3] (the support's median where no support pixel is near).
    """
    h, w = support.shape
    # The field is smooth at scale sigma: blur on a grid 4x coarser (exact up to interpolation, ~16x cheaper).
    f = 4 if min(h, w) >= 64 and sigma >= 8 else 1
    size = (max(1, w // f), max(1, h // f))
    weight = cv2.resize(support.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    values = cv2.resize(lab.astype(np.float32) * support[..., None], size, interpolation=cv2.INTER_AREA)
    num = cv2.GaussianBlur(values, (0, 0), sigma / f)
    den = cv2.GaussianBlur(weight, (0, 0), sigma / f)[..., None]
    fallback = np.median(lab[support], axis=0)
    small = np.where(den > 1e-3, num / np.maximum(den, 1e-6), fallback[None, None]).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if f > 1 else small


def contrast_map(lab: np.ndarray, region: np.ndarray, rounds: int = 2, sigma_fraction: float = 0.25
                 ) -> tuple[np.ndarray, float]:
    """Delta E to the local skin colour, and the Otsu split between skin and lesion.

    The skin colour starts as the region's median; each round splits the region's Delta E by Otsu and
    recomputes the *local* skin colour (:func:`local_reference`, width ``sigma_fraction`` x short side:
    wide enough to reach past a lesion, narrow enough to follow shading across a limb) from the pixels
    below the split only, so a lesion does not tint its own reference.

    Args:
        lab: float [h, w, 3] CIELAB.
        region: bool [h, w] where skin and lesions lie (the skin region, or the whole frame).
        rounds: Otsu/re-estimation rounds.
        sigma_fraction: width of the local reference as a fraction of the short side.

    Returns:
        (Delta E float32 [h, w], threshold). The threshold is at least :data:`MIN_SPLIT_DELTA_E`.
    """
    sigma = max(2.0, sigma_fraction * min(region.shape))
    reference = np.median(lab[region], axis=0)
    dist = np.linalg.norm(lab - reference, axis=-1).astype(np.float32)
    for _ in range(max(1, rounds)):
        values = dist[region]
        if np.ptp(values) < 1e-6:
            return dist, MIN_SPLIT_DELTA_E
        thr = max(float(filters.threshold_otsu(values)), MIN_SPLIT_DELTA_E)
        skin = region & (dist <= thr)
        if skin.sum() < 16:
            break
        dist = np.linalg.norm(lab - local_reference(lab, skin, sigma), axis=-1).astype(np.float32)
    values = dist[region]
    thr = max(float(filters.threshold_otsu(values)), MIN_SPLIT_DELTA_E) if np.ptp(values) > 1e-6 else \
        MIN_SPLIT_DELTA_E
    return dist, thr


def _solidity(mask: np.ndarray) -> float:
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None or len(pts) < 3:
        return 1.0
    hull = cv2.convexHull(pts)
    return float(min(1.0, mask.sum() / (cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) + 1.0)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)  # count_nonzero: several times faster than bool .sum()
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), disk(width)).astype(bool) & ~mask


def rank_score(contrast: float, solidity: float, enclosure: float, centroid: tuple[float, float],
               area_fraction: float, shape: tuple[int, int], cfg: LesionConfig) -> tuple[float, float, float]:
    """(score, centrality, size) of a candidate: the square root of the product of five factors, in [0, 1].

    Five factors in (0, 1] multiply to small numbers; the square root (monotone: the ranking is the product's)
    spreads them so that the app's default box threshold (0.3) keeps candidates whose product is >= 0.09.

    - contrast: 1 - exp(-Delta E / ``contrast_scale``) (Delta E of the candidate to its surrounding ring);
    - compactness: solidity (lesions are convex-ish; texture, hair and shadows are not);
    - enclosure: the fraction of the surrounding ring that is skin region inside the frame (shadows and
      background enter from the edge: a blob running along the frame keeps about half its score);
    - centrality: Gaussian of the centroid's distance to the image centre (in diagonals, width ``centre_sigma``);
    - size: 1 - exp(-area / (20 x min_area)) (tiny blobs are weak evidence), times min(1, 2 (1 - area))
      (a "lesion" filling the frame is more likely the skin itself).
    """
    h, w = shape
    dy, dx = (centroid[0] - (h - 1) / 2), (centroid[1] - (w - 1) / 2)
    d = math.hypot(dx, dy) / math.hypot(h, w)
    centrality = math.exp(-0.5 * (d / cfg.centre_sigma) ** 2)
    size = (1.0 - math.exp(-area_fraction / (20 * cfg.min_area_fraction))) * min(1.0, 2.0 * (1.0 - area_fraction))
    contrast_f = 1.0 - math.exp(-contrast / cfg.contrast_scale)
    evidence = contrast_f * solidity * enclosure * centrality * size
    return float(np.clip(math.sqrt(evidence), 0, 1)), centrality, size


def _describe(lab: np.ndarray, region: np.ndarray, mask: np.ndarray, stability: float,
              cfg: LesionConfig) -> LesionCandidate:
    h, w = mask.shape
    width = max(2, round(min(h, w) / 40))
    ys, xs = np.nonzero(mask)
    # Work on the candidate's box plus its ring; outside the frame counts as "not skin".
    y0, y1, x0, x1 = ys.min() - width, ys.max() + width + 1, xs.min() - width, xs.max() + width + 1
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)))
    sl = np.s_[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    m, reg = np.pad(mask[sl], pad), np.pad(region[sl], pad)
    ring = _ring(m, width)
    enclosure = float(reg[ring].mean()) if ring.any() else 0.0
    lab_c = np.pad(lab[sl], (*pad, (0, 0)), mode="edge")
    skin_ring = ring & reg
    ring_lab = lab_c[skin_ring] if skin_ring.any() else lab[~mask] if (~mask).any() else lab[mask]
    contrast = float(np.linalg.norm(np.median(lab_c[m], axis=0) - np.median(ring_lab, axis=0)))
    solidity = _solidity(m)
    score, centrality, size = rank_score(contrast, solidity, enclosure, (float(ys.mean()), float(xs.mean())),
                                         float(mask.mean()), (h, w), cfg)
    return LesionCandidate(mask, contrast, solidity, enclosure, centrality, size, stability, score)


def lesion_candidates(rgb: np.ndarray, region: np.ndarray, cfg: LesionConfig = LesionConfig(),
                      max_candidates: int = 64) -> list[LesionCandidate]:
    """Ranked lesion candidates (best first) in ``region`` of ``rgb`` float [h, w, 3] in [0, 1].

    Args:
        rgb: the analysis image.
        region: bool [h, w] where lesions may lie (skin region; the whole frame for grayscale photos).
        cfg: :class:`LesionConfig`.
        max_candidates: at most this many candidates are returned.
    """
    h, w = region.shape
    if region.sum() < 16:
        return []
    clean, _ = remove_hair(rgb, cfg.hair_kernel_fraction, cfg.hair_delta_l)
    lab = color.rgb2lab(cv2.GaussianBlur(clean, (0, 0), 1.0)).astype(np.float32)
    dist, thr = contrast_map(lab, region, cfg.otsu_rounds)
    # Two levels: the skin/lesion Otsu split, and the lower split of a three-class Otsu (faint lesions
    # next to a strongly contrasting structure: the two-class split lands above the faint one).
    levels = [thr]
    values = dist[region]
    low = float(filters.threshold_multiotsu(values, classes=3)[0]) if np.unique(values).size > 3 else thr
    if MIN_SPLIT_DELTA_E <= low < thr:
        levels.append(low)
    r = max(1, round(min(h, w) / 128))
    min_area = max(6, cfg.min_area_fraction * h * w)
    comps: list[np.ndarray] = []
    for level in levels:
        fg = cv2.morphologyEx(((dist > level) & region).astype(np.uint8), cv2.MORPH_OPEN, disk(r))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        for i in range(1, n):
            if stats[i, cv2.CC_STAT_AREA] < min_area:
                continue
            x, y, bw, bh = stats[i, :4]
            mask = np.zeros((h, w), bool)
            mask[y:y + bh, x:x + bw] = ndimage.binary_fill_holes(labels[y:y + bh, x:x + bw] == i)
            if not any(_iou(mask, other) > 0.8 for other in comps):
                comps.append(mask)
    if not comps:
        return []
    rough = sorted((_describe(lab, region, m, 1.0, cfg) for m in comps), key=lambda c: -c.score)[:max_candidates]
    refined = []
    for i, cand in enumerate(rough):
        if i < cfg.grabcut_candidates:
            mask = grabcut_refine(clean, cand.mask, cfg.grabcut_iterations)
            stability = _iou(mask, cand.mask)
            # GrabCut may move the outline, not replace the candidate: below IoU 0.5 it lost the lesion.
            refined.append(_describe(lab, region, mask, stability, cfg) if stability >= 0.5 else
                           _describe(lab, region, cand.mask, stability, cfg))
        else:
            refined.append(cand)
    ranked = sorted(refined, key=lambda c: -c.score)
    grow = cfg.grow_rim and JND_DELTA_E <= low < thr
    low_fg = cv2.morphologyEx(((dist > low) & region).astype(np.uint8), cv2.MORPH_OPEN,
                              disk(r)).astype(bool) if grow else None
    # Delineation after detection: the rank comes from the core, the outline from hysteresis growth, then
    # the outline, its convex hull or its opening, whichever the ranking evidence rates highest.
    # Two cores may grow into one lesion; the lower-ranked copy is dropped.
    out: list[LesionCandidate] = []
    for i, cand in enumerate(ranked):
        mask = grow_outline(cand.mask, low_fg) if grow else cand.mask
        if cfg.choose_outline and i < cfg.outline_candidates:
            # On a tie max keeps the first: the outline as grown, else its opening (drops pixels, adds none).
            mask = max((mask, opened_outline(mask, cand.mask, cfg.open_fraction), convex_outline(mask)),
                       key=lambda m: _describe(lab, region, m, 1.0, cfg).score)
        if not any(_iou(mask, other.mask) > 0.8 for other in out):
            out.append(replace(cand, mask=mask))
    return out
