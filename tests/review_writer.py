"""Writers for the review store's concurrency tests: each save's masks are a function of its note, so any
reader can tell whether a committed row and the files it names belong together.

Run as a script (``python tests/review_writer.py DATA_DIR KEY NAME N``) for a writer in another process; it
prints the number of inconsistent reads it saw. ``N`` < 0 saves until killed.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinapp.review import ConceptReview, ReviewStore  # noqa: E402

SHAPE = (24, 32)
N_CONCEPTS = 3
PIXELS = np.full((*SHAPE, 3), 120, np.uint8)


def masks_for(note: str) -> np.ndarray:
    """bool [N_CONCEPTS, H, W], determined by the note alone."""
    return np.random.default_rng(zlib.crc32(note.encode())).random((N_CONCEPTS, *SHAPE)) > 0.5


def verdicts(note: str) -> list[ConceptReview]:
    return [ConceptReview(i, "lesion", 0.5, (0, 0, 10, 10), "accept", comment=note) for i in range(N_CONCEPTS)]


def consistent(store: ReviewStore, key: str) -> bool:
    """The stored row, its concepts and the mask files it names all come from the same save."""
    review = store.load(key)
    if review is None:
        return True
    if any(c.comment != review.note for c in review.concepts) or len(review.concepts) != N_CONCEPTS:
        return False
    expected = masks_for(review.note)
    return all(np.array_equal(store.load_mask(key, c.index, review.version), expected[c.index])
               for c in review.concepts)


def consistent_versions(store: ReviewStore, key: str) -> int:
    """Every saved version's row, concepts and mask files come from one save, revisions run 1..n without a
    gap; returns n. Raises AssertionError naming the first broken version."""
    versions = store.versions(key)
    assert [v.revision for v in versions] == list(range(len(versions), 0, -1)), "a version is missing"
    for v in versions:
        assert all(c.comment == v.note for c in v.concepts) and len(v.concepts) == N_CONCEPTS, v.revision
        expected = masks_for(v.note)
        for c in v.concepts:
            assert np.array_equal(store.load_mask(key, c.index, v.version), expected[c.index]), \
                f"version {v.revision} names masks of another save"
    return len(versions)


def write_and_check(data_dir: str | Path, key: str, name: str, n: int) -> int:
    """Save ``n`` reviews of ``key`` (notes ``name:i``), checking the store after each; returns mismatches."""
    store = ReviewStore(data_dir)
    mismatches, i = 0, 0
    while n < 0 or i < n:
        note = f"{name}:{i}"
        saved = store.save(key, PIXELS, masks_for(note), verdicts(note), reviewer=name, note=note)
        if n < 0:  # killed writers report each committed version as it commits
            print(f"committed {saved.revision} {note}", file=sys.stderr, flush=True)
        mismatches += not consistent(store, key)
        i += 1
    store.close()
    return mismatches


if __name__ == "__main__":
    data_dir, key, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(write_and_check(data_dir, key, name, n), flush=True)
