"""Agreement between reviewers of the same photos: per-concept mask IoU and Cohen's kappa over accept/reject.

For every pair of reviewers, each one's latest version of each photo both reviewed is compared:

- per concept present in both versions (same number and phrase): the IoU of their two masks;
- over every such concept that both decided (pending left out): Cohen's kappa (Cohen, "A coefficient of
  agreement for nominal scales", 1960; ``sklearn.metrics.cohen_kappa_score``) of keep vs reject, where
  "accept" and "relabel" keep the concept and "reject" drops it.

Kappa is NaN when it is undefined (fewer than one decided concept, or both reviewers gave one same answer
throughout: agreement by chance is then 1).

Command line: ``python -m skinapp.review.agreement --data-dir DIR [--csv agreement.csv]`` prints one line per
reviewer pair (and writes the per-concept rows and the pair summaries as CSV).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from skinapp.review.store import Review, ReviewStore, default_data_dir, has_store
from skinapp.wording import counted

log = logging.getLogger(__name__)

CSV_COLUMNS = ["level", "reviewer_a", "reviewer_b", "image_key", "concept", "phrase", "decision_a", "decision_b",
               "iou", "kappa", "n_photos", "n_concepts", "n_decided", "mean_iou"]


@dataclass(frozen=True)
class ConceptAgreement:
    """One concept seen by two reviewers."""

    reviewer_a: str
    reviewer_b: str
    image_key: str
    concept: int
    phrase: str
    decision_a: str
    decision_b: str
    iou: float


@dataclass(frozen=True)
class PairAgreement:
    """Two reviewers over the photos both reviewed: kappa over keep/reject and the mean mask IoU."""

    reviewer_a: str
    reviewer_b: str
    n_photos: int
    n_concepts: int
    n_decided: int
    kappa: float
    mean_iou: float


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks [H, W]; 1.0 when both are empty (two reviewers who both erased a concept agree).

    Kept here, not imported from :mod:`skinapp.concepts`, so the command starts without loading torch.
    """
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def keeps(decision: str) -> bool | None:
    """True (accept, relabel), False (reject) or None (pending: not decided)."""
    return {"accept": True, "relabel": True, "reject": False}.get(decision)


def pair_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two reviewers' decisions (same concepts, same order) over keep/reject; pending left out."""
    pairs = [(keeps(x), keeps(y)) for x, y in zip(a, b) if keeps(x) is not None and keeps(y) is not None]
    if not pairs or len({v for p in pairs for v in p}) < 2:
        return math.nan
    return float(cohen_kappa_score([p[0] for p in pairs], [p[1] for p in pairs]))


def reviewer_identity(name: str) -> str:
    """The person a reviewer name stands for: case and spacing ignored ("Dr  A" and "dr a" are one reviewer)."""
    return " ".join(name.split()).casefold()


def agreement(store: ReviewStore, latest: list[Review] | None = None
              ) -> tuple[list[ConceptAgreement], list[PairAgreement]]:
    """Per-concept rows and per-pair summaries over the whole store (reviewer pairs in name order).

    ``latest``: ``store.latest_by_reviewer()`` when the caller has already read it (it is read otherwise).

    Names that differ only in case or spacing are one reviewer (:func:`reviewer_identity`), compared through their
    latest version of each photo and shown as the spelling of their most recent save. Versions saved without a
    reviewer name are left out: they cannot be told apart (two anonymous people would be one "reviewer").
    """
    by_photo: dict[str, dict[str, Review]] = defaultdict(dict)
    spelling: dict[str, tuple[float, str]] = {}
    for review in store.latest_by_reviewer() if latest is None else latest:
        who = reviewer_identity(review.reviewer)
        if not who:
            continue
        held = by_photo[review.image_key].get(who)
        if held is None or review.revision > held.revision:
            by_photo[review.image_key][who] = review
        if who not in spelling or review.updated_at > spelling[who][0]:
            spelling[who] = (review.updated_at, review.reviewer)
    rows: dict[tuple[str, str], list[ConceptAgreement]] = defaultdict(list)
    photos: dict[tuple[str, str], set[str]] = defaultdict(set)
    for key, reviews in by_photo.items():
        for who_a, who_b in itertools.combinations(sorted(reviews), 2):
            ra, rb = reviews[who_a], reviews[who_b]
            a, b = spelling[who_a][1], spelling[who_b][1]
            photos[(a, b)].add(key)
            concepts_b = {(c.index, c.phrase): c for c in rb.concepts}
            for ca in ra.concepts:
                cb = concepts_b.get((ca.index, ca.phrase))
                if cb is None:
                    continue
                iou = mask_iou(store.load_mask(key, ca.index, ra.version), store.load_mask(key, cb.index, rb.version))
                rows[(a, b)].append(ConceptAgreement(a, b, key, ca.index, ca.phrase, ca.decision, cb.decision, iou))
    concepts = [r for pair in sorted(rows) for r in rows[pair]]
    pairs = []
    for (a, b), items in sorted(rows.items()):
        decided = [r for r in items if keeps(r.decision_a) is not None and keeps(r.decision_b) is not None]
        pairs.append(PairAgreement(a, b, len(photos[(a, b)]), len(items), len(decided),
                                   pair_kappa([r.decision_a for r in items], [r.decision_b for r in items]),
                                   float(np.mean([r.iou for r in items]))))
    return concepts, pairs


