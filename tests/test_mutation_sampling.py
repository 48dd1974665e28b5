"""Mutation sampling in .ci/mutation.py: the seeded sample of mutant names and the Wilson interval of its score.

No mutmut run here: these are the small pure functions that decide which mutants run and what is reported.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("ci_mutation", Path(__file__).parents[1] / ".ci" / "mutation.py")
mutation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutation)

NAMES = [f"skinapp.ui.handlers.x_f__mutmut_{i}" for i in range(1, 41)]


@pytest.mark.parametrize(("killed", "n", "low", "high"), [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombes_published_values(killed, n, low, high):
    got = mutation.wilson_interval(killed, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_an_all_killed_sample_is_not_a_point():
    low, high = mutation.wilson_interval(20, 20)
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(1 - 0.1611, abs=5e-5)  # mirror of 0/20


@pytest.mark.parametrize(("killed", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_wilson_interval_refuses_impossible_counts(killed, n):
    with pytest.raises(ValueError, match=r"need 0 <= killed <= n and n >= 1"):
        mutation.wilson_interval(killed, n)


def test_sample_is_reproducible_from_its_seed_and_independent_of_listing_order():
    first = mutation.sample_names(NAMES, 10, seed=1)
    assert first == mutation.sample_names(list(reversed(NAMES)), 10, seed=1)
    assert first != mutation.sample_names(NAMES, 10, seed=2)
    assert len(first) == len(set(first)) == 10
    assert set(first) <= set(NAMES)


def test_sample_larger_than_the_group_runs_every_mutant_once():
    assert mutation.sample_names(NAMES + NAMES[:3], 100, seed=0) == sorted(NAMES)


def test_sample_size_below_one_is_refused():
    with pytest.raises(ValueError, match="sample size must be at least 1, got 0"):
        mutation.sample_names(NAMES, 0, seed=0)


def test_sample_is_uniform_over_mutants():
    """Over 2000 seeds each of 40 names is drawn ~ 2000 * 10/40 = 500 times (binomial sd ~19): a draw that
    favours the start or end of the list, or never picks some names, is far outside 500 +- 100."""
    counts = Counter(name for seed in range(2000) for name in mutation.sample_names(NAMES, 10, seed))
    assert set(counts) == set(NAMES)
    assert all(400 < c < 600 for c in counts.values()), counts


def test_statuses_are_read_from_mutmut_results_listing():
    listing = ("    skinapp.ui.handlers.x_f__mutmut_1: killed\n"
               "    skinapp.ui.handlers.xǁHandlersǁexplain__mutmut_2: not checked\n"
               "    skinapp.ui.handlers.x_f__mutmut_3: no tests\n")
    assert mutation._statuses(listing) == {
        "skinapp.ui.handlers.x_f__mutmut_1": "killed",
        "skinapp.ui.handlers.xǁHandlersǁexplain__mutmut_2": "not checked",
        "skinapp.ui.handlers.x_f__mutmut_3": "no tests",
    }


def test_summary_of_a_sample_counts_timeouts_as_killed_and_gives_the_interval():
    statuses = {"a": "killed", "b": "timeout", "c": "survived", "d": "no tests", "e": "killed"}
    summary = mutation.summarise(statuses, sampled=True)
    assert {k: summary[k] for k in ("mutants", "killed", "score", "not_killed")} == {
        "mutants": 5, "killed": 3, "score": 0.6, "not_killed": ["c", "d"]}
    assert summary["counts"] == {"killed": 2, "timeout": 1, "survived": 1, "no tests": 1}
    assert summary["interval_95"] == [round(v, 6) for v in mutation.wilson_interval(3, 5)]
    assert "interval_95" not in mutation.summarise(statuses)  # a full run has no sampling error


def test_again_without_a_finished_run_is_refused_with_what_to_do(tmp_path, caplog):
    (tmp_path / "metrics").mkdir()  # a scratch copy whose run never finished: no summary.json
    assert mutation.main(["metrics", "--again", "--workdir", str(tmp_path)]) == 2
    assert "--again needs a finished run of metrics in" in caplog.text and "run it without --again" in caplog.text
