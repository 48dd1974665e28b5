"""Small helpers for the words of user-facing messages."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in agreement: ``counted(1, "concept")`` -> "1 concept", ``counted(3, "concept")`` ->
    "3 concepts" (``plural`` for irregular nouns, default ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
