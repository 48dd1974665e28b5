"""User-facing counts agree with their noun ("1 concept", not "1 concepts")."""

import pytest

from skinapp.wording import counted


@pytest.mark.parametrize(("n", "expected"), [(0, "0 concepts"), (1, "1 concept"), (2, "2 concepts")])
def test_counted_agrees_with_the_number(n, expected):
    assert counted(n, "concept") == expected


def test_counted_takes_an_irregular_plural():
    assert counted(1, "analysis", "analyses") == "1 analysis" and counted(3, "analysis", "analyses") == "3 analyses"
