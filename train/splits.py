"""Random train/validation/test splits BY CASE: every image of a case lands in the same split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Image indices of each part; ``cases`` maps part name -> the case ids in it."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cases: dict[str, frozenset[str]]


def split_by_case(case_ids: Sequence[str], labels: Sequence[int], train_ratio: float, seed: int,
                  val_fraction: float = 0.2) -> Split:
    """Split images by case: ``train_ratio`` of the cases (of each label) for training, the rest for testing.

    Validation cases (``val_fraction`` of the training cases, at least one when there are two or
    more) are carved from the training cases; the best epoch is chosen on them, never on the test.
    Cases are shuffled per label (a case takes the label of its first image) with ``seed``.

    Raises:
        ValueError: the ratio is outside (0, 1) or a part would be empty.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train ratio must be in (0, 1); got {train_ratio}.")
    case_label: dict[str, int] = {}
    images: dict[str, list[int]] = defaultdict(list)
    for i, (case, label) in enumerate(zip(case_ids, labels)):
        case_label.setdefault(case, int(label))
        images[case].append(i)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_label: dict[int, list[str]] = defaultdict(list)
    for case in sorted(case_label):
        by_label[case_label[case]].append(case)
    for label in sorted(by_label):
        cases = list(by_label[label])
        rng.shuffle(cases)
        n_train = int(round(train_ratio * len(cases)))
        n_val = int(round(val_fraction * n_train)) if n_train >= 2 else 0
        n_val = max(n_val, 1) if n_train >= 2 and val_fraction > 0 else n_val
        parts["val"] += cases[:n_val]
        parts["train"] += cases[n_val:n_train]
        parts["test"] += cases[n_train:]
    for name, cases in parts.items():
        if not cases:
            raise ValueError(f"The {name} split is empty ({len(case_label)} cases, train ratio {train_ratio}, "
                             f"validation fraction {val_fraction}); use more data or another ratio.")

    def indices(cases: list[str]) -> np.ndarray:
        return np.array(sorted(i for c in cases for i in images[c]), dtype=np.int64)

    return Split(indices(parts["train"]), indices(parts["val"]), indices(parts["test"]),
                 {k: frozenset(v) for k, v in parts.items()})
