"""Diagnostic phrases for Explain: suggestions by source, and the one rule that cleans what a user types."""

from __future__ import annotations

from collections.abc import Iterable

#: Suggested diagnostic phrases for the Explain screen, by source.
SUGGESTED_PHRASES: dict[str, tuple[str, ...]] = {
    "7-point checklist": ("atypical pigment network", "blue-whitish veil", "atypical vascular pattern",
                          "irregular streaks", "irregular pigmentation", "irregular dots and globules",
                          "regression structures"),
    "PH2": ("asymmetric lesion", "typical pigment network", "dots and globules", "streaks", "regression areas",
            "blue-whitish veil", "dark brown and black colours"),
    "NTD": ("ulcer with undermined edges", "raspberry-like papilloma", "burrows and excoriated papules",
            "hypopigmented anaesthetic patch", "swelling with draining sinuses", "plaque with raised borders"),
}

#: Limits on the Explain input.
MAX_PHRASES = 12
MAX_PHRASE_CHARS = 200


def clean_phrases(items: str | Iterable[str] | None, *, noun: str = "phrase",
                  examples: tuple[str, str] = ("irregular streaks", "blue-whitish veil"), limit: int = MAX_PHRASES,
                  max_chars: int = MAX_PHRASE_CHARS, commas: bool = False) -> list[str]:
    """The one rule for typed text phrases (Explain phrases, concept-score concepts).

    ``items``: one per line (with ``commas`` also split at commas) or a list; each is whitespace-collapsed,
    blanks and repeats dropped (first place kept). ``noun`` and ``examples`` (for an item without letters,
    for no item at all) word the messages.

    Raises:
        ValueError: an item that is not text, none left, more than ``limit``, one longer than ``max_chars``
            characters or without any letter.
    """
    if items is None:
        parts: list = []
    elif isinstance(items, str):
        parts = [part for line in items.splitlines() for part in (line.split(",") if commas else [line])]
    else:
        parts = list(items)
    seen: dict[str, None] = {}
    for item in parts:
        if not isinstance(item, str):
            raise ValueError(f"{noun.capitalize()}s must be text; got {type(item).__name__}.")
        phrase = " ".join(item.split())
        if not phrase:
            continue
        if len(phrase) > max_chars:
            raise ValueError(f"A {noun} is too long ({len(phrase)} characters; limit {max_chars}).")
        if not any(ch.isalpha() for ch in phrase):
            raise ValueError(f"{phrase!r} is not a {noun}: use words, e.g. '{examples[0]}'.")
        seen.setdefault(phrase, None)
    if not seen:
        raise ValueError(f"Type at least one {noun} (one per line), e.g. '{examples[1]}'.")
    if len(seen) > limit:
        raise ValueError(f"Too many {noun}s ({len(seen)}); at most {limit} at once.")
    return list(seen)


def parse_phrases(phrases: str | Iterable[str]) -> list[str]:
    """Clean Explain phrases (:func:`clean_phrases`): one per line or a list; at most :data:`MAX_PHRASES`.

    Raises:
        ValueError: no phrase, too many, too long, or a phrase without any letter.
    """
    return clean_phrases(phrases)
