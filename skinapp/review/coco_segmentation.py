"""Decode one COCO segmentation (compressed / uncompressed RLE, or polygons) for the COCO import, after checking
everything pycocotools would fail on in its own words, crash on, or decode into garbage.

Every refusal is a ValueError worded for the user without the annotation's name (the caller adds it), e.g.
"its RLE counts add up to 12 pixels but the image has 1200 (40x30)".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from skinapp.review.coco_values import as_float, is_number, is_whole, shown


def _checked_polygon(polygon: Any, height: int, width: int) -> list[float]:
    """One polygon [x, y, ...] as floats, or ValueError: not a list of JSON numbers, fewer than 3 points, an odd
    count, a number that is not finite, or a point more than one image size outside the image (pycocotools would
    raise a bare Exception, or allocate without bound and crash)."""
    if not isinstance(polygon, (list, tuple)) or not all(is_number(v) for v in polygon):
        raise ValueError(f"each polygon must be a list of numbers x, y, x, y, ...; got {shown(polygon)}")
    if len(polygon) < 6:
        raise ValueError("a polygon needs at least 3 points (6 numbers)")
    if len(polygon) % 2:
        raise ValueError(f"a polygon needs x, y pairs; this one has {len(polygon)} numbers")
    bad = next((v for v in polygon if isinstance(v, float) and not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"a polygon holds a number that is not finite ({bad!r})")
    numbers = [as_float(v) for v in polygon]  # an integer too large for a float: +-inf, far outside
    if any(not -width <= x <= 2 * width for x in numbers[0::2]) or any(
            not -height <= y <= 2 * height for y in numbers[1::2]):
        raise ValueError(f"a polygon point lies far outside the {width}x{height} image")
    return numbers


def _compressed_counts(text: bytes) -> list[int] | None:
    """The run lengths of COCO compressed RLE ``counts`` (pycocotools' ``rleFrString``, in Python), or None when
    the text is not valid (a character outside '0'..'o', a run cut short)."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text) or not 48 <= text[pos] < 112:
                return None
            chunk = text[pos] - 48
            value |= (chunk & 0x1F) << shift
            more, pos, shift = bool(chunk & 0x20), pos + 1, shift + 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def _check_rle_counts(counts: Any, height: int, width: int) -> None:
    """ValueError unless ``counts`` (a list of run lengths, or compressed text / bytes) are runs >= 0 adding up to
    the image's pixels: pycocotools decodes other counts into a mask of uninitialised memory, silently."""
    if isinstance(counts, list):
        if not all(is_whole(c) and c >= 0 for c in counts):
            raise ValueError("its RLE counts must be whole numbers >= 0")
        runs = [int(c) for c in counts]
    elif isinstance(counts, (str, bytes)):
        ascii_only = counts.isascii() if isinstance(counts, str) else True
        runs = _compressed_counts(counts.encode("ascii") if isinstance(counts, str) else counts) if ascii_only else None
        if runs is None or any(c < 0 for c in runs):
            raise ValueError("its RLE counts are not valid compressed COCO RLE")
    else:
        raise ValueError(f"its RLE counts must be a list of whole numbers or compressed COCO RLE text; got "
                         f"{shown(counts)}")
    if sum(runs) != height * width:
        raise ValueError(f"its RLE counts add up to {shown(sum(runs))} pixels but the image has {height * width} "
                         f"({width}x{height})")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool [H, W] from a COCO segmentation (compressed / uncompressed RLE, or polygons [[x, y, ...], ...]).

    Raises:
        ValueError: no segmentation, an RLE of another size or whose counts are not runs covering the image, a
            polygon :func:`_checked_polygon` refuses, or (should the checks miss a case) one pycocotools fails on.
    """
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if size is None:
            raise ValueError("its RLE has no size [height, width]")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_whole(v) for v in size)):
            raise ValueError(f"its RLE size must be [height, width] in whole pixels; got {shown(size)}")
        if [int(v) for v in size] != [height, width]:  # COCO order is [height, width]; messages say W x H
            raise ValueError(f"its RLE size is {shown(size)} (height, width) but the image is {width}x{height} "
                             f"(size [{height}, {width}])")
        _check_rle_counts(counts, height, width)
        what = "RLE"
    elif isinstance(segmentation, list) and segmentation:
        polygons = [_checked_polygon(p, height, width) for p in segmentation]
        what = "polygons"
    else:
        raise ValueError("it has no segmentation (RLE or polygons)")
    try:
        if what == "polygons":
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(rle).astype(bool)
    except Exception:  # pycocotools raises bare Exception, OverflowError, ...: one refusal, no traceback
        raise ValueError(f"pycocotools cannot decode its {what}: export it again as COCO RLE or polygons") from None
