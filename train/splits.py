"""Random train/validation/test splits BY CASE: every image of a case lands in the same split.

The train part is exactly the stated train/total ratio of the cases; validation (optional) comes from the
held-out side, never from the training cases. See docs/protocols.md.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Image indices of each part; ``cases`` maps part name -> the case ids in it."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cases: dict[str, frozenset[str]]


def split_by_case(case_ids: Sequence[str], labels: Sequence[int], train_ratio: float, seed: int,
                  val_fraction: float = 0.2) -> Split:
    """Split images by case: exactly ``train_ratio`` of the cases (of each label, rounded) train the model.

    The other cases are held out. ``val_fraction`` of the HELD-OUT cases of each label (rounded, at least one
    case overall when > 0) form the validation part, used only to choose the epoch; the rest are the test
    part, the only one the reported metrics come from. So ``train_ratio`` r means what it says: r = 0.1
    trains on 10 % of the cases, never on 8 %. ``val_fraction`` 0 gives the papers' plain two-way split:
    train and test, no validation (``train.fusion --protocol paper``, ``train.clip``).

    Cases are shuffled per label (a case takes the label of its first image) with ``seed``.

    Raises:
        ValueError: the ratio is outside (0, 1), the validation fraction outside [0, 1), or a part would be
            empty.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train ratio must be in (0, 1); got {train_ratio}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1); got {val_fraction}.")
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
        held_out = cases[n_train:]
        n_val = int(round(val_fraction * len(held_out))) if len(held_out) >= 2 else 0
        parts["train"] += cases[:n_train]
        parts["val"] += held_out[:n_val]
        parts["test"] += held_out[n_val:]
    if val_fraction > 0 and not parts["val"] and len(parts["test"]) >= 2:
        parts["val"].append(parts["test"].pop(int(rng.integers(len(parts["test"])))))
    needed = ("train", "test", "val") if val_fraction > 0 else ("train", "test")
    for name in needed:
        if not parts[name]:
            raise ValueError(f"The {name} split is empty ({len(case_label)} cases, train ratio {train_ratio}, "
                             f"validation fraction {val_fraction}); use more data or another ratio.")

    def indices(cases: list[str]) -> np.ndarray:
        return np.array(sorted(i for c in cases for i in images[c]), dtype=np.int64)

    return Split(indices(parts["train"]), indices(parts["val"]), indices(parts["test"]),
                 {k: frozenset(v) for k, v in parts.items()})


def check_class_images(labels: Sequence[int], class_names: Sequence[str], source: str = "the data") -> None:
    """Refuse a class without images (e.g. a --classes name the data lacks): its metrics would be NaN.

    Raises:
        ValueError: naming each empty class and the images per class found.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if empty:
        found = ", ".join(f"{name} {n}" for name, n in zip(class_names, counts) if n)
        raise ValueError(f"class(es) {', '.join(map(repr, empty))} have no images in {source} (images per class: "
                         f"{found}); check the spelling in --classes, leave them out, or add their images.")


def check_split_classes(split: Split, case_ids: Sequence[str], labels: Sequence[int], class_names: Sequence[str],
                        train_ratio: float, seed: int) -> None:
    """Refuse a split in which a class has no image in the train or in the test part (NaN / garbage metrics).

    Raises:
        ValueError: naming the class, its cases and images in all and in each part, and what to do.
    """
    labels = np.asarray(labels, dtype=np.int64)
    cases = np.asarray(case_ids, dtype=object)
    parts = {"all": np.ones(len(labels), bool), "train": np.zeros(len(labels), bool),
             "test": np.zeros(len(labels), bool)}
    parts["train"][split.train] = True
    parts["test"][split.test] = True
    for index, name in enumerate(class_names):
        mine = labels == index
        missing = [part for part in ("train", "test") if not (mine & parts[part]).any()]
        if missing:
            counts = ", ".join(f"{len(set(cases[mine & where]))} cases / {int((mine & where).sum())} images "
                               f"{part}" for part, where in parts.items())
            raise ValueError(f"class {name!r} has no case in the {missing[0]} split (train ratio {train_ratio}, "
                             f"seed {seed}; {counts}); add cases of it, choose another train ratio, or leave "
                             "the class out.")


def count_mixed_label_cases(case_ids: Sequence[str], labels: Sequence[int]) -> int:
    """How many cases hold images with different labels (legitimate: one patient, two lesions); logged as a
    WARNING, since such a case is split by the label of its first image."""
    seen: dict[str, set[int]] = defaultdict(set)
    for case, label in zip(case_ids, labels):
        seen[case].add(int(label))
    mixed = sum(len(v) > 1 for v in seen.values())
    if mixed:
        log.warning("%d of %d cases have images with different labels (e.g. one patient, two lesions); each image "
                    "keeps its own label, and the case goes to the split of its first image's label.",
                    mixed, len(seen))
    return mixed
