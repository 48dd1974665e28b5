"""Reviews of concept masks, kept in an embedded SQLite database that survives a killed process.

Layout of the data directory::

    reviews.sqlite3                       the database (WAL journal, synchronous=FULL)
    photos/<image_key>.png                a photo, written only when a review of it is saved
    masks/<image_key>/<version>/<i>.png   concept i's mask (8-bit, 0/255) as written by one save

A review belongs to one photo (its content key). Every save is a new **version** (``revision`` 1, 2, ... per
photo, whoever saved it): ``reviews`` / ``review_concepts`` hold the latest one, ``review_versions`` /
``version_concepts`` every one, with its reviewer, time and each concept's provenance
(:data:`skinapp.review.validation.PROVENANCE`).
A version's mask directory is never removed while a version row names it. Each save writes its masks into a
directory of its own (``version``, a
random id) atomically (temporary file, fsync, rename) BEFORE the one database transaction that points the
review at that directory commits. So concurrent saves of one photo, from threads or processes sharing the
data directory, never mix: a committed row always names files its own writer wrote, whole. A save that
fails or is killed leaves only an unreferenced directory, removed by a later save of that photo once it is
older than :data:`STALE_VERSION_S` (so a slower concurrent writer's files are never taken from under it).
Reviews saved before versions existed (``version`` "") keep their masks at ``masks/<image_key>/<i>.png``.
The file side (paths, atomic PNG writes, the stale sweep) is :class:`skinapp.review.mask_files.MaskFiles`; what a
save accepts (names, notes, decisions, labels, boxes) is :mod:`skinapp.review.validation`.

Schema versions (``PRAGMA user_version``): 0 = one row per photo (possibly without the ``version`` column);
:data:`SCHEMA_VERSION` = 2 adds the version tables and ``provenance``. Opening an older store migrates it in
one transaction: each existing review becomes its photo's version at its current revision, concepts marked
"model".
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skinapp.review.mask_files import MaskFiles
from skinapp.review.schema import _SCHEMA, SCHEMA_VERSION, migrate  # noqa: F401 (re-exported)
from skinapp.review.validation import checked_concepts, checked_signature, validate_concept_review

log = logging.getLogger(__name__)

#: The database file inside the data directory.
DB_NAME = "reviews.sqlite3"

#: Environment variable naming the data directory (the app's --data-dir wins over it).
DATA_DIR_ENV = "SKINAPP_DATA_DIR"

#: Age (seconds) after which a mask directory that no committed review names is removed. Longer than any
#: save takes between writing its files and committing (the database lock waits at most 30 s).
STALE_VERSION_S = 300.0


def default_data_dir() -> Path:
    """``$SKINAPP_DATA_DIR`` or ``./data/reviews``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path("data") / "reviews")


