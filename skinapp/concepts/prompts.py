"""The one rule for concept prompts, and threshold validation, shared by every concept extractor.

Every extractor (grounded and weight-free), the detector's caption builder and the app clean prompts with
:func:`normalise_prompts`, so a prompt is accepted, split or refused the same way whatever the mode.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

#: Characters that separate prompts, in a string or inside one list item. Grounding DINO itself splits its
#: caption at "." and "?", so a prompt can never contain them.
SEPARATORS = ".,;?\n"
#: Most prompts per request (the detector's 256-token caption holds about this many short phrases).
MAX_PROMPTS = 32
#: Longest prompt, in characters after cleaning.
MAX_PROMPT_CHARS = 200
_SPLIT = re.compile(f"[{re.escape(SEPARATORS)}]")
_EDGE = string.punctuation + string.whitespace


def normalise_prompts(prompts: str | Iterable[str]) -> tuple[str, ...]:
    """Clean prompts: the single rule every extractor and the app apply.

    A string or each item of a list is split at any of :data:`SEPARATORS`; each piece is lower-cased,
    whitespace-collapsed and stripped of punctuation at its ends ("Arm!" -> "arm", "blue-grey" stays);
    empty pieces are dropped, repeats keep their first place.

    Returns:
        the phrases, e.g. ``("leg", "arm", "lesion")`` for ``"Leg . arm, lesion."`` or ``["leg", "arm; lesion"]``.

    Raises:
        ValueError: a prompt is not a string, has no letter (e.g. "123"), is longer than
            :data:`MAX_PROMPT_CHARS`; more than :data:`MAX_PROMPTS` phrases; or none at all.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"prompts must be strings; got {type(item).__name__}")
        for piece in _SPLIT.split(item):
            phrase = " ".join(piece.lower().split()).strip(_EDGE)
            if not phrase:
                continue
            if not any(ch.isalpha() for ch in phrase):
                raise ValueError(f"'{phrase}' is not a prompt: use words, e.g. 'lesion' or 'leg'.")
            if len(phrase) > MAX_PROMPT_CHARS:
                raise ValueError(f"A prompt is too long ({len(phrase)} characters; limit {MAX_PROMPT_CHARS}).")
            seen.setdefault(phrase, None)
    if not seen:
        raise ValueError("No prompt phrases were given (e.g. 'lesion', 'leg').")
    if len(seen) > MAX_PROMPTS:
        raise ValueError(f"Too many prompts ({len(seen)}); at most {MAX_PROMPTS}.")
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
