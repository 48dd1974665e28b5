"""Read the Derm7pt release (``release_v0``) into :class:`~train.data.text.LesionRecord` s.

Layout: ``release_v0/meta/meta.csv``, ``release_v0/meta/{train,valid,test}_indexes.csv`` (one column
``indexes``: 0-based rows of meta.csv), ``release_v0/images/<dir>/<file>``; ``clinic`` and ``derm``
hold image paths relative to ``images/`` whose case may differ from the files on disk (resolved
case-insensitively). Bad rows and missing images are logged (file and row), skipped and counted.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from train.data.text import (
    DERM7PT_DIAGNOSES,
    LesionRecord,
    ReadResult,
    build_text,
    check_value,
    map_diagnosis,
    resolve_path,
)

log = logging.getLogger(__name__)

META_COLUMNS: tuple[str, ...] = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm", "case_id",
    "notes",
)
#: Allowed values of the seven-point criteria columns (criterion keys match train.data.text).
CRITERIA_VALUES: dict[str, tuple[str, ...]] = {
    "pigment_network": ("absent", "typical", "atypical"),
    "streaks": ("absent", "regular", "irregular"),
    "pigmentation": ("absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "blue_whitish_veil": ("absent", "present"),
    "vascular_structures": ("absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"),
}
SPLITS: tuple[str, ...] = ("train", "valid", "test")
IMAGE_COLUMNS: tuple[str, ...] = ("derm", "clinic")


def find_release(root: str | Path) -> Path:
    """The ``release_v0`` folder: ``root`` itself or ``root/release_v0``."""
    root = Path(root)
    for candidate in (root, root / "release_v0"):
        if (candidate / "meta" / "meta.csv").is_file():
            return candidate
    raise FileNotFoundError(f"Derm7pt: no meta/meta.csv under {root} or {root / 'release_v0'}")


def read_official_splits(release: Path) -> dict[int, str]:
    """meta.csv row index -> "train" / "valid" / "test" from the index files that exist."""
    splits: dict[int, str] = {}
    for split in SPLITS:
        path = release / "meta" / f"{split}_indexes.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    splits[int(row["indexes"])] = split
                except (KeyError, TypeError, ValueError):
                    log.warning("%s line %d: bad index %r; ignored", path, line, row.get("indexes"))
    return splits


def read_derm7pt(root: str | Path, labels: str = "merged", images: tuple[str, ...] = ("derm",)) -> ReadResult:
    """Read Derm7pt's meta.csv into records, one per (case, image column in ``images``).

    Args:
        root: the folder holding ``release_v0`` (or ``release_v0`` itself).
        labels: a label scheme of :data:`train.data.text.LABEL_SCHEMES`.
        images: which image columns to use: "derm" (dermoscopic, default) and/or "clinic".
    """
    for column in images:
        if column not in IMAGE_COLUMNS:
            raise ValueError(f"Derm7pt image column must be one of {IMAGE_COLUMNS}, got {column!r}")
    release = find_release(root)
    meta_path = release / "meta" / "meta.csv"
    official = read_official_splits(release)
    result = ReadResult(records=[])
    with open(meta_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("diagnosis", *CRITERIA_VALUES, *images) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{meta_path}: missing columns {missing}")
        for index, row in enumerate(reader):
            where = f"{meta_path} row {index} (line {index + 2})"
            try:
                diagnosis = check_value("diagnosis", (row["diagnosis"] or "").strip(), DERM7PT_DIAGNOSES)
                label = map_diagnosis(diagnosis, labels)
                criteria = {k: check_value(k, (row[k] or "").strip(), v) for k, v in CRITERIA_VALUES.items()}
            except ValueError as exc:
                log.warning("%s: %s; row skipped", where, exc)
                result.skipped["bad row"] += 1
                continue
            case = (row.get("case_id") or "").strip() or (row.get("case_num") or "").strip() or str(index)
            for column in images:
                relative = (row[column] or "").strip()
                path = resolve_path(release / "images", relative) if relative else None
                if path is None:
                    log.warning("%s: %s image %r not found under %s; skipped", where, column, relative,
                                release / "images")
                    result.skipped[f"missing {column} image"] += 1
                    continue
                result.records.append(LesionRecord(
                    image_path=path, case_id=f"derm7pt:{case}", source="derm7pt", diagnosis=diagnosis, label=label,
                    criteria=criteria, text=build_text(label, criteria),
                    extra={"row": index, "official_split": official.get(index), "image_type": column},
                ))
    result.log_summary(f"Derm7pt ({meta_path})")
    return result
