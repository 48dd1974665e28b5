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


#: A whole number >= 1 (epochs, batch sizes, counts).
positive_int = checked_number(int, lambda n: n >= 1, "not a whole number: {text!r}", "must be at least 1; got {value}")
#: A whole number >= 0 (e.g. DataLoader worker processes).
non_negative_int = checked_number(int, lambda n: n >= 0, "not a whole number: {text!r}",
                                  "must be 0 or more; got {value}")
#: A finite number > 0 (e.g. a learning rate).
positive_float = checked_number(float, lambda x: 0 < x < float("inf"), "not a number: {text!r}",
                                "must be a number above 0; got {text}")
#: A fraction strictly between 0 and 1.
open_fraction = checked_number(float, lambda x: 0 < x < 1, "not a number: {text!r}",
                               "must lie strictly between 0 and 1; got {text}")
#: A fraction in [0, 1) (0: none).
fraction_or_zero = checked_number(float, lambda x: 0 <= x < 1, "not a number: {text!r}",
                                  "must be at least 0 and below 1; got {text}")


def comma_list(item: Callable[[str], N], what: str) -> Callable[[str], list[N]]:
    """An argparse type: a comma list (``"0.1,0.5"``), each item converted and checked by ``item``.

    ``what`` names one item in the messages ("train ratio", "seed").
    """
    def convert(text: str) -> list[N]:
        parts = [part.strip() for part in text.split(",")]
        if not text.strip() or any(not part for part in parts):
            raise argparse.ArgumentTypeError(f"a comma list of {what}s with no blank item; got {text!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{what}: {exc}") from None
        return values
    return convert


#: A whole number >= 0 (a random seed): the same check as :data:`non_negative_int`.
seed_int = non_negative_int
