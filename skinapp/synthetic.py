"""Synthetic skin photos with known ground truth, for tests, demos and the planted-task experiments.

A photo is a cluttered indoor-like background, a skin-coloured limb with soft shading, and one
planted "lesion" blob on the limb (plus optional distractor blobs off the limb). Everything is
drawn with numpy/OpenCV from a seed, so the same seed gives the same photo everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Skin tones (RGB), light to dark, roughly Fitzpatrick I..VI.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (241, 208, 184), (226, 185, 150), (205, 155, 120), (176, 122, 88), (132, 86, 60), (94, 60, 43),
)

#: Lesion colours (RGB) keyed by a name used as a planted class.
LESION_COLOURS: dict[str, tuple[int, int, int]] = {
    "dark_brown": (70, 40, 25),
    "red": (170, 30, 40),
    "blue_grey": (70, 80, 120),
    "pale": (235, 225, 205),
}


@dataclass
class SyntheticPhoto:
    """A synthetic photo and its ground truth.

    Attributes:
        pixels: uint8 [H, W, 3] RGB.
        lesion_mask: bool [H, W], the planted blob.
        limb_mask: bool [H, W], the skin-coloured limb (includes the blob's area).
        lesion_box: (x0, y0, x1, y1) pixel box of the planted blob.
        label: the planted class (the lesion's colour name, or the shape name when shapes vary).
    """

    pixels: np.ndarray
    lesion_mask: np.ndarray
    limb_mask: np.ndarray
    lesion_box: tuple[int, int, int, int]
    label: str


def _clutter(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A non-skin cluttered background: a wall gradient, furniture-like rectangles, noise."""
    grey = float(rng.integers(70, 210))
    tints = ((0, 0, 0), (-15, 0, 25), (-10, 15, 0), (-5, 5, 15))
    base = np.clip(grey + np.array(tints[int(rng.integers(len(tints)))]), 0, 255)
    ramp = np.linspace(0.8, 1.15, h)[:, None, None]
    img = np.clip(base[None, None, :] * ramp * np.ones((h, w, 3)), 0, 255)
    palette = [(40, 70, 150), (30, 120, 60), (90, 90, 95), (200, 200, 210), (20, 20, 25), (140, 40, 140)]
    for _ in range(int(rng.integers(6, 12))):
        colour = np.array(palette[int(rng.integers(len(palette)))]) + rng.integers(-20, 20, 3)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 3)), y0 + int(rng.integers(h // 10, h // 3))
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(int(c) for c in np.clip(colour, 0, 255)), -1)
    img += rng.normal(0, 6, img.shape)
    return img


def _blob_mask(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, radius: float,
               shape: str = "round") -> np.ndarray:
    """A lesion-like blob: an irregular ellipse ("round") or an elongated streak ("elongated")."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.15 * np.sin(3 * theta + rng.uniform(0, 6.28)) + 0.08 * np.sin(7 * theta + rng.uniform(0, 6.28))
    if shape == "elongated":
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        r = np.sqrt((u / (1.8 * radius)) ** 2 + (v / (0.55 * radius)) ** 2)
        return r <= wobble
    r = np.hypot(xx - cx, yy - cy) / radius
    return r <= wobble


def make_skin_photo(seed: int, size: tuple[int, int] = (384, 512), lesion_colour: str | None = None,
                    lesion_shape: str = "round", skin_tone: int | None = None, distractors: int = 2,
                    lesion_radius: float | None = None) -> SyntheticPhoto:
    """Draw a synthetic phone photo of a limb with one planted lesion.

    Args:
        seed: random seed; the same seed gives the same photo.
        size: (H, W) in pixels.
        lesion_colour: a key of LESION_COLOURS (random when None).
        lesion_shape: "round" or "elongated".
        skin_tone: index into SKIN_TONES (random when None).
        distractors: number of non-skin coloured blobs drawn on the background.
        lesion_radius: blob radius in pixels (about 6 % of the short side when None).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    img = _clutter(rng, h, w)
    # Limb: a thick rotated band crossing the frame.
    tone = SKIN_TONES[int(rng.integers(len(SKIN_TONES))) if skin_tone is None else skin_tone]
    limb = np.zeros((h, w), np.uint8)
    angle = rng.uniform(-0.5, 0.5)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    half_len, half_width = w * 0.75, h * rng.uniform(0.22, 0.3)
    box = cv2.boxPoints(((cx, cy), (2 * half_len, 2 * half_width), np.degrees(angle)))
    cv2.fillPoly(limb, [box.astype(np.int32)], 1)
    limb = cv2.GaussianBlur(limb.astype(np.float32), (0, 0), 2) > 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dist = np.abs(-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / half_width
    shade = (1.08 - 0.25 * np.clip(dist, 0, 1) ** 2)[..., None]
    skin = np.array(tone, np.float64)[None, None, :] * shade + rng.normal(0, 4, (h, w, 3))
    img = np.where(limb[..., None], skin, img)
    # Lesion on the limb, away from its edge.
    radius = lesion_radius if lesion_radius is not None else min(h, w) * rng.uniform(0.05, 0.08)
    along = rng.uniform(-0.45, 0.45) * min(half_len, w / 2)
    across = rng.uniform(-0.3, 0.3) * half_width
    lx = cx + along * np.cos(angle) - across * np.sin(angle)
    ly = cy + along * np.sin(angle) + across * np.cos(angle)
    colour_name = lesion_colour or list(LESION_COLOURS)[int(rng.integers(len(LESION_COLOURS)))]
    lesion = _blob_mask(rng, h, w, lx, ly, radius, lesion_shape) & limb
    colour = np.array(LESION_COLOURS[colour_name], np.float64)
    texture = rng.normal(0, 10, (h, w, 1))
    img = np.where(lesion[..., None], colour[None, None, :] + texture, img)
    # Soft edge: blend one pixel ring.
    ring = cv2.dilate(lesion.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~lesion
    img[ring] = 0.5 * img[ring] + 0.5 * colour
    for _ in range(distractors):
        mx, my = rng.uniform(0, w), rng.uniform(0, h)
        blob = _blob_mask(rng, h, w, mx, my, radius * rng.uniform(0.8, 1.5)) & ~limb
        d_col = np.array([(30, 60, 160), (40, 140, 70), (200, 200, 60)][int(rng.integers(3))], np.float64)
        img = np.where(blob[..., None], d_col, img)
    pixels = np.clip(np.round(img), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(lesion)
    lesion_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    label = colour_name if lesion_shape == "round" else f"{colour_name}_{lesion_shape}"
    return SyntheticPhoto(pixels=pixels, lesion_mask=lesion, limb_mask=limb | lesion, lesion_box=lesion_box,
                          label=label)
