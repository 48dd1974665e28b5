"""Prompt and threshold validation shared by every concept extractor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def normalise_prompts(prompts: str | Iterable[str]) -> tuple[str, ...]:
    """Clean prompt phrases: split a "leg . arm, lesion" string, strip, lower-case, drop blanks and repeats.

    Raises:
        ValueError: a prompt is not a string, or no phrase is left.
    """
    items = prompts.replace(",", ".").split(".") if isinstance(prompts, str) else list(prompts)
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"prompts must be strings; got {type(item).__name__}")
        phrase = " ".join(item.strip().strip(".").lower().split())
        if phrase:
            seen.setdefault(phrase, None)
    if not seen:
        raise ValueError("No prompt phrases were given (e.g. 'lesion', 'leg').")
    return tuple(seen)


def check_threshold(name: str, value: Any) -> float | None:
    """``value`` as a float in [0, 1] (None passes through); anything else (text, NaN, out of range) is a ValueError."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number between 0 and 1.") from exc
    if not 0.0 <= v <= 1.0:  # also false for NaN
        raise ValueError(f"{name} must be between 0 and 1; got {value}.")
    return v
