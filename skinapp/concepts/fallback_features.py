"""256-d concept features for the weight-free fallback: colour/texture/shape statistics, projected.

Each mask gets :data:`FEATURE_STATS` (30 numbers: mean/std in CIELAB and HSV, gradient-magnitude
and local-entropy statistics, area, eccentricity, solidity, border irregularity, position, and
colour contrast to the surrounding skin). Each statistic is standardised with a FIXED centre and
scale (listed beside its name, chosen from the ranges skin photos produce; per-image or per-batch
standardisation would make a concept's feature depend on the other concepts), clipped to
[-6, 6], and multiplied by a fixed Gaussian projection matrix [30, 256] (:func:`projection_matrix`).

The projection is reproducible on every machine: its entries come from the raw 64-bit stream of
``numpy.random.PCG64(FALLBACK_PROJECTION_SEED)`` (bit generators' raw streams are stable across
NumPy versions, unlike ``Generator`` methods), mapped to uniforms ``(bits >> 11) * 2**-53`` and
to standard normals by Box-Muller (``sqrt(-2 ln(1 - u1)) * cos(2 pi u2)``, consecutive pairs),
scaled by ``1 / sqrt(30)`` so each output is about unit variance, row-major [30, 256].
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
from skimage.filters import rank

from skinapp.concepts.types import FEATURE_DIM

#: Seed of the fixed projection (changing it changes every fallback feature).
FALLBACK_PROJECTION_SEED = 20240611

#: (name, centre, scale) of each statistic; z = clip((value - centre) / scale, -6, 6).
FEATURE_STATS: tuple[tuple[str, float, float], ...] = (
    ("lab_l_mean", 50.0, 25.0), ("lab_a_mean", 10.0, 15.0), ("lab_b_mean", 15.0, 15.0),
    ("lab_l_std", 5.0, 5.0), ("lab_a_std", 3.0, 3.0), ("lab_b_std", 3.0, 3.0),
    ("hue_cos", 0.7, 0.3), ("hue_sin", 0.3, 0.3), ("hsv_s_mean", 0.4, 0.2), ("hsv_v_mean", 0.5, 0.25),
    ("hsv_s_std", 0.05, 0.05), ("hsv_v_std", 0.05, 0.05),
    ("grad_mean", 2.0, 2.0), ("grad_std", 2.0, 2.0), ("entropy_mean", 3.0, 1.5), ("entropy_std", 0.5, 0.5),
    ("log10_area_fraction", -2.0, 1.0), ("eccentricity", 0.6, 0.3), ("solidity", 0.85, 0.15),
    ("log_irregularity", 0.3, 0.3), ("extent", 0.7, 0.15), ("centroid_x", 0.5, 0.3), ("centroid_y", 0.5, 0.3),
    ("log_aspect", 0.0, 0.5),
    ("delta_e_to_surround", 10.0, 10.0), ("delta_l_to_surround", 0.0, 10.0), ("delta_a_to_surround", 0.0, 8.0),
    ("delta_b_to_surround", 0.0, 8.0), ("surround_fraction_skin", 0.8, 0.3), ("fill_ratio_in_box", 0.6, 0.2),
)
N_STATS = len(FEATURE_STATS)


@functools.lru_cache(maxsize=4)
def projection_matrix(n_in: int = N_STATS, n_out: int = FEATURE_DIM,
                      seed: int = FALLBACK_PROJECTION_SEED) -> np.ndarray:
    """The fixed Gaussian projection, float32 [n_in, n_out] (recipe in the module docstring)."""
    count = n_in * n_out
    bits = np.random.PCG64(seed).random_raw(2 * count)
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    u1, u2 = u[0::2], u[1::2]
    normal = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * math.pi * u2)
    return (normal.reshape(n_in, n_out) / math.sqrt(n_in)).astype(np.float32)


class FeatureMaps:
    """Per-pixel maps shared by every mask of one analysis image.

    Args:
        rgb: float [h, w, 3] in [0, 1].
        lab: float [h, w, 3] CIELAB.
        skin: bool [h, w] skin mask (defines "surrounding skin").
    """

    def __init__(self, rgb: np.ndarray, lab: np.ndarray, skin: np.ndarray):
        self.lab = lab
        hsv = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)
        hue = np.deg2rad(hsv[..., 0])
        self.hsv = np.stack([np.cos(hue), np.sin(hue), hsv[..., 1], hsv[..., 2]], axis=-1)
        gx = cv2.Sobel(lab[..., 0], cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(lab[..., 0], cv2.CV_32F, 0, 1, ksize=3) / 8.0
        self.grad = np.hypot(gx, gy)
        l8 = np.clip(np.round(lab[..., 0] * 2.55), 0, 255).astype(np.uint8)
        self.entropy = rank.entropy(l8, np.ones((5, 5), np.uint8)).astype(np.float32)
        self.skin = skin
        self.height, self.width = skin.shape


def _shape_stats(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(eccentricity, solidity, log irregularity, extent, log aspect) of a bool mask."""
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    area = float(mask.sum())
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    pts = np.concatenate(contours) if contours else np.zeros((0, 1, 2), np.int32)
    hull_area = cv2.contourArea(cv2.convexHull(pts)) if len(pts) >= 3 else area
    ys, xs = np.nonzero(mask)
    if len(xs) >= 2:
        cov = np.cov(np.stack([xs, ys]).astype(np.float64)) + np.eye(2) / 12.0
        ev = np.sort(np.linalg.eigvalsh(cov))
        ecc = float(np.sqrt(max(0.0, 1.0 - ev[0] / ev[1])))
    else:
        ecc = 0.0
    bw = float(xs.max() - xs.min() + 1) if len(xs) else 1.0
    bh = float(ys.max() - ys.min() + 1) if len(ys) else 1.0
    irregularity = perimeter ** 2 / (4.0 * math.pi * max(area, 1.0))
    solidity = area / max(hull_area, area, 1.0)
    return ecc, solidity, math.log(max(irregularity, 1e-3)), area / (bw * bh), math.log(bw / bh)


