"""What the COCO import accepts as a number, an id or a name in a file, and how it quotes a value in a refusal.

JSON numbers only: text such as "497" is not a number, nor is ``true``. Messages quote the file's value with
``repr``, cut to :data:`MAX_SHOWN` characters (a value may be a list of thousands of items).
"""

from __future__ import annotations

import math
from typing import Any

#: Longest quotation of a file's value in a message (characters, the cut marked by "…").
MAX_SHOWN = 60


def shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


def is_number(value: Any) -> bool:
    """True for a JSON number (int or float), False for text, a bool, null, a list or an object."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_float(value: int | float) -> float:
    """A JSON number as a float; an integer too large for a float is +-inf (float() would raise)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def is_whole(value: Any) -> bool:
    """True for a JSON number that is a whole number (40 or 40.0; not 40.5, inf, nan or "40")."""
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer())


def is_id(value: Any) -> bool:
    """True for what a COCO id may be here: a whole number (int) or text."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def whole_size(image: dict[str, Any], name: str) -> int:
    """``image[name]`` ("width" or "height") in pixels, or ValueError unless it is a whole JSON number."""
    value = image.get(name)
    if not is_whole(value):
        got = "it has none" if name not in image else f"got {shown(value)}"
        raise ValueError(f"COCO image {image.get('id')}: its {name} must be a whole number of pixels, written as a "
                         f"JSON number; {got}.")
    return int(value)


def score_of(ann: dict[str, Any]) -> float:
    """The annotation's ``score`` (a detector's confidence, as our export writes it) in [0, 1]; 1.0 when it has
    none (absent or null, e.g. CVAT's); ValueError for anything else."""
    value = ann.get("score")
    if value is None:
        return 1.0
    if not is_number(value) or not 0 <= as_float(value) <= 1:
        raise ValueError(f"its score must be a number from 0 to 1; got {shown(value)}")
    return float(value)


def bbox_of(ann: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The annotation's ``bbox`` (x, y, width, height in pixels), None when it has none (absent, null or []);
    ValueError unless it is 4 finite JSON numbers."""
    value = ann.get("bbox")
    if value is None or value == []:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(is_number(v) and math.isfinite(as_float(v))
                                                                 for v in value)):
        raise ValueError(f"its bbox must be 4 finite numbers [x, y, width, height] in pixels; got {shown(value)}")
    x, y, w, h = (float(v) for v in value)
    return x, y, w, h


def text_of(image: dict[str, Any], name: str, what: str) -> str:
    """``image[name]`` as text ("" when absent or null); ValueError naming it as ``what`` when it is not text."""
    value = image.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"COCO image {image.get('id')}: its {name} must be {what}; got {shown(value)}.")
    return value
