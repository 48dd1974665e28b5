"""Classification metrics, the paper-style results table (mean +- std over seeds), and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Columns of the results table, in order. ``f1_paper`` is the F1 of the fusion paper (Hu et al., WACV 2025,
#: Tables 2, 4, 5): the harmonic mean of macro precision and macro recall; ``f1_macro_per_class`` is the mean of
#: the per-class F1 scores (scikit-learn's ``average="macro"``). Both are reported, each under its own name.
METRICS = ("precision", "recall", "f1_paper", "f1_macro_per_class", "accuracy")
#: Short column headers of the Markdown table.
METRIC_HEADERS = {"precision": "precision", "recall": "recall", "f1_paper": "F1 (paper: 2PR/(P+R))",
                  "f1_macro_per_class": "F1 (mean per class)", "accuracy": "accuracy"}


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts [C, C]: rows are true classes, columns predicted classes."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Macro precision, recall, both F1s and accuracy of a confusion matrix [C, C] (rows true, columns predicted).

    Classes absent from both truth and prediction are left out of the macro averages. Keys:
    ``precision``, ``recall`` (macro), ``f1_paper`` = 2PR / (P + R) of those macro values (0 when P + R = 0),
    ``f1_macro_per_class`` = mean over classes of 2 p_c r_c / (p_c + r_c), ``f1`` (the same value as
    ``f1_macro_per_class``, kept for older callers) and ``accuracy``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    total = cm.sum()
    macro_p = float(precision[present].mean()) if present.any() else 0.0
    macro_r = float(recall[present].mean()) if present.any() else 0.0
    per_class = float(f1[present].mean()) if present.any() else 0.0
    return {"precision": macro_p, "recall": macro_r, "f1_paper": f1_paper(macro_p, macro_r),
            "f1_macro_per_class": per_class, "f1": per_class,
            "accuracy": float(tp.sum() / total) if total else 0.0}


def f1_paper(precision: float, recall: float) -> float:
    """The fusion paper's F1: the harmonic mean 2PR / (P + R) of macro precision P and macro recall R (0 if both 0)."""
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def f1_macro_per_class(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Mean of the per-class F1 scores (scikit-learn's macro F1), over the classes present in truth or prediction."""
    return classification_metrics(y_true, y_pred, n_classes)["f1_macro_per_class"]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict[str, float]:
    """:func:`metrics_from_confusion` of the labels: macro P, R, ``f1_paper``, ``f1_macro_per_class``, accuracy."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def _metric_columns(rows: list[dict]) -> list[str]:
    """The METRICS present in every row (older rows may lack the newer F1 columns)."""
    return [m for m in METRICS if rows and all(m in r for r in rows)]


#: Row keys copied (first value of the group) into the summary when present: how the rows were produced.
LABEL_KEYS = ("training_mode", "init", "selection")


def summarise(rows: list[dict]) -> list[dict]:
    """Group per-seed rows by (train_ratio, variant) -> one row with mean and std (population) of each metric.

    Labels of how the rows were made (``training_mode``, ``init``, ``selection``) are carried over; rows of
    one group that disagree on a label are joined with "+".
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["train_ratio"], r["variant"]), []).append(r)
    out = []
    for (ratio, variant), rs in sorted(groups.items(), key=lambda kv: kv[0][0]):  # variants in run order
        row = {"train_ratio": ratio, "variant": variant, "seeds": len(rs)}
        for key in LABEL_KEYS:
            if any(key in r for r in rs):
                row[key] = "+".join(dict.fromkeys(str(r.get(key, "")) for r in rs))
        for m in _metric_columns(rs):
            vals = np.array([r[m] for r in rs], dtype=np.float64)
            row[f"{m}_mean"], row[f"{m}_std"] = float(vals.mean()), float(vals.std())
        out.append(row)
    return out


def write_table(summary: list[dict], csv_path: Path, md_path: Path) -> None:
    """Write the summary as CSV and as a Markdown table shaped like the paper's Table 2.

    Columns: train/total, variant, the labels present (training mode, initialisation, epoch selection), seeds,
    then mean ± std of each metric, both F1 definitions side by side, each named.
    """
    import pandas as pd

    pd.DataFrame(summary).to_csv(csv_path, index=False)
    metrics = [m for m in METRICS if summary and all(f"{m}_mean" in r for r in summary)]
    labels = [k for k in LABEL_KEYS if summary and any(k in r for r in summary)]
    header = ["train/total", "variant", *(k.replace("_", " ") for k in labels), "seeds",
              *(METRIC_HEADERS[m] for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary:
        cells = [str(r["train_ratio"]), str(r["variant"]), *(str(r.get(k, "")) for k in labels), str(r["seeds"])]
        cells += [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")


# Plotting (figure cosmetics, not numbers) is left out of mutation testing: see docs/testing.md.
# pragma: no mutate start
def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Learning curves: one line per history key (e.g. train_loss, val_loss, val_f1) against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# pragma: no mutate end


def macro_specificity(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Macro specificity TN / (TN + FP), one-vs-rest, over the classes :func:`classification_metrics` averages."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    support, predicted, total = cm.sum(axis=1), cm.sum(axis=0), cm.sum()
    present = (support + predicted) > 0
    negatives = total - support
    true_negatives = negatives - (predicted - np.diag(cm))
    specificity = np.divide(true_negatives, negatives, out=np.zeros_like(negatives), where=negatives > 0)
    return float(specificity[present].mean()) if present.any() else 0.0


# pragma: no mutate start
def plot_curve_panels(history: dict[str, list[float]], path: Path, title: str = "", first_epoch: int = 0) -> None:
    """Learning curves, one panel per name prefix: "loss/train" and "loss/test" share the "loss" panel.

    Value ``i`` of each series is plotted at epoch ``first_epoch + i`` (0 = before training).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[str]] = {}
    for name in history:
        panels.setdefault(name.split("/")[0], []).append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, names) in zip(axes[0], panels.items()):
        for name in names:
            values = history[name]
            ax.plot(range(first_epoch, first_epoch + len(values)), values, marker="o", label=name)
        ax.set_xlabel("epoch" + (" (0 = before training)" if first_epoch == 0 else ""))
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
# pragma: no mutate end
