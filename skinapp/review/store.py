"""Reviews of concept masks, kept in an embedded SQLite database that survives a killed process.

Layout of the data directory::

    reviews.sqlite3            the database (WAL journal, synchronous=FULL)
    photos/<image_key>.png     a photo, written only when a review of it is saved
    masks/<image_key>/<i>.png  concept i's mask (8-bit, 0/255), written with the review

A review belongs to one photo (its content key) and is amended in place when it is saved again
(``revision`` counts the saves). Files are written atomically (temporary file, fsync, rename)
BEFORE the database transaction that refers to them commits, so a committed review never points at
a missing or half-written file; a kill between the two leaves only an unreferenced file behind,
which the next save of that photo overwrites.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: What a reviewer can decide about one concept.
DECISIONS: tuple[str, ...] = ("pending", "accept", "reject", "relabel")

#: Environment variable naming the data directory (the app's --data-dir wins over it).
DATA_DIR_ENV = "SKINAPP_DATA_DIR"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    image_key   TEXT PRIMARY KEY,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    reviewer    TEXT NOT NULL DEFAULT '',
    note        TEXT NOT NULL DEFAULT '',
    prompts     TEXT NOT NULL DEFAULT '[]',
    revision    INTEGER NOT NULL DEFAULT 1,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_concepts (
    image_key   TEXT NOT NULL REFERENCES reviews(image_key) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    phrase      TEXT NOT NULL,
    score       REAL NOT NULL,
    box         TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('pending', 'accept', 'reject', 'relabel')),
    label       TEXT NOT NULL DEFAULT '',
    comment     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (image_key, idx)
);
"""


def default_data_dir() -> Path:
    """``$SKINAPP_DATA_DIR`` or ``./data/reviews``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path("data") / "reviews")


@dataclass
class ConceptReview:
    """The reviewer's verdict on one concept.

    Attributes:
        index: the concept's position in the analysis (also its mask file name).
        phrase: the prompt phrase the concept answered (e.g. "lesion").
        score: detector score in [0, 1].
        box: (x0, y0, x1, y1) in working-image pixels.
        decision: one of DECISIONS.
        label: the corrected label when ``decision == "relabel"``.
        comment: free text.
    """

    index: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]
    decision: str = "pending"
    label: str = ""
    comment: str = ""

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
    """A saved review of one photo's concepts."""

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


def validate_concept_review(c: ConceptReview) -> ConceptReview:
    """Normalise and check one verdict; raises ValueError with a message fit for the UI."""
    decision = (c.decision or "pending").strip().lower()
    if decision not in DECISIONS:
        raise ValueError(f"Concept {c.index}: decision must be one of {', '.join(DECISIONS)}; got {c.decision!r}.")
    label = (c.label or "").strip()
    if decision == "relabel" and not label:
        raise ValueError(f"Concept {c.index} ({c.phrase}): 'relabel' needs a new label.")
    if len(label) > 200 or len(c.comment or "") > 5000:
        raise ValueError(f"Concept {c.index}: label (200) or comment (5000 characters) too long.")
    return ConceptReview(index=int(c.index), phrase=str(c.phrase), score=float(c.score),
                         box=tuple(float(v) for v in c.box), decision=decision, label=label,
                         comment=(c.comment or "").strip())


