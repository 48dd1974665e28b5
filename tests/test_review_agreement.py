"""Agreement between reviewers on a hand-computed example: mask IoU per concept, Cohen's kappa over keep/reject."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review.agreement import agreement, pair_kappa, write_csv

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