def has_store(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` holds a review store (without creating one, as opening :class:`ReviewStore` would)."""
    return (Path(data_dir) / DB_NAME).is_file()


@dataclass
class ConceptReview:
    """The reviewer's verdict on one concept.

    Attributes:
        index: the concept's position in the analysis (also its mask file name).
        phrase: the prompt phrase the concept answered (e.g. "lesion").
        score: detector score in [0, 1].
        box: (x0, y0, x1, y1) in working-image pixels.
        decision: one of :data:`~skinapp.review.validation.DECISIONS`.
        label: the corrected label when ``decision == "relabel"``.
        comment: free text.
        provenance: where the mask came from, one of :data:`~skinapp.review.validation.PROVENANCE`.
    """

    index: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]
    decision: str = "pending"
    label: str = ""
    comment: str = ""
    provenance: str = "model"

    @property
    def final_label(self) -> str:
        """The label the concept ends up with ("" when rejected or still pending)."""
        if self.decision == "accept":
            return self.phrase
        if self.decision == "relabel":
            return self.label
        return ""


@dataclass
class Review:
    """One saved version of the review of one photo's concepts (``revision`` numbers the versions, from 1;
    ``updated_at`` is when this version was saved, ``created_at`` when the photo's first was)."""

    image_key: str
    width: int
    height: int
    concepts: list[ConceptReview]
    reviewer: str = ""
    note: str = ""
    prompts: list[str] = field(default_factory=list)
    revision: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    version: str = ""


class ReviewStore:
    """SQLite-backed reviews plus the photo and mask files they refer to.

    Thread-safe: each thread gets its own connection; every save is one transaction.

    Args:
        data_dir: where the database and files live (created when missing).
    """

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_NAME
        self.files = MaskFiles(self.data_dir)
        self._local = threading.local()
        with self._transaction() as db:  # BEGIN IMMEDIATE: concurrent openers migrate one after the other
            migrate(db)

    # -- connection ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def photo_path(self, image_key: str) -> Path:
        return self.files.photo_path(image_key)

    def version_dir(self, image_key: str, version: str = "") -> Path:
        """The folder of one save's masks ("" = the pre-version layout)."""
        return self.files.version_dir(image_key, version)

    def mask_path(self, image_key: str, index: int, version: str = "") -> Path:
        """Where concept ``index``'s mask of one saved ``version`` lives."""
        return self.files.mask_path(image_key, index, version)

    def _remove_stale_versions(self, image_key: str, keep: str) -> None:
        """Delete this photo's stale mask directories (and legacy files) that no version row names."""
        named = {r[0] for r in self._connection().execute(
            "SELECT DISTINCT version FROM review_versions WHERE image_key = ?", (image_key,))} | {keep}
        self.files.remove_stale(image_key, named, STALE_VERSION_S)

    # -- writes -------------------------------------------------------------------------------
    def save(self, image_key: str, pixels: np.ndarray, masks: np.ndarray, concepts: list[ConceptReview],
             reviewer: str = "", note: str = "", prompts: list[str] | None = None) -> Review:
        """Save (or amend) the review of one photo, with the photo and the concepts' masks.

        Args:
            image_key: the photo's content key (``LoadedImage.key``).
            pixels: uint8 [H, W, 3], the working photo the masks belong to.
            masks: bool [n, H, W], one mask per concept (indexed by ``ConceptReview.index``).
            concepts: the verdicts; every index must address a mask.

        Returns:
            The review as stored (``revision`` 1 on the first save, +1 per amendment).

        Raises:
            ValueError: no photo key, pixels or masks of the wrong shape, a concept reviewed twice or addressing no
                mask, a box with no area in the photo, or a reviewer name / note :func:`checked_signature` refuses.
        """
        if not image_key or not all(ch in "0123456789abcdef" for ch in image_key):
            raise ValueError("A review needs the photo's key; analyse a photo first.")
        reviewer, note = checked_signature(reviewer, note)
        pixels = np.asarray(pixels)
        masks = np.asarray(masks, dtype=bool)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"Expected uint8 pixels [H, W, 3], got {pixels.dtype} {pixels.shape}")
        h, w = pixels.shape[:2]
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(f"Masks {masks.shape} do not match the photo ({h}x{w}).")
        checked = checked_concepts(concepts, len(masks), w, h)
        # Files first (atomic, in this save's own directory), then the one transaction that points the review
        # at them.
        version = self.files.write_save(image_key, pixels, masks, [c.index for c in checked])
        try:
            now = time.time()
            with self._transaction() as db:
                row = db.execute("SELECT revision, created_at FROM reviews WHERE image_key = ?",
                                 (image_key,)).fetchone()
                revision, created = (row[0] + 1, row[1]) if row else (1, now)
                db.execute(
                    "INSERT INTO reviews (image_key, width, height, reviewer, note, prompts, revision, created_at, "
                    "updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (image_key) DO UPDATE "
                    "SET width = excluded.width, height = excluded.height, reviewer = excluded.reviewer, "
                    "note = excluded.note, prompts = excluded.prompts, revision = excluded.revision, "
                    "updated_at = excluded.updated_at, version = excluded.version",
                    (image_key, w, h, reviewer, note, json.dumps(list(prompts or [])), revision,
                     created, now, version))
                db.execute("DELETE FROM review_concepts WHERE image_key = ?", (image_key,))
                db.executemany(
                    "INSERT INTO review_concepts (image_key, idx, phrase, score, box, decision, label, comment, "
                    "provenance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(image_key, c.index, c.phrase, c.score, json.dumps(list(c.box)), c.decision, c.label,
                      c.comment, c.provenance) for c in checked])
                self._record_version(db, image_key, revision, now)
        except BaseException:
            self.files.discard(image_key, version)
            raise
        self._remove_stale_versions(image_key, keep=version)
        log.info("Saved review of %s (revision %d, %d concepts)", image_key[:12], revision, len(checked))
        return self.load(image_key)  # type: ignore[return-value]

    @staticmethod
    def _record_version(db: sqlite3.Connection, image_key: str, revision: int, saved_at: float) -> None:
        """Copy the latest review (just written in this transaction) into the version tables."""
        db.execute("INSERT INTO review_versions (image_key, revision, version, width, height, reviewer, note, prompts, "
                   "saved_at) SELECT image_key, revision, version, width, height, reviewer, note, prompts, ? "
                   "FROM reviews WHERE image_key = ?", (saved_at, image_key))
        db.execute("INSERT INTO version_concepts (image_key, revision, idx, phrase, score, box, decision, label, "
                   "comment, provenance) SELECT image_key, ?, idx, phrase, score, box, decision, label, comment, "
                   "provenance FROM review_concepts WHERE image_key = ?", (revision, image_key))

    def amend(self, image_key: str, concepts: list[ConceptReview], reviewer: str = "", note: str = "") -> Review:
        """Change the verdicts of a reopened review: a new version with the same concepts, photo and masks.

        Raises:
            ValueError: no review of this photo, a concept index that the review does not have, or a reviewer
                name / note :func:`checked_signature` refuses.
        """
        reviewer, note = checked_signature(reviewer, note)
        existing = self.load(image_key)
        if existing is None:
            raise ValueError("There is no saved review of this photo to amend.")
        saved = {c.index: c for c in existing.concepts}
        checked = [validate_concept_review(c) for c in concepts]
        unknown = [c.index for c in checked if c.index not in saved]
        if unknown:
            raise ValueError(f"Concepts {unknown} are not part of this review.")
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE reviews SET reviewer = ?, note = ?, revision = revision + 1, updated_at = ? "
                       "WHERE image_key = ?", (reviewer, note, now, image_key))
            db.executemany("UPDATE review_concepts SET decision = ?, label = ?, comment = ? "
                           "WHERE image_key = ? AND idx = ?",
                           [(c.decision, c.label, c.comment, image_key, c.index) for c in checked])
            revision = db.execute("SELECT revision FROM reviews WHERE image_key = ?", (image_key,)).fetchone()[0]
            self._record_version(db, image_key, revision, now)
        return self.load(image_key)  # type: ignore[return-value]

    # -- reads --------------------------------------------------------------------------------
    def load(self, image_key: str) -> Review | None:
        """The stored review of a photo, or None."""
        db = self._connection()
        db.execute("BEGIN")  # one read snapshot for the review row and its concepts
        try:
            row = db.execute("SELECT image_key, width, height, reviewer, note, prompts, revision, created_at, "
                             "updated_at, version FROM reviews WHERE image_key = ?", (image_key,)).fetchone()
            rows = [] if row is None else db.execute(
                "SELECT idx, phrase, score, box, decision, label, comment, provenance FROM review_concepts "
                "WHERE image_key = ? ORDER BY idx", (image_key,)).fetchall()
        finally:
            db.execute("COMMIT")
        if row is None:
            return None
        return Review(image_key=row[0], width=row[1], height=row[2], concepts=_concepts(rows), reviewer=row[3],
                      note=row[4], prompts=json.loads(row[5]), revision=row[6], created_at=row[7],
                      updated_at=row[8], version=row[9])

    def versions(self, image_key: str) -> list[Review]:
        """Every saved version of a photo's review, newest first ([] when there is none)."""
        return self._load_versions("v.image_key = ?", (image_key,))

    def load_version(self, image_key: str, revision: int) -> Review | None:
        """One saved version (``Review.revision``) of a photo's review, or None."""
        found = self._load_versions("v.image_key = ? AND v.revision = ?", (image_key, int(revision)))
        return found[0] if found else None

    def latest_by_reviewer(self) -> list[Review]:
        """Each reviewer's latest version of each photo they reviewed (what agreement compares)."""
        return self._load_versions("v.revision = (SELECT MAX(w.revision) FROM review_versions w WHERE "
                                   "w.image_key = v.image_key AND w.reviewer = v.reviewer)", ())

    def _load_versions(self, where: str, args: tuple) -> list[Review]:
        db = self._connection()
        db.execute("BEGIN")  # one read snapshot
        try:
            heads = db.execute(
                "SELECT v.image_key, v.width, v.height, v.reviewer, v.note, v.prompts, v.revision, "
                "(SELECT MIN(f.saved_at) FROM review_versions f WHERE f.image_key = v.image_key), v.saved_at, "
                f"v.version FROM review_versions v WHERE {where} ORDER BY v.image_key, v.revision DESC",
                args).fetchall()
            rows = {(h[0], h[6]): db.execute(
                "SELECT idx, phrase, score, box, decision, label, comment, provenance FROM version_concepts "
                "WHERE image_key = ? AND revision = ? ORDER BY idx", (h[0], h[6])).fetchall() for h in heads}
        finally:
            db.execute("COMMIT")
        return [Review(image_key=h[0], width=h[1], height=h[2], concepts=_concepts(rows[(h[0], h[6])]),
                       reviewer=h[3], note=h[4], prompts=json.loads(h[5]), revision=h[6], created_at=h[7],
                       updated_at=h[8], version=h[9]) for h in heads]

    def list_reviews(self) -> list[Review]:
        """Every stored review, most recently updated first."""
        keys = [r[0] for r in self._connection().execute("SELECT image_key FROM reviews ORDER BY updated_at DESC")]
        return [r for r in (self.load(k) for k in keys) if r is not None]

    def load_mask(self, image_key: str, index: int, version: str | None = None) -> np.ndarray:
        """A saved concept mask as bool [H, W]: of ``version`` (``Review.version``), default the latest save.

        Raises:
            ValueError: no review of this photo (when ``version`` is None).
            FileNotFoundError: no such mask in that version.
        """
        if version is None:
            review = self.load(image_key)
            if review is None:
                raise ValueError("There is no saved review of this photo.")
            version = review.version
        return self.files.read_mask(image_key, index, version)

    def load_photo(self, image_key: str) -> np.ndarray:
        return self.files.read_photo(image_key)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _concepts(rows: list[tuple]) -> list[ConceptReview]:
    """ConceptReviews from (idx, phrase, score, box JSON, decision, label, comment, provenance) rows."""
    return [ConceptReview(index=r[0], phrase=r[1], score=r[2], box=tuple(json.loads(r[3])), decision=r[4],
                          label=r[5], comment=r[6], provenance=r[7]) for r in rows]
