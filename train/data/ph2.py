"""Read the PH2 data set into :class:`~train.data.text.LesionRecord` s.

Layout: ``PH2Dataset/PH2_dataset.txt`` and
``PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp``.

``PH2_dataset.txt`` is a text table (CRLF): a header row, one row per image, then a legend block.
Fields are separated by ``||`` and, inside the criteria group, by ``|``; cells are space-padded; the
histology cell is often blank. Field order: Name, Histological Diagnosis, Clinical Diagnosis,
Asymmetry, Pigment Network, Dots/Globules, Streaks, Regression Areas, Blue-Whitish Veil, Colors.
The table ends at the first non-blank line that is not an image row (``|| IMD...``): the legend,
whether or not its lines start with ``||``. Codes are mapped to the shared criteria vocabulary of
:mod:`train.data.text`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from train.data.text import (
    PH2_DIAGNOSES,
    LesionRecord,
    ReadResult,
    build_text,
    check_value,
    map_diagnosis,
    resolve_path,
)

log = logging.getLogger(__name__)

TABLE_NAME = "PH2_dataset.txt"
IMAGES_DIR = "PH2 Dataset images"
N_FIELDS = 10
_NAME = re.compile(r"^IMD\d+$", re.IGNORECASE)
#: A data row starts with ``||`` then an image name; anything else after the header ends the table.
_ROW_START = re.compile(r"^\s*\|\|\s*IMD", re.IGNORECASE)

ASYMMETRY: dict[str, str] = {"0": "none", "1": "one axis", "2": "two axes"}
PIGMENT_NETWORK: dict[str, str] = {"T": "typical", "AT": "atypical"}
#: PH2's typical / atypical dots and globules are Derm7pt's regular / irregular.
DOTS_GLOBULES: dict[str, str] = {"A": "absent", "T": "regular", "AT": "irregular"}
ABSENT_PRESENT: dict[str, str] = {"A": "absent", "P": "present"}
COLOURS: dict[str, str] = {"1": "white", "2": "red", "3": "light brown", "4": "dark brown", "5": "blue-grey",
                           "6": "black"}


def find_ph2(root: str | Path) -> Path:
    """The ``PH2Dataset`` folder: ``root`` itself or ``root/PH2Dataset``."""
    root = Path(root)
    for candidate in (root, root / "PH2Dataset"):
        if (candidate / TABLE_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"PH2: no {TABLE_NAME} under {root} or {root / 'PH2Dataset'}")


def split_row(line: str) -> list[str]:
    """``"|| a || b | c ||"`` -> ``["a", "b", "c"]`` (``||`` and ``|`` both separate; empty cells kept)."""
    body = line.strip()
    if not body.startswith("||"):
        raise ValueError("not a table row")
    body = body[2:-2] if body.endswith("||") else body[2:]
    return [cell.strip() for group in body.split("||") for cell in group.split("|")]


def _code(mapping: dict[str, str], column: str, value: str) -> str:
    return mapping[check_value(column, value.upper(), mapping)]


def parse_fields(fields: list[str]) -> tuple[str, str, str, dict]:
    """Fields of one row -> (name, histology, clinical diagnosis, criteria); ValueError when malformed."""
    if len(fields) != N_FIELDS:
        raise ValueError(f"expected {N_FIELDS} fields, found {len(fields)}")
    name, histology, clinical, asym, network, dots, streaks, regression, veil, colours = fields
    if not _NAME.match(name):
        raise ValueError(f"bad image name {name!r}")
    diagnosis = PH2_DIAGNOSES[check_value("Clinical Diagnosis", clinical, PH2_DIAGNOSES)]
    colour_codes = colours.split()
    if not colour_codes:
        raise ValueError("no colours")
    criteria = {
        "asymmetry": _code(ASYMMETRY, "Asymmetry", asym),
        "pigment_network": _code(PIGMENT_NETWORK, "Pigment Network", network),
        "dots_and_globules": _code(DOTS_GLOBULES, "Dots/Globules", dots),
        "streaks": _code(ABSENT_PRESENT, "Streaks", streaks),
        "regression_structures": _code(ABSENT_PRESENT, "Regression Areas", regression),
        "blue_whitish_veil": _code(ABSENT_PRESENT, "Blue-Whitish Veil", veil),
        "colours": tuple(COLOURS[c] for c in sorted({check_value("Colors", c, COLOURS) for c in colour_codes},
                                                    key=int)),
    }
    return name.upper(), histology, diagnosis, criteria


def _rows_after(rest: list[str], table: Path, legend_line: int) -> int:
    """Image rows after the line taken as the legend's start (not read): warned about and counted."""
    stranded = [legend_line + 1 + i for i, line in enumerate(rest) if _ROW_START.match(line)]
    if stranded:
        log.warning("%s: legend taken to start at line %d, but %d image row(s) follow it, from line %d; not read",
                    table, legend_line, len(stranded), stranded[0])
    return len(stranded)


def read_ph2(root: str | Path, labels: str = "merged") -> ReadResult:
    """Read PH2_dataset.txt into records (one per dermoscopic image).

    Args:
        root: the ``PH2Dataset`` folder or its parent.
        labels: a label scheme of :data:`train.data.text.LABEL_SCHEMES`.
    """
    folder = find_ph2(root)
    table = folder / TABLE_NAME
    lines = table.read_bytes().decode("utf-8", errors="replace").splitlines()
    header = next((i for i, line in enumerate(lines) if line.strip().startswith("||") and "name" in line.lower()),
                  None)
    if header is None:
        raise ValueError(f"{table}: no header row (a '|| Name || ...' line)")
    result = ReadResult(records=[])
    for number, line in enumerate(lines[header + 1:], start=header + 2):
        if not line.strip():
            continue
        if not _ROW_START.match(line):  # the legend block after the table
            stranded = _rows_after(lines[number:], table, number)
            if stranded:
                result.skipped["row after legend"] += stranded
            break
        where = f"{table} line {number}"
        try:
            name, histology, diagnosis, criteria = parse_fields(split_row(line))
            label = map_diagnosis(diagnosis, labels)
        except ValueError as exc:
            log.warning("%s: %s; row skipped", where, exc)
            result.skipped["bad row"] += 1
            continue
        relative = f"{IMAGES_DIR}/{name}/{name}_Dermoscopic_Image/{name}.bmp"
        path = resolve_path(folder, relative)
        if path is None:
            log.warning("%s: image %s not found; skipped", where, folder / relative)
            result.skipped["missing image"] += 1
            continue
        result.records.append(LesionRecord(
            image_path=path, case_id=f"ph2:{name}", source="ph2", diagnosis=diagnosis, label=label,
            criteria=criteria, text=build_text(label, criteria), extra={"line": number, "histology": histology},
        ))
    result.log_summary(f"PH2 ({table})")
    return result