def mask_statistics(maps: FeatureMaps, mask: np.ndarray) -> np.ndarray:
    """The :data:`FEATURE_STATS` of one non-empty bool mask [h, w]: float64 [N_STATS] (raw values)."""
    h, w = maps.height, maps.width
    if not mask.any():
        raise ValueError("mask_statistics needs a non-empty mask")
    lab, hsv = maps.lab[mask], maps.hsv[mask]
    grad, ent = maps.grad[mask], maps.entropy[mask]
    ys, xs = np.nonzero(mask)
    ecc, solidity, log_irr, extent, log_aspect = _shape_stats(mask)
    ring_width = max(2, round(min(h, w) / 50))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_width + 1, 2 * ring_width + 1))
    ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
    surround = ring & maps.skin
    skin_fraction = float(surround.sum() / ring.sum()) if ring.any() else 0.0
    if not surround.any():
        surround = ring if ring.any() else ~mask
    # A mask covering the whole image has no surround: zero contrast.
    delta = np.median(lab, axis=0) - np.median(maps.lab[surround], axis=0) if surround.any() else np.zeros(3)
    fill = float(mask.sum()) / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    values = (
        *lab.mean(axis=0), *lab.std(axis=0),
        hsv[:, 0].mean(), hsv[:, 1].mean(), hsv[:, 2].mean(), hsv[:, 3].mean(), hsv[:, 2].std(), hsv[:, 3].std(),
        grad.mean(), grad.std(), ent.mean(), ent.std(),
        math.log10(mask.sum() / float(h * w)), ecc, solidity, log_irr, extent,
        xs.mean() / w, ys.mean() / h, log_aspect,
        float(np.linalg.norm(delta)), *delta, skin_fraction, fill,
    )
    return np.asarray(values, dtype=np.float64)


def standardise(stats: np.ndarray) -> np.ndarray:
    """Fixed standardisation of raw statistics [n, N_STATS] -> float64 [n, N_STATS] clipped to [-6, 6]."""
    centre = np.array([c for _, c, _ in FEATURE_STATS])
    scale = np.array([s for _, _, s in FEATURE_STATS])
    return np.clip((stats - centre) / scale, -6.0, 6.0)


def concept_features(maps: FeatureMaps, masks: list[np.ndarray]) -> torch.Tensor:
    """Features of bool masks [h, w] on the analysis grid: float32 tensor [n, FEATURE_DIM]."""
    if not masks:
        return torch.zeros((0, FEATURE_DIM), dtype=torch.float32)
    stats = np.stack([mask_statistics(maps, m) for m in masks])
    projected = standardise(stats) @ projection_matrix().astype(np.float64)
    return torch.from_numpy(projected.astype(np.float32))
