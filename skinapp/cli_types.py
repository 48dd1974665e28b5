"""argparse ``type`` functions for numbers that must lie in a range: a bad value, typed or from an environment
default, is argparse's one-line usage error (exit status 2), never a traceback or a silent fallback."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def checked_number(parse: Callable[[str], N], accept: Callable[[N], bool], not_a_number: str,
                   out_of_range: str) -> Callable[[str], N]:
    """An argparse type: ``parse(text)`` (``int`` or ``float``), kept when ``accept(value)``.

    Args:
        parse: the conversion; its ValueError means "not a number".
        accept: whether a parsed value is in range.
        not_a_number: message when ``parse`` fails (``str.format`` fields: ``text``).
        out_of_range: message when ``accept`` is false (fields: ``value``, ``text``).
    """
    def convert(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number.format(text=text)) from None
        if not accept(value):
            raise argparse.ArgumentTypeError(out_of_range.format(value=value, text=text))
        return value
    return convert
