"""PH2 reader on synthetic copies of the official layout (CRLF table, padding, blank histology, legend)."""

from __future__ import annotations

import logging
import re

import pytest
from synthetic_derm import make_ph2

from train.data.ph2 import TABLE_NAME, parse_fields, read_ph2, split_row


@pytest.fixture(scope="module")
def ph2(tmp_path_factory):
    return make_ph2(tmp_path_factory.mktemp("ph2"), per_class=3, bad_rows=True)


def test_parses_a_row_in_the_documented_shape():
    fields = split_row("|| IMD999 ||        ||     1 ||    0 |    AT |   T |  A |  A |  P ||  3  4 ||")
    assert fields == ["IMD999", "", "1", "0", "AT", "T", "A", "A", "P", "3  4"]
    name, histology, diagnosis, criteria = parse_fields(fields)
    assert (name, histology, diagnosis) == ("IMD999", "", "atypical nevus")
    assert criteria == {"asymmetry": "none", "pigment_network": "atypical", "dots_and_globules": "regular",
                        "streaks": "absent", "regression_structures": "absent", "blue_whitish_veil": "present",
                        "colours": ("light brown", "dark brown")}


def test_reads_every_good_row(ph2):
    raw = (ph2.root / "PH2Dataset" / TABLE_NAME).read_bytes()
    assert b"\r\n" in raw and b"Legend" in raw
    result = read_ph2(ph2.root)
    by_case = {r.case_id: r for r in result.records}
    assert len(result.records) == len(ph2.kept)
    for row in ph2.kept:
        record = by_case[f"ph2:{row['name']}"]
        assert record.diagnosis == record.label == row["diagnosis"]
        assert record.extra["histology"] == row["cells"][1]  # blank cells stay blank
        assert record.image_path.is_file() and record.image_path.suffix == ".bmp"
        assert record.text.startswith(f"{row['diagnosis']}.")
    assert any(r.extra["histology"] == "" for r in result.records)
    assert any(r.extra["histology"] != "" for r in result.records)


def test_bad_rows_are_skipped_counted_and_named(ph2, caplog):
    with caplog.at_level(logging.WARNING):
        result = read_ph2(ph2.root)
    assert dict(result.skipped) == ph2.planted
    table = str(ph2.root / "PH2Dataset" / TABLE_NAME)
    messages = [r.getMessage() for r in caplog.records]
    first_bad = len(ph2.kept) + 2  # header is line 1
    for offset, needle in enumerate(("'7'", "expected 10 fields", "not found")):
        assert any(table in m and f"line {first_bad + offset}" in m and needle in m for m in messages), needle


@pytest.mark.parametrize("bad, message", [
    (["IMD1", "", "1", "3", "T", "A", "A", "A", "A", "3"], "Asymmetry='3' is not one of"),
    (["IMD1", "", "1", "0", "X", "A", "A", "A", "A", "3"], "Pigment Network='X' is not one of"),
    (["IMD1", "", "1", "0", "T", "A", "A", "A", "A", "3 9"], "Colors='9' is not one of"),
    (["IMD1", "", "1", "0", "T", "A", "A", "A", "A", ""], "no colours"),
    (["NOTANAME", "", "1", "0", "T", "A", "A", "A", "A", "3"], "bad image name 'NOTANAME'"),
])
def test_malformed_fields_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_fields(bad)


def _table_with_legend(folder, legend):
    """PH2_dataset.txt whose rows are the synthetic ones, followed by ``legend`` lines."""
    table = folder / "PH2Dataset" / TABLE_NAME
    lines = table.read_bytes().decode().split("\r\n")
    rows = [line for line in lines if line.startswith("||")]
    table.write_bytes("\r\n".join(rows + legend).encode())


def test_legend_lines_starting_with_bars_end_the_table(tmp_path, caplog):
    made = make_ph2(tmp_path, per_class=1)
    _table_with_legend(tmp_path, ["|| Legend ||", "|| Clinical Diagnosis: 0 - Common Nevus || 1 - Atypical Nevus ||"])
    with caplog.at_level(logging.WARNING):
        result = read_ph2(tmp_path)
    assert len(result.records) == len(made.kept) and not result.skipped
    assert not caplog.records


def test_image_rows_after_the_legend_are_counted(tmp_path, caplog):
    made = make_ph2(tmp_path, per_class=1)
    table = tmp_path / "PH2Dataset" / TABLE_NAME
    rows = [line for line in table.read_bytes().decode().split("\r\n") if line.startswith("||")]
    _table_with_legend(tmp_path, ["Legend:", rows[-1].replace(made.kept[-1]["name"], "IMD999")])
    with caplog.at_level(logging.WARNING):
        result = read_ph2(tmp_path)
    assert len(result.records) == len(made.kept)
    assert dict(result.skipped) == {"row after legend": 1}
    assert any(f"line {len(rows) + 2}" in r.getMessage() and "not read" in r.getMessage() for r in caplog.records)


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=TABLE_NAME):
        read_ph2(tmp_path)
