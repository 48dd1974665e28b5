"""Labelled image lists: the record types shared by every fusion-data loader, and the manifest CSV loader.

Manifest layout (any private collection, e.g. MIND-the-SKIN / NTD): a CSV with the header
``image_path,case_id,label``; ``image_path`` is relative to the CSV's folder; a blank ``case_id``
makes the image its own case.

Bad rows never stop loading: each is logged with the file and row number, counted in a
:class:`SkipLog`, and the rest of the data is used.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: its file, the case (patient visit) it belongs to, the case's label, and where
    the loader found it (e.g. "data.csv row 5"), for messages about it later."""

    path: Path
    case_id: str
    label: str
    origin: str = ""


@dataclass
class SkipLog:
    """Counts and messages for everything a loader (or the feature cache) left out."""

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        self.messages.append(message)
        log.warning("skipped (%s): %s", reason, message)

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))


@dataclass
class LabelledImages:
    """A data set: image records, the class list (output order of the model), and what was skipped."""

    records: list[ImageRecord]
    class_names: list[str]
    skipped: SkipLog
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.class_names)}
        return [index[r.label] for r in self.records]

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]

    def subset(self, indices: Sequence[int]) -> LabelledImages:
        return LabelledImages([self.records[i] for i in indices], self.class_names, self.skipped, self.source)


def read_csv_rows(path: Path, required: Sequence[str], skips: SkipLog) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each well-formed row of a CSV; malformed rows are skipped and logged.

    Raises:
        ValueError: the file is missing, empty, or lacks a required column.
    """
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}; check the path given (--data).")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: the file is empty (no header row).")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}. Name the columns "
                             f"{', '.join(required)} in the header row (rename them, or write a CSV that has them).")
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                skips.skip("unreadable rows", f"{path.name} row {line}: expected {len(header)} fields, "
                                              f"got {len(values)}")
                continue
            yield line, dict(zip(header, values))


def check_classes(records: list[ImageRecord], class_names: Sequence[str] | None,
                  skips: SkipLog) -> tuple[list[ImageRecord], list[str]]:
    """Drop records whose label is outside ``class_names`` (sorted label set when None)."""
    if class_names is None:
        return records, sorted({r.label for r in records})
    allowed = set(class_names)
    kept = []
    for r in records:
        if r.label in allowed:
            kept.append(r)
        else:
            skips.skip("labels outside the class list",
                       f"{r.origin}: label {r.label!r} is not one of {list(class_names)}")
    return kept, list(class_names)


def load_manifest(csv_path: str | Path, class_names: Sequence[str] | None = None) -> LabelledImages:
    """Read a manifest CSV ``image_path,case_id,label`` (paths relative to the CSV)."""
    csv_path = Path(csv_path)
    skips = SkipLog()
    records: list[ImageRecord] = []
    for line, row in read_csv_rows(csv_path, ("image_path", "label"), skips):
        rel, label = row["image_path"].strip(), row["label"].strip()
        if not rel or not label:
            skips.skip("unreadable rows", f"{csv_path.name} row {line}: blank image_path or label")
            continue
        path = (csv_path.parent / rel).resolve()
        if not path.is_file():
            skips.skip("missing images", f"{csv_path.name} row {line}: image not found: {rel}")
            continue
        case = row.get("case_id", "").strip() or rel
        records.append(ImageRecord(path, case, label, f"{csv_path.name} row {line}"))
    records, names = check_classes(records, class_names, skips)
    if not records:
        raise ValueError(f"{csv_path}: no usable rows ({skips.summary()}).")
    return LabelledImages(records, names, skips, f"manifest:{csv_path}")
