"""What ``train.clip`` writes besides the checkpoint: ``report.md`` (metrics before / after, each named, values
rounded to 4 decimals), ``metrics.json`` (every metric unrounded, per-epoch history, the data sets used),
``split.json`` (train / test case ids) and ``curves.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from train.data.text import LesionRecord
from train.metrics import plot_curve_panels

if TYPE_CHECKING:
    from train.clip import ClipFinetuneConfig

#: Display names of the data sets, in the order they are read (``LesionRecord.source`` -> name).
DATASET_NAMES = {"derm7pt": "Derm7pt", "ph2": "PH2"}


def datasets_used(records: Sequence[LesionRecord]) -> dict[str, int]:
    """Images per data set among ``records``, by display name, in :data:`DATASET_NAMES` order."""
    counts: dict[str, int] = {}
    for source in [*DATASET_NAMES, *sorted({r.source for r in records} - set(DATASET_NAMES))]:
        n = sum(r.source == source for r in records)
        if n:
            counts[DATASET_NAMES.get(source, source)] = n
    return counts


def describe_datasets(datasets: dict[str, int]) -> str:
    """``{"Derm7pt": 10, "PH2": 5}`` -> ``"Derm7pt (10 images) + PH2 (5 images)"``."""
    return " + ".join(f"{name} ({n} images)" for name, n in datasets.items()) or "no data set named"


def json_safe(value: Any) -> Any:
    """NaN / inf (e.g. the train loss before training) -> None, so the JSON files stay standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


#: Rows of the report: (name shown, metric key). In-batch rows first: they are the paper's quantities.
REPORT_ROWS = (
    ("in-batch image->text matching accuracy (the paper's 'accuracy')", "in_batch_accuracy"),
    ("in-batch text->image matching accuracy", "in_batch_t2i_accuracy"),
    ("in-batch macro precision", "in_batch_precision"), ("in-batch macro recall = sensitivity", "in_batch_recall"),
    ("in-batch F1 (2PR/(P+R))", "in_batch_f1_paper"), ("in-batch macro specificity", "in_batch_specificity"),
    ("contrastive loss (same batches)", "loss"),
    ("CLIP score (mean cosine of matched pairs)", "clip_score"),
    ("CLIPScore, torchmetrics (100 max(cos, 0))", "clipscore_torchmetrics"),
    ("zero-shot accuracy", "zero_shot_accuracy"), ("zero-shot macro precision", "zero_shot_precision"),
    ("zero-shot macro recall = sensitivity", "zero_shot_recall"), ("zero-shot F1 (2PR/(P+R))", "zero_shot_f1_paper"),
    ("zero-shot F1 (mean per class)", "zero_shot_f1_macro_per_class"),
    ("zero-shot macro specificity", "zero_shot_specificity"),
)


def markdown_report(before: dict[str, Any], after: dict[str, Any], class_names: Sequence[str],
                    config: ClipFinetuneConfig, epoch_seconds: Sequence[float], n_train: int, n_test: int,
                    datasets: dict[str, int] | None = None) -> str:
    """A Markdown table of the metrics before and after fine-tuning, each named; the settings that define them.

    ``datasets``: images per data set used (:func:`datasets_used`), named in the report's first line.
    """
    lines = ["# CLIP fine-tuning report", "",
             f"Data: {describe_datasets(datasets or {})}.", "",
             f"Protocol `{config.protocol}`; profile `{config.profile}`, base `{config.checkpoint or 'random init'}`, "
             f"{config.epochs} epochs, batch {config.batch_size}, Adam lr {config.lr}, split seed {config.seed}; "
             f"train {n_train} / test {n_test} images; {len(class_names)} classes (`{config.labels}`); text "
             f"`{config.text}`; image view `{config.view}`.", "",
             f"In-batch metrics: test pairs in batches of {after.get('in_batch_size', config.match_batch_size)} "
             f"(seeded random order, seed {config.seed}); zero-shot prompt template: `{config.prompt}`.", "",
             "| metric (test split) | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {before[key]:.4f} | {after[key]:.4f} |" for name, key in REPORT_ROWS
              if key in before and key in after]
    if epoch_seconds:
        lines += ["", f"Mean time per epoch: {np.mean(epoch_seconds):.2f} s."]
    lines += ["", "Classes: " + ", ".join(class_names), ""]
    return "\n".join(lines)


def write_reports(out: Path, config: ClipFinetuneConfig, summary: dict[str, Any], split: dict[str, Any],
                  class_names: Sequence[str], n_train: int, n_test: int) -> None:
    """``split.json``, ``metrics.json`` (``summary``, NaN -> null), ``report.md`` and ``curves.png`` in ``out``.

    ``summary`` holds at least before, after, history, epoch_seconds and datasets.
    """
    (out / "split.json").write_text(json.dumps(split, indent=1))
    (out / "metrics.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))
    (out / "report.md").write_text(markdown_report(summary["before"], summary["after"], class_names, config,
                                                   summary["epoch_seconds"], n_train, n_test, summary["datasets"]))
    plot_curve_panels(summary["history"], out / "curves.png", title=f"CLIP fine-tuning ({config.profile})")
