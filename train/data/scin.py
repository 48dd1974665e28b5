"""SCIN loader (official layout) with the fusion paper's label rule.

Layout: ``root/scin_cases.csv``, ``root/scin_labels.csv``, ``root/images/<id>.png``; the cases
file's ``image_N_path`` columns hold bucket paths ``dataset/images/<id>.png``, resolved here by file
name under ``root/images``. ``case_id`` is kept as a string (a signed 64-bit integer).

Label rule (paper): parse ``weighted_skin_condition_label`` (a Python-literal dict, via
``ast.literal_eval``); take the condition with the highest weight; drop the case when that weight
is tied; keep the cases of the ``n_conditions`` (5) most frequent top conditions.
"""

from __future__ import annotations

import ast
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from train.data.manifest import ImageRecord, LabelledImages, SkipLog, read_csv_rows

log = logging.getLogger(__name__)

CASES_CSV = "scin_cases.csv"
LABELS_CSV = "scin_labels.csv"
IMAGE_COLUMNS = ("image_1_path", "image_2_path", "image_3_path")
LABEL_COLUMN = "weighted_skin_condition_label"
#: Weights closer than this count as tied.
TIE_TOLERANCE = 1e-9


def top_condition(weighted: str) -> str | None:
    """The single top-weighted condition of a ``weighted_skin_condition_label`` cell; None if blank or tied.

    Raises:
        ValueError: the cell is not a dict literal of condition -> number.
    """
    text = weighted.strip()
    if not text:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"not a Python dict literal: {text[:60]!r}") from exc
    if not isinstance(value, dict) or not all(isinstance(w, (int, float)) for w in value.values()):
        raise ValueError(f"expected a dict of condition -> weight, got {text[:60]!r}")
    if not value:
        return None
    best = max(value.values())
    winners = [c for c, w in value.items() if abs(w - best) <= TIE_TOLERANCE]
    return str(winners[0]).strip() if len(winners) == 1 else None


def scin_case_labels(labels_csv: Path, skips: SkipLog, n_conditions: int = 5,
                     conditions: Sequence[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Apply the label rule to ``scin_labels.csv``: case_id -> condition for the kept cases, and the class list.

    ``conditions`` fixes the class list (e.g. a trained checkpoint's); otherwise the ``n_conditions``
    most frequent top conditions, most frequent first (ties broken by name).
    """
    top: dict[str, str] = {}
    for line, row in read_csv_rows(labels_csv, ("case_id", LABEL_COLUMN), skips):
        case = row["case_id"].strip()
        try:
            condition = top_condition(row[LABEL_COLUMN])
        except ValueError as exc:
            skips.skip("unreadable rows", f"{labels_csv.name} row {line}: {LABEL_COLUMN}: {exc}")
            continue
        if condition is None:
            skips.counts["cases unlabelled or tied"] += 1
            continue
        top[case] = condition
    if conditions is None:
        freq = Counter(top.values())
        conditions = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:n_conditions]]
    keep = set(conditions)
    dropped = sum(c not in keep for c in top.values())
    if dropped:
        skips.counts["cases outside the kept conditions"] += dropped
    return {case: c for case, c in top.items() if c in keep}, list(conditions)


def load_scin(root: str | Path, n_conditions: int = 5, conditions: Sequence[str] | None = None) -> LabelledImages:
    """Read SCIN from ``root`` and return the images of the cases the label rule keeps."""
    root = Path(root)
    skips = SkipLog()
    case_label, class_names = scin_case_labels(root / LABELS_CSV, skips, n_conditions, conditions)
    images_dir = root / "images"
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for line, row in read_csv_rows(root / CASES_CSV, ("case_id", *IMAGE_COLUMNS), skips):
        case = row["case_id"].strip()
        if case not in case_label or case in seen:
            continue
        seen.add(case)
        found = []
        for col in IMAGE_COLUMNS:
            ref = row[col].strip()
            if not ref:
                continue
            path = images_dir / Path(ref).name
            if path.is_file():
                found.append(ImageRecord(path, case, case_label[case], f"{CASES_CSV} row {line} ({col})"))
            else:
                skips.skip("missing images", f"{CASES_CSV} row {line} ({col}): image not found: {path}")
        if not found:
            skips.skip("cases without images", f"{CASES_CSV} row {line}: case {case} has no readable image")
            continue
        records.extend(found)
    missing_cases = set(case_label) - seen
    if missing_cases:
        skips.counts["labelled cases absent from scin_cases.csv"] += len(missing_cases)
    if not records:
        raise ValueError(f"{root}: no usable SCIN cases ({skips.summary()}).")
    log.info("SCIN: %d images of %d cases in %d classes; %s", len(records), len({r.case_id for r in records}),
             len(class_names), skips.summary())
    return LabelledImages(records, class_names, skips, f"scin:{root}")
