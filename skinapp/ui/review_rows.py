"""The review table as the Review handlers read it (from the screen, or from ``gradio_client`` as
``{"headers", "data"}``): its columns, its rows as dicts, and whether they name a photo's concepts.

A row names a concept by its number ``#``, its phrase ``concept`` and its ``score`` (as shown, 3 decimals); only
``decision``, ``new label`` and ``comment`` are the reviewer's to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

REVIEW_COLUMNS = ["#", "concept", "score", "decision", "new label", "comment"]
#: How far a row's score may be from the concept's (the table shows 3 decimals).
SCORE_TOLERANCE = 1e-3


def cell_text(value: Any) -> str:
    """A table cell as text ("" for an empty cell: None or NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def table_rows(table: Any) -> list[dict[str, Any]]:
    """Rows of the review table as dicts, whatever form Gradio or gradio_client gives it in."""
    if table is None:
        return []
    if isinstance(table, dict):  # gradio_client: {"headers": [...], "data": [[...]]}
        table = pd.DataFrame(table.get("data") or [], columns=table.get("headers") or REVIEW_COLUMNS)
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table, columns=REVIEW_COLUMNS)
    missing = set(REVIEW_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"The review table lacks the columns {sorted(missing)}.")
    return [rec for rec in table.to_dict("records") if cell_text(rec.get("#")) != ""]


def row_index(row: dict[str, Any]) -> int:
    """The concept number of a row; ValueError when ``#`` is not a number."""
    try:
        return int(float(row["#"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Row '#' must be a concept number; got {row['#']!r}.") from exc


def rows_match(rows: list[dict[str, Any]], phrases: list[str], scores: list[float]) -> bool:
    """True when every row names a concept of this photo by its number, phrase and score."""
    for row in rows:
        try:
            i = row_index(row)
            score = float(row.get("score"))
        except (TypeError, ValueError):
            return False
        if not 0 <= i < len(phrases) or cell_text(row.get("concept")) != phrases[i] or abs(
                score - scores[i]) > SCORE_TOLERANCE:
            return False
    return True


def covers(rows: list[dict[str, Any]], indices: Any) -> bool:
    """True when the rows name each concept number of ``indices`` exactly once (no concept dropped or doubled)."""
    return sorted(row_index(r) for r in rows) == sorted(indices)


def renamed_rows(rows: list[dict[str, Any]], concepts: Mapping[int, tuple[str, float]]) -> list[tuple[int, str, str]]:
    """(number, the concept's phrase, the row's text) of each row that names a concept of ``concepts`` (number ->
    (phrase, score)) by its number and score under another phrase: the concept column was edited. [] when any row
    names no concept by number and score (a table of another photo is not a renaming)."""
    renamed = []
    for row in rows:
        try:
            i, score = row_index(row), float(row.get("score"))
        except (TypeError, ValueError):
            return []
        if i not in concepts or abs(score - concepts[i][1]) > SCORE_TOLERANCE:
            return []
        if cell_text(row.get("concept")) != concepts[i][0]:
            renamed.append((i, concepts[i][0], cell_text(row.get("concept"))))
    return renamed


def renamed_message(renamed: list[tuple[int, str, str]]) -> str:
    """The refusal of a table whose concept column was edited (``renamed`` from :func:`renamed_rows`, not empty):
    the first renaming, how many more, and how to rename a concept (relabel)."""
    i, phrase, text = renamed[0]
    more = f" (and {len(renamed) - 1} more row{'s' if len(renamed) > 2 else ''})" if len(renamed) > 1 else ""
    return (f"The concept column cannot be edited: row #{i} renames {phrase!r} to {text!r}{more}. To rename a "
            "concept, set its decision to 'relabel' and write the new name in the 'new label' column (on screen: "
            "Decision 'relabel', New label).")
