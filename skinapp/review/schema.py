"""The review store's SQLite schema and its migrations (``PRAGMA user_version``).

Schema 0: one row per photo in ``reviews`` (the latest save) and its ``review_concepts`` (stores written before
versioned mask directories lack ``reviews.version``). Schema 2 (:data:`SCHEMA_VERSION`) adds
``review_concepts.provenance`` and the tables of every saved version, ``review_versions`` and
``version_concepts``.
"""

from __future__ import annotations

import sqlite3

#: ``PRAGMA user_version`` of the current schema (see the module docstring).
SCHEMA_VERSION = 2

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
    updated_at  REAL NOT NULL,
    version     TEXT NOT NULL DEFAULT ''
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

#: Tables of schema 2: every saved version of a photo's review (created by the migration).
_VERSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_versions (
    image_key   TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    version     TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    reviewer    TEXT NOT NULL DEFAULT '',
    note        TEXT NOT NULL DEFAULT '',
    prompts     TEXT NOT NULL DEFAULT '[]',
    saved_at    REAL NOT NULL,
    PRIMARY KEY (image_key, revision)
);
CREATE TABLE IF NOT EXISTS version_concepts (
    image_key   TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    phrase      TEXT NOT NULL,
    score       REAL NOT NULL,
    box         TEXT NOT NULL,
    decision    TEXT NOT NULL,
    label       TEXT NOT NULL DEFAULT '',
    comment     TEXT NOT NULL DEFAULT '',
    provenance  TEXT NOT NULL DEFAULT 'model',
    PRIMARY KEY (image_key, revision, idx),
    FOREIGN KEY (image_key, revision) REFERENCES review_versions (image_key, revision) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS review_versions_reviewer ON review_versions (reviewer, image_key);
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring the database to :data:`SCHEMA_VERSION` inside the caller's transaction (no-op when it is there).

    Each review of a schema-0 store becomes its photo's version at its current revision, concepts "model".
    """
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    for statement in (_SCHEMA + _VERSION_SCHEMA).split(";"):
        if statement.strip():
            db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(reviews)")}
    if "version" not in columns:  # a store written before versioned mask directories
        db.execute("ALTER TABLE reviews ADD COLUMN version TEXT NOT NULL DEFAULT ''")
    columns = {row[1] for row in db.execute("PRAGMA table_info(review_concepts)")}
    if "provenance" not in columns:
        db.execute("ALTER TABLE review_concepts ADD COLUMN provenance TEXT NOT NULL DEFAULT 'model'")
    db.execute("INSERT OR IGNORE INTO review_versions (image_key, revision, version, width, height, reviewer, "
               "note, prompts, saved_at) SELECT image_key, revision, version, width, height, reviewer, note, "
               "prompts, updated_at FROM reviews")
    db.execute("INSERT OR IGNORE INTO version_concepts (image_key, revision, idx, phrase, score, box, decision, "
               "label, comment, provenance) SELECT c.image_key, r.revision, c.idx, c.phrase, c.score, c.box, "
               "c.decision, c.label, c.comment, c.provenance FROM review_concepts c JOIN reviews r "
               "ON r.image_key = c.image_key")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
