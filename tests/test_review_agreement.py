"""Agreement between reviewers on a hand-computed example: mask IoU per concept, Cohen's kappa over keep/reject."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.agreement import (
    PairAgreement,
    agreement,
    main,
    mask_iou,
    merge_notes,
    pair_kappa,
    reviewer_identity,
    summary_lines,
    write_csv,
)

KEYS = ["a1" * 32, "b2" * 32, "c3" * 32]
PIXELS = np.zeros((10, 10, 3), np.uint8)


def _save(store, key, reviewer, decisions, masks):
    concepts = [ConceptReview(i, "lesion" if i == 0 else "arm", 0.5, (0, 0, 10, 10), d)
                for i, d in enumerate(decisions)]
    return store.save(key, PIXELS, np.asarray(masks), concepts, reviewer=reviewer)


def _box(y0, y1, x0, x1):
    m = np.zeros((10, 10), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def store(tmp_path):
    """Reviewers "ann" and "bob" on 3 photos, 2 concepts each (and "cy" alone on one photo).

    Decisions (ann, bob): photo 1 (accept, accept), (accept, reject); photo 2 (reject, reject), (relabel, accept);
    photo 3 (reject, accept), (accept, accept). Keep/reject: ann K K R K R K, bob K R R K K K.
    p_o = 4/6; both keep 4 of 6, so p_e = (4/6)^2 + (2/6)^2 = 20/36; kappa = (24/36 - 20/36) / (16/36) = 0.25.
    Masks on photo 1, concept 0: ann rows 0-4 x cols 0-4 (16 px), bob rows 2-6 x cols 0-4 (16 px): overlap 8 px,
    union 24 px: IoU 1/3. Every other mask pair is identical (IoU 1). ann saves photo 1 twice: the latest counts.
    """
    store = ReviewStore(tmp_path)
    full = _box(0, 10, 0, 10)
    _save(store, KEYS[0], "ann", ["reject", "reject"], [full, full])  # superseded by ann's next save
    _save(store, KEYS[0], "ann", ["accept", "accept"], [_box(0, 4, 0, 4), full])
    _save(store, KEYS[0], "bob", ["accept", "reject"], [_box(2, 6, 0, 4), full])
    store.save(KEYS[1], PIXELS, np.stack([full, full]), [ConceptReview(0, "lesion", 0.5, (0, 0, 10, 10), "reject"),
               ConceptReview(1, "arm", 0.5, (0, 0, 10, 10), "relabel", label="hand")], reviewer="ann")
    _save(store, KEYS[1], "bob", ["reject", "accept"], [full, full])
    _save(store, KEYS[2], "ann", ["reject", "accept"], [full, full])
    _save(store, KEYS[2], "bob", ["accept", "accept"], [full, full])
    _save(store, KEYS[2], "cy", ["pending", "accept"], [full, _box(0, 5, 0, 10)])
    return store


def test_hand_computed_iou_and_kappa(store):
    concepts, pairs = agreement(store)
    ann_bob = next(p for p in pairs if (p.reviewer_a, p.reviewer_b) == ("ann", "bob"))
    assert (ann_bob.n_photos, ann_bob.n_concepts, ann_bob.n_decided) == (3, 6, 6)
    assert ann_bob.kappa == pytest.approx(0.25)
    assert ann_bob.mean_iou == pytest.approx((1 / 3 + 5) / 6)
    first = next(c for c in concepts if c.image_key == KEYS[0] and c.concept == 0 and c.reviewer_b == "bob")
    assert first.iou == pytest.approx(1 / 3) and (first.decision_a, first.decision_b) == ("accept", "accept")
    # cy shares one photo with each: concept 0 is pending for cy (left out of kappa), concept 1 IoU 0.5
    ann_cy = next(p for p in pairs if (p.reviewer_a, p.reviewer_b) == ("ann", "cy"))
    assert (ann_cy.n_photos, ann_cy.n_concepts, ann_cy.n_decided) == (1, 2, 1) and math.isnan(ann_cy.kappa)
    assert ann_cy.mean_iou == pytest.approx((1 + 0.5) / 2)


def test_kappa_edge_cases():
    assert pair_kappa(["accept", "reject"], ["accept", "reject"]) == pytest.approx(1.0)
    assert pair_kappa(["accept", "reject"], ["reject", "accept"]) == pytest.approx(-1.0)
    assert math.isnan(pair_kappa(["accept"] * 3, ["relabel"] * 3))  # one answer throughout: undefined
    assert math.isnan(pair_kappa(["pending"], ["accept"]))


def test_csv_and_command(store, tmp_path):
    concepts, pairs = agreement(store)
    path = write_csv(concepts, pairs, tmp_path / "agreement.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["level"] for r in rows].count("pair") == 3 and float(rows[0]["kappa"]) == pytest.approx(0.25)
    assert sum(r["level"] == "concept" for r in rows) == len(concepts) == 6 + 2 + 2
    out = subprocess.run([sys.executable, "-m", "skinapp.review.agreement", "--data-dir", str(store.data_dir),
                          "--csv", str(tmp_path / "cli.csv")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ann vs bob: 3 photos, 6 concepts, mean mask IoU 0.889, Cohen's kappa 0.250 over 6 decided" in out.stdout
    assert (tmp_path / "cli.csv").read_text() == path.read_text()
    empty = subprocess.run([sys.executable, "-m", "skinapp.review.agreement", "--data-dir", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no review store" in empty.stderr


# the command, in process (the subprocess test above is left out of the mutation runs, which cannot trace it)
PAIR_LINES = [
    "ann vs bob: 3 photos, 6 concepts, mean mask IoU 0.889, Cohen's kappa 0.250 over 6 decided",
    "ann vs cy: 1 photo, 2 concepts, mean mask IoU 0.750, Cohen's kappa n/a over 1 decided",
    "bob vs cy: 1 photo, 2 concepts, mean mask IoU 0.750, Cohen's kappa n/a over 1 decided",
]
CSV_HEADER = "level,reviewer_a,reviewer_b,image_key,concept,phrase,decision_a,decision_b,iou,kappa,n_photos," \
             "n_concepts,n_decided,mean_iou"


def test_command_prints_each_pair_and_writes_the_csv_of_the_hand_computed_values(store, tmp_path, capsys):
    out = tmp_path / "agreement.csv"
    assert main(["--data-dir", str(store.data_dir), "--csv", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == PAIR_LINES
    k0, k1, k2 = KEYS
    concept_rows = [  # pair, photo, concept, phrase, decisions, IoU (see the fixture)
        ("ann", "bob", k0, 0, "lesion", "accept", "accept", "0.3333"), ("ann", "bob", k0, 1, "arm", "accept", "reject",
                                                                       "1.0000"),
        ("ann", "bob", k1, 0, "lesion", "reject", "reject", "1.0000"), ("ann", "bob", k1, 1, "arm", "relabel", "accept",
                                                                       "1.0000"),
        ("ann", "bob", k2, 0, "lesion", "reject", "accept", "1.0000"), ("ann", "bob", k2, 1, "arm", "accept", "accept",
                                                                       "1.0000"),
        ("ann", "cy", k2, 0, "lesion", "reject", "pending", "1.0000"), ("ann", "cy", k2, 1, "arm", "accept", "accept",
                                                                       "0.5000"),
        ("bob", "cy", k2, 0, "lesion", "accept", "pending", "1.0000"), ("bob", "cy", k2, 1, "arm", "accept", "accept",
                                                                       "0.5000"),
    ]
    assert out.read_text().splitlines() == [
        CSV_HEADER,
        "pair,ann,bob,,,,,,,0.2500,3,6,6,0.8889",
        "pair,ann,cy,,,,,,,nan,1,2,1,0.7500",
        "pair,bob,cy,,,,,,,nan,1,2,1,0.7500",
        *(f"concept,{a},{b},{key},{i},{phrase},{da},{db},{iou},,,,," for a, b, key, i, phrase, da, db, iou
          in concept_rows)]


def test_command_without_csv_writes_no_file_and_reads_the_data_dir_from_the_environment(store, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKINAPP_DATA_DIR", str(store.data_dir))
    before = sorted(tmp_path.rglob("*"))
    assert main([]) == 0
    assert capsys.readouterr().out.splitlines() == PAIR_LINES
    assert sorted(tmp_path.rglob("*")) == before


def test_command_on_a_folder_without_a_store_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "none"
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(missing)])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # argparse wraps the usage line to the terminal's width
    assert err == ("usage: python -m skinapp.review.agreement [-h] [--data-dir DATA_DIR] [--csv CSV] "
                   f"python -m skinapp.review.agreement: error: no review store in {missing}")
    assert not missing.exists()  # looking does not create a store


def test_command_help_describes_it(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Agreement between reviewers of the same photos: per-concept mask IoU and Cohen's kappa over " \
           "accept/reject." in text
    assert "--data-dir DATA_DIR the review store's folder (default $SKINAPP_DATA_DIR, else ./data/reviews)" in text
    assert "--csv CSV also write the rows to this CSV file" in text


def test_summary_of_no_pairs_and_of_a_pair():
    assert summary_lines([]) == ["No photo has been reviewed by two or more reviewers."]
    pair = PairAgreement("al", "bo", 2, 3, 1, 0.5, 0.25)
    assert summary_lines([pair]) == ["al vs bo: 2 photos, 3 concepts, mean mask IoU 0.250, Cohen's kappa "
                                     "0.500 over 1 decided"]


def test_versions_saved_without_a_name_are_nobodys_and_not_compared(tmp_path):
    """Found by a new user: unnamed saves became a reviewer "(unnamed)" in agreement; two anonymous people would be
    one reviewer there."""
    store = ReviewStore(tmp_path)
    full = _box(0, 10, 0, 10)
    _save(store, KEYS[0], "", ["reject", "reject"], [full, full])
    _save(store, KEYS[0], "  ", ["accept", "reject"], [full, full])
    _save(store, KEYS[0], "bob", ["accept", "accept"], [full, full])
    assert agreement(store) == ([], [])
    _save(store, KEYS[0], "cy", ["accept", "reject"], [full, full])
    _save(store, KEYS[0], "", ["reject", "accept"], [full, full])  # the newest version: met first, then skipped
    assert [(p.reviewer_a, p.reviewer_b) for p in agreement(store)[1]] == [("bob", "cy")]


def test_two_empty_masks_agree_fully():
    empty = np.zeros((10, 10), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, _box(0, 1, 0, 1)) == 0.0


def test_undefined_kappa_is_nan_without_asking_sklearn_so_no_warning_reaches_the_log():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns on a single label; the defined case must not reach it
        assert math.isnan(pair_kappa(["accept"] * 3, ["relabel"] * 3))
        assert math.isnan(pair_kappa(["reject", "pending"], ["reject", "accept"]))


def test_a_concept_only_one_reviewer_has_is_skipped_and_the_next_ones_still_compared(tmp_path):
    store = ReviewStore(tmp_path)
    full = _box(0, 10, 0, 10)
    store.save(KEYS[0], PIXELS, np.stack([full, full, full]), [
        ConceptReview(0, "mole", 0.5, (0, 0, 10, 10), "accept"), ConceptReview(1, "arm", 0.5, (0, 0, 10, 10), "accept"),
        ConceptReview(2, "nail", 0.5, (0, 0, 10, 10), "reject")], reviewer="ann")
    _save(store, KEYS[0], "bob", ["accept", "reject", "reject"], [full, full, full])  # 0 is "lesion" for bob
    concepts, [pair] = agreement(store)
    assert [(c.concept, c.phrase, c.decision_a, c.decision_b) for c in concepts] == [
        (1, "arm", "accept", "reject")]
    assert (pair.n_photos, pair.n_concepts, pair.n_decided) == (1, 1, 1)


def test_names_that_differ_in_case_or_spacing_are_one_reviewer(tmp_path, capsys):
    """Found by a new user: "Dr A" and "dr  a" were two reviewers, so a reviewer agreed with themself. One
    reviewer now, compared through the latest of their versions, named as in their most recent save."""
    store = ReviewStore(tmp_path)
    full = _box(0, 10, 0, 10)
    _save(store, KEYS[0], "Dr A", ["reject", "reject"], [full, full])
    _save(store, KEYS[0], "bob", ["accept", "accept"], [full, full])
    _save(store, KEYS[0], "dr  a", ["accept", "reject"], [full, full])  # the same person, a later look
    concepts, pairs = agreement(store)
    assert [(p.reviewer_a, p.reviewer_b, p.n_photos, p.n_concepts) for p in pairs] == [("bob", "dr  a", 1, 2)]
    assert [(c.decision_a, c.decision_b) for c in concepts] == [("accept", "accept"), ("accept", "reject")]
    assert reviewer_identity(" Dr \t A ") == "dr a" != reviewer_identity("Dra"), "spacing counts as one space"
    _save(store, KEYS[1], "", ["accept", "accept"], [full, full])
    assert merge_notes(store.latest_by_reviewer()) == [
        "Dr A / dr  a: counted as one reviewer (case and spacing ignored).",
        "Versions saved without a reviewer name are not compared (1 photo)."], \
        "found by a new user: the command and the API did not say what was merged or left out"
    assert main(["--data-dir", str(store.data_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == merge_notes(store.latest_by_reviewer())


def test_command_says_why_the_csv_could_not_be_written(store, tmp_path, capsys, monkeypatch):
    """A CSV refused while writing (no permission: not reproducible as root, so faked) is a usage error too."""
    import skinapp.review.agreement as agreement_module

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(agreement_module, "write_csv", refuse)
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(store.data_dir), "--csv", str(tmp_path / "x.csv")])
    assert exit_info.value.code == 2 and " ".join(capsys.readouterr().err.split()).endswith(
        f"error: cannot write the CSV {tmp_path / 'x.csv'}: Permission denied")
    monkeypatch.setattr(agreement_module, "write_csv", lambda *a: (_ for _ in ()).throw(OSError()))
    with pytest.raises(SystemExit):
        main(["--data-dir", str(store.data_dir), "--csv", str(tmp_path / "x.csv")])
    assert capsys.readouterr().err.rstrip().endswith(f"error: cannot write the CSV {tmp_path / 'x.csv'}: OSError")


@pytest.mark.parametrize("where, reason", [("missing/x.csv", "its folder does not exist"),
                                           (".", "it is a folder")])
def test_command_with_a_csv_it_cannot_write_is_a_usage_error(store, tmp_path, capsys, where, reason):
    """Found by a new user: --csv /nonexistent/dir/x.csv ended in a FileNotFoundError traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(store.data_dir), "--csv", str(tmp_path / where)])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and " ".join(err.split()).endswith(
        f"python -m skinapp.review.agreement: error: cannot write the CSV {tmp_path / where}: {reason}")
