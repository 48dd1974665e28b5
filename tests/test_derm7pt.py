"""Derm7pt reader on synthetic copies of the official release_v0 layout (tests/synthetic_derm.py)."""

from __future__ import annotations

import csv
import logging

import pytest
from synthetic_derm import make_derm7pt

from train.data.derm7pt import CRITERIA_VALUES, find_release, read_derm7pt
from train.data.text import build_text


@pytest.fixture(scope="module")
def derm7pt(tmp_path_factory):
    return make_derm7pt(tmp_path_factory.mktemp("d7"), per_class=3, bad_rows=True)


def test_reads_every_good_row_with_its_criteria(derm7pt):
    result = read_derm7pt(derm7pt.root)
    by_case = {r.case_id: r for r in result.records}
    assert len(result.records) == len(derm7pt.kept)
    for row in derm7pt.kept:
        record = by_case[f"derm7pt:{row['case_id']}"]
        assert record.diagnosis == row["diagnosis"]
        assert record.label == ("melanoma" if row["diagnosis"].startswith("melanoma") else row["diagnosis"])
        assert record.criteria == {k: row[k] for k in CRITERIA_VALUES}
        assert record.text == build_text(record.label, record.criteria)
        assert record.image_path.is_file() and record.source == "derm7pt"
        assert record.image_path.name.lower() == row["derm"].split("/")[-1].lower()


def test_resolves_image_paths_case_insensitively(derm7pt):
    records = read_derm7pt(derm7pt.root).records
    expected = {row["derm"].split("/")[-1] for row in derm7pt.kept}
    differing = [r for r in records if r.image_path.name not in expected]
    assert differing, "the synthetic set stores some images with another case than meta.csv"
    assert all(r.image_path.is_file() for r in differing)


def test_bad_rows_are_skipped_counted_and_named(derm7pt, caplog):
    with caplog.at_level(logging.WARNING):
        result = read_derm7pt(derm7pt.root)
    assert dict(result.skipped) == derm7pt.planted
    meta = str(find_release(derm7pt.root) / "meta" / "meta.csv")
    messages = [r.getMessage() for r in caplog.records]
    n_good = len(derm7pt.kept)
    for offset, needle in enumerate(("not a diagnosis", "wavy", "Missing001.jpg")):
        assert any(meta in m and f"row {n_good + offset}" in m and needle in m for m in messages), needle
    assert any("skipped 3" in m for m in messages)


def test_official_splits_and_both_image_columns(derm7pt):
    records = read_derm7pt(derm7pt.root, images=("derm", "clinic")).records
    assert {r.extra["official_split"] for r in records} == {"train", "valid", "test"}
    per_case = {}
    for r in records:
        per_case.setdefault(r.case_id, set()).add(r.extra["image_type"])
    good = {f"derm7pt:{row['case_id']}" for row in derm7pt.kept}
    assert all(per_case[c] == {"derm", "clinic"} for c in good)


def test_subtype_scheme_keeps_melanoma_subtypes(derm7pt):
    labels = {r.label for r in read_derm7pt(derm7pt.root, labels="subtypes").records}
    assert "melanoma (in situ)" in labels and "melanoma" in labels


def test_layout_errors_are_clear(tmp_path, derm7pt):
    with pytest.raises(FileNotFoundError, match="meta.csv"):
        read_derm7pt(tmp_path)
    with pytest.raises(ValueError, match="image column"):
        read_derm7pt(derm7pt.root, images=("dermoscopic",))
    broken = tmp_path / "release_v0" / "meta"
    broken.mkdir(parents=True)
    with open(broken / "meta.csv", "w", newline="") as f:
        csv.writer(f).writerows([["case_num", "diagnosis"], ["1", "melanoma"]])
    with pytest.raises(ValueError, match="missing columns"):
        read_derm7pt(tmp_path)
