"""Versions of a photo's review: every save is kept with its reviewer, time and per-concept provenance; a
store written before versions opens (migrated) and keeps its reviews as version 1."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from skinapp.review import ConceptReview, ReviewStore
from skinapp.review import schema as schema_module
from skinapp.review import store as store_module

KEY = "ab" * 32


def _masks(shift: int = 0) -> np.ndarray:
    masks = np.zeros((2, 24, 32), bool)
    masks[0, 4 + shift:12 + shift, 5:15] = True
    masks[1, 14:20, 18:30] = True
    return masks


def _concepts(provenance=("model", "model"), decision="accept") -> list[ConceptReview]:
    return [ConceptReview(0, "lesion", 0.8, (5, 4, 15, 12), decision, provenance=provenance[0]),
            ConceptReview(1, "arm", 0.4, (18, 14, 30, 20), "reject", provenance=provenance[1])]


def test_each_save_is_a_version_with_reviewer_time_and_provenance(tmp_path):
    store = ReviewStore(tmp_path)
    pixels = np.full((24, 32, 3), 90, np.uint8)
    first = store.save(KEY, pixels, _masks(), _concepts(), reviewer="dr a", note="model masks")
    second = store.save(KEY, pixels, _masks(shift=6), _concepts(("refined", "model")), reviewer="dr b",
                        note="fixed the lesion")
    third = store.amend(KEY, [ConceptReview(1, "arm", 0.4, (0, 0, 1, 1), "accept")], reviewer="dr a", note="amend")
    versions = store.versions(KEY)
    assert [v.revision for v in versions] == [3, 2, 1]
    assert [v.reviewer for v in versions] == ["dr a", "dr b", "dr a"]
    assert [v.note for v in versions] == ["amend", "fixed the lesion", "model masks"]
    assert [c.provenance for c in versions[1].concepts] == ["refined", "model"]
    assert versions[2].updated_at == first.updated_at and versions[0].updated_at == third.updated_at
    assert all(v.created_at == first.created_at for v in versions)
    # each version shows its own masks; the amendment shares the masks of the save it amends
    assert np.array_equal(store.load_mask(KEY, 0, versions[2].version), _masks()[0])
    assert np.array_equal(store.load_mask(KEY, 0, versions[1].version), _masks(shift=6)[0])
    assert versions[0].version == second.version and [c.decision for c in versions[0].concepts] == ["accept"] * 2
    # the latest is what load() gives; an earlier one by its revision
    assert store.load(KEY).revision == 3 and store.load(KEY).concepts[0].provenance == "refined"
    assert store.load_version(KEY, 1).note == "model masks" and store.load_version(KEY, 9) is None
    latest = {(r.image_key, r.reviewer): r.revision for r in store.latest_by_reviewer()}
    assert latest == {(KEY, "dr a"): 3, (KEY, "dr b"): 2}


def test_versions_survive_the_stale_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "STALE_VERSION_S", 0.0)
    store = ReviewStore(tmp_path)
    pixels = np.zeros((24, 32, 3), np.uint8)
    for shift in range(3):
        store.save(KEY, pixels, _masks(shift), _concepts())
    for v, shift in zip(store.versions(KEY), (2, 1, 0)):
        assert np.array_equal(store.load_mask(KEY, 0, v.version), _masks(shift)[0])


def test_unknown_provenance_is_refused(tmp_path):
    store = ReviewStore(tmp_path)
    with pytest.raises(ValueError, match="provenance must be one of"):
        store.save(KEY, np.zeros((24, 32, 3), np.uint8), _masks(), _concepts(("guessed", "model")))
    assert store.versions(KEY) == []


def _schema0_store(folder) -> None:
    """A store as the app wrote it before versions and versioned mask folders (schema 0)."""
    db = sqlite3.connect(folder / "reviews.sqlite3")
    db.executescript(schema_module._SCHEMA.replace(",\n    version     TEXT NOT NULL DEFAULT ''", ""))
    db.execute("INSERT INTO reviews (image_key, width, height, reviewer, note, revision, created_at, updated_at) "
               "VALUES (?, 32, 24, 'dr old', 'legacy', 4, 100, 200)", (KEY,))
    db.execute("INSERT INTO review_concepts (image_key, idx, phrase, score, box, decision) "
               "VALUES (?, 0, 'lesion', 0.5, '[5, 4, 15, 12]', 'accept')", (KEY,))
    db.commit()
    db.close()
    legacy = folder / "masks" / KEY / "0.png"
    legacy.parent.mkdir(parents=True)
    Image.fromarray(_masks()[0].astype(np.uint8) * 255).save(legacy)
    (folder / "photos").mkdir()
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(folder / "photos" / f"{KEY}.png")


def test_a_schema0_store_is_migrated_and_keeps_its_review_as_a_version(tmp_path, monkeypatch):
    _schema0_store(tmp_path)
    store = ReviewStore(tmp_path)
    db = store._connection()
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema_module.SCHEMA_VERSION
    [old] = store.versions(KEY)
    assert (old.revision, old.reviewer, old.note, old.version, old.updated_at) == (4, "dr old", "legacy", "", 200)
    assert [c.provenance for c in old.concepts] == ["model"]
    ReviewStore(tmp_path).close()  # opening again migrates nothing twice
    assert len(store.versions(KEY)) == 1
    monkeypatch.setattr(store_module, "STALE_VERSION_S", 0.0)  # the sweep must still keep the legacy masks
    new = store.save(KEY, np.zeros((24, 32, 3), np.uint8), _masks(shift=3), _concepts(("painted", "added")),
                     reviewer="dr new")
    assert new.revision == 5 and [v.revision for v in store.versions(KEY)] == [5, 4]
    assert np.array_equal(store.load_mask(KEY, 0, ""), _masks()[0])
    assert np.array_equal(store.load_mask(KEY, 0), _masks(shift=3)[0])
    assert [c.provenance for c in store.load(KEY).concepts] == ["painted", "added"]


def test_a_verdict_given_numpy_numbers_is_saved_as_plain_numbers(tmp_path):
    """Verdicts built from arrays carry numpy numbers (np.int64 index from np.flatnonzero, np.float32 score); the
    save keeps them as plain int / float and a fresh store reads them back the same."""
    store = ReviewStore(tmp_path)
    pixels = np.full((20, 30, 3), 90, np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[1, 5:10, 5:10] = True
    index = np.flatnonzero(masks.any(axis=(1, 2)))[0]
    verdict = ConceptReview(index, "lesion", np.float32(0.5), (np.int64(5), 5, 10, 10), "accept")
    saved = store.save("ef" * 32, pixels, masks, [verdict])
    for review in (saved, ReviewStore(tmp_path).load("ef" * 32)):
        concept = review.concepts[0]
        assert (type(concept.index), concept.index) == (int, 1)
        assert (type(concept.score), concept.score) == (float, 0.5)
        assert concept.box == (5.0, 5.0, 10.0, 10.0) and {type(v) for v in concept.box} == {float}
