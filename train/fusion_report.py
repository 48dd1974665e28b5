"""Results of ``train.fusion``: each run's plots and log line, and the tables over all runs.

``OUT/metrics_per_seed.csv`` (one row per run), ``OUT/metrics.csv`` and ``OUT/metrics.md`` (mean ± population
std over seeds per (ratio, variant); :func:`train.metrics.write_table`), ``OUT/<run>/confusion.png`` and
``curves.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from train.data.manifest import SkipLog
from train.metrics import plot_confusion, plot_curves, summarise, write_table

log = logging.getLogger("train.fusion")


def write_run_report(result: Any, class_names: Sequence[str], run_dir: Path, desc: str, mode: str, init: str,
                     selection: str, test_metrics: dict[str, float]) -> None:
    """One run's confusion matrix and learning curves (PNG) and its log line. ``result``: a RunResult."""
    plot_confusion(result.confusion, list(class_names), run_dir / "confusion.png", desc)
    plot_curves(result.history, run_dir / "curves.png", desc)
    log.info("%s [%s, %s, %s]: %s (kept epoch %d, %.3f s/epoch)", desc, mode, init, selection,
             ", ".join(f"{k} {v:.3f}" for k, v in test_metrics.items()), result.best_epoch, result.epoch_seconds)


def write_results(rows: list[dict], out: Path, skips: SkipLog) -> None:
    """The per-run CSV and the summary tables (CSV + Markdown) over all runs; logs the table and the skips."""
    pd.DataFrame(rows).to_csv(out / "metrics_per_seed.csv", index=False)
    write_table(summarise(rows), out / "metrics.csv", out / "metrics.md")
    log.info("results:\n%s", (out / "metrics.md").read_text())
    log.info("skipped: %s", skips.summary())
