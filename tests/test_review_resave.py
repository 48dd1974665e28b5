"""Saving a review again (the Review screen's Save on a reopened photo) keeps when it was first made."""

from __future__ import annotations

import numpy as np

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review import store as store_mod

KEY = "cd" * 32


class _Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


def test_resave_keeps_created_at_and_moves_updated_at(tmp_path, monkeypatch):
    clock = _Clock(1_700_000_000.0)
    monkeypatch.setattr(store_mod.time, "time", clock.time)
    pixels = np.zeros((20, 30, 3), np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:15, 20:28] = True
    store = ReviewStore(tmp_path)

    first = store.save(KEY, pixels, masks, [ConceptReview(0, "lesion", 0.9, (3, 2, 9, 8), "accept")], reviewer="a")
    clock.now += 3600.0
    second = store.save(KEY, pixels, masks, [ConceptReview(0, "lesion", 0.9, (3, 2, 9, 8), "reject"),
                                             ConceptReview(1, "arm", 0.5, (20, 10, 28, 15), "accept")], reviewer="b")

    assert (first.created_at, first.updated_at, first.revision) == (1_700_000_000.0, 1_700_000_000.0, 1)
    assert (second.created_at, second.updated_at, second.revision) == (1_700_000_000.0, 1_700_003_600.0, 2)
    assert [c.decision for c in second.concepts] == ["reject", "accept"] and second.reviewer == "b"
    reopened = ReviewStore(tmp_path).load(KEY)
    assert reopened is not None and reopened.created_at == 1_700_000_000.0 and reopened.updated_at == 1_700_003_600.0