def write_csv(concepts: list[ConceptAgreement], pairs: list[PairAgreement], path: str | Path) -> Path:
    """One CSV: a "pair" row per reviewer pair, then a "concept" row per compared concept (:data:`CSV_COLUMNS`)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        for p in pairs:
            writer.writerow({"level": "pair", "reviewer_a": p.reviewer_a, "reviewer_b": p.reviewer_b,
                             "kappa": f"{p.kappa:.4f}", "n_photos": p.n_photos, "n_concepts": p.n_concepts,
                             "n_decided": p.n_decided, "mean_iou": f"{p.mean_iou:.4f}"})
        for c in concepts:
            writer.writerow({"level": "concept", "reviewer_a": c.reviewer_a, "reviewer_b": c.reviewer_b,
                             "image_key": c.image_key, "concept": c.concept, "phrase": c.phrase,
                             "decision_a": c.decision_a, "decision_b": c.decision_b, "iou": f"{c.iou:.4f}"})
    return path


def summary_lines(pairs: list[PairAgreement]) -> list[str]:
    """One line per reviewer pair, for the terminal and the app."""
    if not pairs:
        return ["No photo has been reviewed by two or more reviewers."]
    return [f"{p.reviewer_a} vs {p.reviewer_b}: {counted(p.n_photos, 'photo')}, "
            f"{counted(p.n_concepts, 'concept')}, mean mask IoU {p.mean_iou:.3f}, Cohen's kappa {_kappa_text(p.kappa)} "
            f"over {p.n_decided} decided" for p in pairs]


def merge_notes(latest: list[Review]) -> list[str]:
    """What :func:`agreement` did to the names of ``latest`` (``store.latest_by_reviewer()``), for the terminal and
    the API: one line naming each reviewer saved under several spellings, one counting the photos whose unnamed
    version was left out."""
    spellings: dict[str, set[str]] = defaultdict(set)
    unnamed = set()
    for review in latest:
        who = reviewer_identity(review.reviewer)
        if who:
            spellings[who].add(review.reviewer)
        else:
            unnamed.add(review.image_key)
    lines = [f"{' / '.join(sorted(names))}: counted as one reviewer (case and spacing ignored)."
             for _, names in sorted(spellings.items()) if len(names) > 1]
    if unnamed:
        lines.append(f"Versions saved without a reviewer name are not compared ({counted(len(unnamed), 'photo')}).")
    return lines


def _kappa_text(kappa: float) -> str:
    """Kappa to 3 decimals; "n/a" where it is undefined (no decided concept, or both reviewers gave one and the
    same answer throughout: the chance agreement is then 1 and kappa is 0/0)."""
    return "n/a" if math.isnan(kappa) else f"{kappa:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinapp.review.agreement", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="the review store's folder (default $SKINAPP_DATA_DIR, else ./data/reviews)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    folder = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not has_store(folder):
        parser.error(f"no review store in {folder}")
    if args.csv and (Path(args.csv).is_dir() or not Path(args.csv).parent.is_dir()):  # refused before any work
        parser.error(f"cannot write the CSV {args.csv}: "
                     f"{'it is a folder' if Path(args.csv).is_dir() else 'its folder does not exist'}")
    store = ReviewStore(folder)
    latest = store.latest_by_reviewer()
    concepts, pairs = agreement(store, latest)
    if args.csv:
        try:
            write_csv(concepts, pairs, args.csv)
        except OSError as exc:  # e.g. no permission
            parser.error(f"cannot write the CSV {args.csv}: {exc.strerror or type(exc).__name__}")
    for line in summary_lines(pairs) + merge_notes(latest):
        print(line)  # the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
