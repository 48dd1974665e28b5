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


def parse_phrases(phrases: str | Iterable[str]) -> list[str]:
    """Clean Explain phrases: one per line (or a list), stripped, blanks and repeats dropped.

    Raises:
        ValueError: no phrase, too many, too long, or a phrase without any letter.
    """
    items = phrases.splitlines() if isinstance(phrases, str) else list(phrases or [])
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"Phrases must be text; got {type(item).__name__}.")
        phrase = " ".join(item.split())
        if not phrase:
            continue
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ValueError(f"A phrase is too long ({len(phrase)} characters; limit {MAX_PHRASE_CHARS}).")
        if not any(ch.isalpha() for ch in phrase):
            raise ValueError(f"'{phrase}' is not a phrase: use words, e.g. 'irregular streaks'.")
        seen.setdefault(phrase, None)
    if not seen:
        raise ValueError("Type at least one phrase (one per line), e.g. 'blue-whitish veil'.")
    if len(seen) > MAX_PHRASES:
        raise ValueError(f"Too many phrases ({len(seen)}); at most {MAX_PHRASES} at once.")
    return list(seen)
