"""Drawing what the user sees: concept masks and boxes, the untrained-weights banner, the Explain view.

Every function takes and returns uint8 RGB arrays [H, W, 3] and never changes its input; concept numbers
are placed inside their masks (:func:`label_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

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


#: The smallest banner text (cv2 Hershey simplex scale; capitals about 8 px tall): narrower photos wrap instead.
BANNER_MIN_SCALE = 0.3
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MARGIN = 3  # px kept free of text at the strip's left and right edges


class BannerLayout(NamedTuple):
    """How :func:`stamp_banner` writes its text: cv2 font ``scale``, the ``lines`` (the text's words, in order,
    one line unless the photo is too narrow), the ``strip`` height in px added above the photo, and each
    line's ``baselines`` (y in px from the strip's top)."""

    scale: float
    lines: tuple[str, ...]
    strip: int
    baselines: tuple[int, ...]


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def banner_layout(text: str, width: int, height: int) -> BannerLayout:
    """The banner's layout over a photo of ``width`` x ``height`` px.

    One line sized to the photo (at most 92 % of its width and 60 % of the strip, strip = max(14, height // 14)),
    at least :data:`BANNER_MIN_SCALE`. When that line is wider than the photo less 3 px a side, the words wrap
    onto more lines at the minimum scale (a line also ends after a " -") and the strip grows to hold them; a
    single word wider than that (photos under about 50 px) shrinks the scale below the minimum rather than be
    cut. The em dash is written "-" (the Hershey fonts have no such glyph).
    """
    text = text.replace("\u2014", "-")
    strip = max(14, height // 14)
    room = max(1, width - 2 * _MARGIN)
    (tw, th), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = max(BANNER_MIN_SCALE, min(0.92 * width / tw, 0.6 * strip / th))
    if _text_width(text, scale) <= room:
        th = cv2.getTextSize(text, _FONT, scale, 1)[0][1]
        return BannerLayout(scale, (text,), strip, ((strip + th) // 2,))
    words = text.split()
    scale = BANNER_MIN_SCALE
    while scale > 0.05 and max(_text_width(w, scale) for w in words) > room:
        scale = round(scale - 0.01, 2)
    lines = [words[0]]
    for word in words[1:]:
        joined = f"{lines[-1]} {word}"
        if not lines[-1].endswith(" -") and _text_width(joined, scale) <= room:  # a wrapped line ends at the dash
            lines[-1] = joined
        else:
            lines.append(word)
    th = cv2.getTextSize(text, _FONT, scale, 1)[0][1]
    gap = max(3, round(0.4 * th))
    block = len(lines) * th + (len(lines) - 1) * gap
    strip = max(strip, block + 2 * gap)
    top = (strip - block) // 2
    return BannerLayout(scale, tuple(lines), strip, tuple(top + th + i * (th + gap) for i in range(len(lines))))


def stamp_banner(image: np.ndarray, text: str = UNTRAINED_WARNING) -> np.ndarray:
    """``image`` (uint8 [H, W, 3]) below a red strip with ``text``: uint8 [H + strip, W, 3].

    The strip is added above the photo, never drawn over it: a concept's label or a lesion at the top edge stays
    visible. It is max(14, H // 14) px high with one line of text; on photos too narrow for that line (under
    about 150 px) the words wrap and the strip grows to hold every line (:func:`banner_layout`).
    """
    h, w = image.shape[:2]
    layout = banner_layout(text, w, h)
    out = np.empty((h + layout.strip, w, 3), np.uint8)
    out[:layout.strip] = (200, 0, 0)
    out[layout.strip:] = image
    for line, y in zip(layout.lines, layout.baselines):
        x = max(_MARGIN, (w - _text_width(line, layout.scale)) // 2)
        cv2.putText(out, line, (x, y), _FONT, layout.scale, (255, 255, 255), 1, cv2.LINE_AA)
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


def label_positions(masks: Any, min_gap: float) -> list[tuple[int, int] | None]:
    """Where to write each mask's number (x, y), None for an empty mask.

    The pixel deepest inside the mask (largest distance to its edge or the photo's border,
    cv2.distanceTransform), at least ``min_gap`` px from the numbers already placed. Smaller masks are placed
    first, so a lesion keeps its centre; a larger mask that contains it (the skin around a lesion) is measured
    without the smaller masks, so its number lands on skin, not on the lesion.
    """
    masks = [np.asarray(m) > 0 for m in masks]
    positions: list[tuple[int, int] | None] = [None] * len(masks)
    far_from_placed = None  # uint8 [H, W]: 0 at the numbers placed so far
    placed = np.zeros_like(masks[0]) if masks else None  # bool [H, W]: the masks numbered so far (all smaller)
    for i in sorted(range(len(masks)), key=lambda j: int(masks[j].sum())):
        if not masks[i].any():
            continue
        own = masks[i] & ~placed
        if not own.any():  # wholly covered by smaller masks: its own outline still holds the number
            own = masks[i]
        placed |= masks[i]
        padded = np.pad(own, 1).astype(np.uint8)  # the photo's border counts as the mask's edge
        depth = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        free = depth
        if far_from_placed is not None:
            free = depth * (cv2.distanceTransform(far_from_placed, cv2.DIST_L2, 5) >= min_gap)
        y, x = np.unravel_index(int(np.argmax(free if free.max() > 0 else depth)), depth.shape)
        positions[i] = (int(x), int(y))
        if far_from_placed is None:
            far_from_placed = np.ones(masks[i].shape, np.uint8)
        far_from_placed[y, x] = 0
    return positions


def numbered_photo(pixels: np.ndarray, masks: Any, numbers: list[int]) -> np.ndarray:
    """A copy of the photo (uint8 [H, W, 3]) with each concept's number written inside its mask.

    ``masks``: bool [n, H, W] (or a list of [H, W] masks), ``numbers``: the n concept numbers. The masks
    themselves are drawn translucently by gr.AnnotatedImage; the numbers let "concept #2" be found. Each number
    is centred on :func:`label_positions`' point, so two numbers never share a place.
    """
    out = np.ascontiguousarray(np.array(pixels, dtype=np.uint8, copy=True))
    scale = max(0.7, min(out.shape[:2]) / 350)
    thick = max(1, int(5 * scale))
    (_, text_h), _ = cv2.getTextSize("#00", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    for place, number in zip(label_positions(masks, min_gap=2.5 * text_h), numbers):
        if place is None:
            continue
        text = f"#{number}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = int(np.clip(place[0] - tw // 2, 0, max(0, out.shape[1] - tw)))
        y = int(np.clip(place[1] + th // 2, th, out.shape[0] - 1))
        for colour, thickness in (((0, 0, 0), 5), ((255, 255, 255), 2)):
            cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                        max(1, int(thickness * scale)), cv2.LINE_AA)
    return out