def _atomic_write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReviewStore:
    """SQLite-backed reviews plus the photo and mask files they refer to.

    Thread-safe: each thread gets its own connection; every save is one transaction.

    Args:
        data_dir: where the database and files live (created when missing).
    """

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "reviews.sqlite3"
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)  # idempotent; executescript manages its own commit

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
        return self.data_dir / "photos" / f"{image_key}.png"

    def mask_path(self, image_key: str, index: int) -> Path:
        return self.data_dir / "masks" / image_key / f"{index}.png"

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
        """
        if not image_key or not all(ch in "0123456789abcdef" for ch in image_key):
            raise ValueError("A review needs the photo's key; analyse a photo first.")
        pixels = np.asarray(pixels)
        masks = np.asarray(masks, dtype=bool)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"Expected uint8 pixels [H, W, 3], got {pixels.dtype} {pixels.shape}")
        h, w = pixels.shape[:2]
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(f"Masks {masks.shape} do not match the photo ({h}x{w}).")
        checked = [validate_concept_review(c) for c in concepts]
        indices = [c.index for c in checked]
        if len(set(indices)) != len(indices):
            raise ValueError("Each concept can be reviewed only once per save.")
        if any(i < 0 or i >= len(masks) for i in indices):
            raise ValueError(f"Concept indices must be in 0..{len(masks) - 1}.")
        # Files first (atomic), then the one transaction that makes them part of a review.
        _atomic_write_png(self.photo_path(image_key), pixels)
        for c in checked:
            _atomic_write_png(self.mask_path(image_key, c.index), masks[c.index].astype(np.uint8) * 255)
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT revision, created_at FROM reviews WHERE image_key = ?", (image_key,)).fetchone()
            revision, created = (row[0] + 1, row[1]) if row else (1, now)
            db.execute(
                "INSERT OR REPLACE INTO reviews (image_key, width, height, reviewer, note, prompts, revision, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_key, w, h, reviewer.strip(), note.strip(), json.dumps(list(prompts or [])), revision,
                 created, now))
            db.execute("DELETE FROM review_concepts WHERE image_key = ?", (image_key,))
            db.executemany(
                "INSERT INTO review_concepts (image_key, idx, phrase, score, box, decision, label, comment) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(image_key, c.index, c.phrase, c.score, json.dumps(list(c.box)), c.decision, c.label, c.comment)
                 for c in checked])
        log.info("Saved review of %s (revision %d, %d concepts)", image_key[:12], revision, len(checked))
        return self.load(image_key)  # type: ignore[return-value]

    def amend(self, image_key: str, concepts: list[ConceptReview], reviewer: str = "", note: str = "") -> Review:
        """Change the verdicts of a reopened review (same concepts; photo and masks stay as saved).

        Raises:
            ValueError: no review of this photo, or a concept index that the review does not have.
        """
        existing = self.load(image_key)
        if existing is None:
            raise ValueError("There is no saved review of this photo to amend.")
        saved = {c.index: c for c in existing.concepts}
        checked = [validate_concept_review(c) for c in concepts]
        unknown = [c.index for c in checked if c.index not in saved]
        if unknown:
            raise ValueError(f"Concepts {unknown} are not part of this review.")
        with self._transaction() as db:
            db.execute("UPDATE reviews SET reviewer = ?, note = ?, revision = revision + 1, updated_at = ? "
                       "WHERE image_key = ?", (reviewer.strip(), note.strip(), time.time(), image_key))
            db.executemany("UPDATE review_concepts SET decision = ?, label = ?, comment = ? "
                           "WHERE image_key = ? AND idx = ?",
                           [(c.decision, c.label, c.comment, image_key, c.index) for c in checked])
        return self.load(image_key)  # type: ignore[return-value]

    # -- reads --------------------------------------------------------------------------------
    def load(self, image_key: str) -> Review | None:
        """The stored review of a photo, or None."""
        db = self._connection()
        row = db.execute("SELECT image_key, width, height, reviewer, note, prompts, revision, created_at, "
                         "updated_at FROM reviews WHERE image_key = ?", (image_key,)).fetchone()
        if row is None:
            return None
        rows = db.execute("SELECT idx, phrase, score, box, decision, label, comment FROM review_concepts "
                          "WHERE image_key = ? ORDER BY idx", (image_key,)).fetchall()
        concepts = [ConceptReview(index=r[0], phrase=r[1], score=r[2], box=tuple(json.loads(r[3])), decision=r[4],
                                  label=r[5], comment=r[6]) for r in rows]
        return Review(image_key=row[0], width=row[1], height=row[2], concepts=concepts, reviewer=row[3],
                      note=row[4], prompts=json.loads(row[5]), revision=row[6], created_at=row[7],
                      updated_at=row[8])

    def list_reviews(self) -> list[Review]:
        """Every stored review, most recently updated first."""
        keys = [r[0] for r in self._connection().execute("SELECT image_key FROM reviews ORDER BY updated_at DESC")]
        return [r for r in (self.load(k) for k in keys) if r is not None]

    def load_mask(self, image_key: str, index: int) -> np.ndarray:
        """A saved concept mask as bool [H, W]."""
        return np.asarray(Image.open(self.mask_path(image_key, index))) > 127

    def load_photo(self, image_key: str) -> np.ndarray:
        return np.asarray(Image.open(self.photo_path(image_key)).convert("RGB"))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
