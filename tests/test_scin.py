"""Data loaders (SCIN official schema, manifest CSV, image folder) and case-level splits."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tests.synthetic_scin import CaseSpec, write_scin
from train.data.folder import load_folder
from train.data.manifest import load_manifest
from train.data.scin import load_scin, top_condition
from train.splits import split_by_case

ECZ, ACD, URT, BITE, PSO = "Eczema", "Allergic Contact Dermatitis", "Urticaria", "Insect Bite", "Psoriasis"

# (weighted_skin_condition_label cell, images, missing image slots, designed label-rule outcome)
# Designed top-condition counts: Eczema 6, ACD 5, Urticaria 4, Insect Bite 3, Psoriasis 3, Tinea 2, Acne 1
# -> the five kept conditions are Eczema, ACD, Urticaria, Insect Bite, Psoriasis.
DESIGN = (
    [("{'Eczema': 0.67, 'Psoriasis': 0.33}", 1, (), ECZ)] * 3
    + [("{'Eczema': 1.0}", 3, (1,), ECZ),                  # one of three images missing: kept with two
       ("{'Eczema': 0.5, 'Urticaria': 0.25, 'Psoriasis': 0.25}", 2, (), ECZ),  # tie below the top is fine
       ("{'Eczema': 1.0}", 1, (0,), None)]                  # labelled, counted, but its only image is missing
    + [("{'Allergic Contact Dermatitis': 0.6, 'Eczema': 0.4}", 1, (), ACD)] * 5
    + [("{'Urticaria': 1.0}", 2, (), URT)] * 4
    + [("{'Insect Bite': 0.7, 'Urticaria': 0.3}", 1, (), BITE)] * 3
    + [("{'Psoriasis': 0.6, 'Eczema': 0.4}", 1, (), PSO)] * 3
    + [("{'Tinea': 1.0}", 1, (), None)] * 2                 # 6th most frequent: dropped
    + [("{'Acne': 1.0}", 1, (), None)]
    + [("{'Eczema': 0.5, 'Psoriasis': 0.5}", 1, (), None)] * 3  # tied top: dropped and not counted
    + [("", 1, (), None), ("{}", 1, (), None)]              # unlabelled
    + [("['Eczema']", 1, (), None)]                         # not a dict: unreadable row
)


@pytest.fixture
def scin(tmp_path):
    specs = [CaseSpec(w, n, miss) for w, n, miss, _ in DESIGN]
    return write_scin(tmp_path / "scin", specs, extra_label_lines=("123,only,three",))


def test_schema_has_official_columns(scin):
    with (scin.root / "scin_cases.csv").open() as f:
        header = next(csv.reader(f))
    assert len(header) == 57 and header[0] == "case_id" and "image_3_shot_type" in header
    with (scin.root / "scin_labels.csv").open() as f:
        assert len(next(csv.reader(f))) == 17


def test_scin_keeps_exactly_the_cases_the_label_rule_keeps(scin):
    data = load_scin(scin.root)
    expected = {case: label for case, (_, _, _, label) in zip(scin.case_ids, DESIGN) if label}
    kept = {r.case_id: r.label for r in data.records}
    assert kept == expected
    assert data.class_names == [ECZ, ACD, URT, BITE, PSO]
    # every existing image of a kept case, and only those
    expected_paths = sorted(str(p) for c in expected for p in scin.image_paths[c])
    assert sorted(str(r.path) for r in data.records) == expected_paths
    # case ids stay exact strings (signed 64-bit integers do not survive float parsing)
    assert all(r.case_id in scin.case_ids for r in data.records)
    assert any(r.case_id.startswith("-") for r in data.records) or any(len(r.case_id) > 15 for r in data.records)


def test_scin_reports_what_it_skipped(scin):
    data = load_scin(scin.root)
    counts = data.skipped.counts
    assert counts["missing images"] == 2
    assert counts["cases without images"] == 1
    assert counts["unreadable rows"] == 2      # the non-dict label cell and the short raw line
    assert counts["cases unlabelled or tied"] == 5
    assert counts["cases outside the kept conditions"] == 3
    text = "\n".join(data.skipped.messages)
    assert "scin_labels.csv row" in text and "scin_cases.csv row" in text and ".png" in text


def test_scin_fixed_class_list(scin):
    data = load_scin(scin.root, conditions=[PSO, ECZ])
    assert data.class_names == [PSO, ECZ]
    assert {r.label for r in data.records} == {PSO, ECZ}


def test_top_condition_rule():
    assert top_condition("{'A': 0.4, 'B': 0.6}") == "B"
    assert top_condition("{'A': 0.5, 'B': 0.5}") is None
    assert top_condition("") is None and top_condition("{}") is None
    with pytest.raises(ValueError, match="not a Python dict literal"):
        top_condition("__import__('os')")
    with pytest.raises(ValueError, match="expected a dict of condition -> weight"):
        top_condition("{'A': 'high'}")


def test_splits_never_share_a_case(scin):
    data = load_scin(scin.root)
    cases = np.array(data.case_ids)
    for ratio in (0.3, 0.5, 0.7):
        for seed in (0, 1, 2):
            s = split_by_case(data.case_ids, data.labels, ratio, seed, val_fraction=0.25)
            parts = [set(cases[s.train]), set(cases[s.val]), set(cases[s.test])]
            assert all(p for p in parts)
            assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
            assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(len(data)))
            assert set(s.cases["test"]) == parts[2]
    a = split_by_case(data.case_ids, data.labels, 0.5, 0)
    b = split_by_case(data.case_ids, data.labels, 0.5, 1)
    assert split_by_case(data.case_ids, data.labels, 0.5, 0).cases == a.cases
    assert a.cases != b.cases


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="test split is empty"):
        split_by_case(["a", "b", "c"], [0, 0, 0], 0.9, 0)
    with pytest.raises(ValueError, match="train ratio"):
        split_by_case(["a", "b"], [0, 1], 1.0, 0)


def _png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def test_manifest_loader_skips_bad_rows_and_names_them(tmp_path):
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png", i)
    lines = ["image_path,case_id,label", "img/0.png,c1,yaws", "img/1.png,c1,yaws", "img/2.png,,scabies",
             "img/missing.png,c3,yaws", "img/0.png,c4", "img/1.png,c5,mycetoma", ",c6,yaws"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    data = load_manifest(tmp_path / "m.csv", class_names=["yaws", "scabies"])
    assert [(r.path.name, r.case_id, r.label) for r in data.records] == [
        ("0.png", "c1", "yaws"), ("1.png", "c1", "yaws"), ("2.png", "img/2.png", "scabies")]
    c = data.skipped.counts
    assert c["missing images"] == 1 and c["unreadable rows"] == 2 and c["labels outside the class list"] == 1
    msgs = "\n".join(data.skipped.messages)
    for row in (5, 6, 7, 8):
        assert f"m.csv row {row}" in msgs
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "bad.csv").write_text("path,label\n")
        load_manifest(tmp_path / "bad.csv")


def test_folder_loader(tmp_path):
    _png(tmp_path / "yaws" / "a.png", 0)
    _png(tmp_path / "yaws" / "b.JPG", 1)
    _png(tmp_path / "scabies" / "c.png", 2)
    (tmp_path / "scabies" / "notes.txt").write_text("x")
    data = load_folder(tmp_path)
    assert data.class_names == ["scabies", "yaws"]
    assert sorted((r.case_id, r.label) for r in data.records) == [
        ("scabies/c.png", "scabies"), ("yaws/a.png", "yaws"), ("yaws/b.JPG", "yaws")]
    assert data.skipped.counts["non-image files"] == 1
