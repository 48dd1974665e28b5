"""The review store under contention and faults: rows and mask files of one save always belong together."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from skinapp.review import store as store_module
from skinapp.review.store import ReviewStore
from tests.review_writer import (
    N_CONCEPTS,
    PIXELS,
    consistent,
    consistent_versions,
    masks_for,
    verdicts,
    write_and_check,
)

KEY = "c0ffee" * 6
WRITER = str(Path(__file__).with_name("review_writer.py"))


def _spawn(data: Path, name: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WRITER, str(data), KEY, name, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_concurrent_saves_from_threads_and_processes_never_mix_files(tmp_path):
    data = tmp_path / "data"
    ReviewStore(data).close()
    processes = [_spawn(data, f"proc{i}", 12) for i in range(2)]
    results: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        store = ReviewStore(data)
        while not stop.is_set():
            results.append(0 if consistent(store, KEY) else 1)

    threads = [threading.Thread(target=lambda i=i: results.append(write_and_check(data, KEY, f"thread{i}", 12)))
               for i in range(3)]
    watcher = threading.Thread(target=reader)
    for t in [*threads, watcher]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    outputs = [p.communicate(timeout=120) for p in processes]
    stop.set()
    watcher.join(timeout=30)
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    mismatches = sum(results) + sum(int(out.strip()) for out, _ in outputs)
    assert mismatches == 0, f"{mismatches} reads found a row pointing at another save's masks"
    final = ReviewStore(data).load(KEY)
    assert final.revision == 5 * 12 and consistent(ReviewStore(data), KEY)


def test_a_failure_inside_the_save_transaction_leaves_the_previous_review_whole(tmp_path):
    store = ReviewStore(tmp_path)
    first = store.save(KEY, PIXELS, masks_for("first"), verdicts("first"), reviewer="a", note="first")
    # fault injection at the database: inserting a concept that says "boom" aborts the statement, after the
    # review row has been updated and the old concepts deleted inside the same transaction
    store._connection().execute("CREATE TRIGGER boom BEFORE INSERT ON review_concepts WHEN NEW.comment = 'boom' "
                                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    with pytest.raises(sqlite3.IntegrityError, match="injected fault"):
        store.save(KEY, PIXELS, masks_for("boom"), verdicts("boom"), reviewer="b", note="boom")
    after = ReviewStore(tmp_path).load(KEY)
    assert (after.note, after.reviewer, after.revision, after.version) == ("first", "a", 1, first.version)
    assert [c.comment for c in after.concepts] == ["first"] * N_CONCEPTS
    assert consistent(store, KEY)
    folders = sorted(p.name for p in store.version_dir(KEY).iterdir())
    assert folders == [first.version], "the failed save's mask files were left behind"


def test_kill_9_during_saves_loses_no_committed_version(tmp_path):
    """Writers (a process killed with SIGKILL at random moments, and threads saving meanwhile) never lose a
    version they saw commit, and every version row names whole files of its own save."""
    data = tmp_path / "data"
    ReviewStore(data).close()
    delays = np.random.default_rng(0).uniform(0.8, 2.0, size=4)
    committed: dict[int, str] = {}
    for round_, delay in enumerate(delays):
        writer = _spawn(data, f"killed{round_}", -1)
        threads = [threading.Thread(target=write_and_check, args=(data, KEY, f"t{round_}.{i}", 2)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(float(delay))
        os.kill(writer.pid, signal.SIGKILL)
        _, err = writer.communicate(timeout=30)
        for t in threads:
            t.join(timeout=120)
        for line in err.splitlines():
            if line.startswith("committed "):
                _, revision, note = line.split()
                committed[int(revision)] = note
        store = ReviewStore(data)
        assert store._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert consistent(store, KEY)
        n = consistent_versions(store, KEY)
        versions = {v.revision: v.note for v in store.versions(KEY)}
        lost = {r: note for r, note in committed.items() if versions.get(r) != note}
        assert not lost, f"committed versions lost or overwritten: {lost}"
        assert n >= len(committed) + 4 * (round_ + 1)
        store.close()
    assert committed, "the killed writer never committed: raise the delays"


def test_resave_keeps_created_at_and_old_versions_go_once_stale(tmp_path, monkeypatch):
    store = ReviewStore(tmp_path)
    first = store.save(KEY, PIXELS, masks_for("a"), verdicts("a"), note="a")
    orphan = store.version_dir(KEY, "orphan-of-a-killed-save")
    orphan.mkdir()
    second = store.save(KEY, PIXELS, masks_for("b"), verdicts("b"), note="b")
    assert (second.revision, second.created_at) == (2, first.created_at) and second.updated_at >= first.updated_at
    assert second.version != first.version
    kept = {p.name for p in store.version_dir(KEY).iterdir()}
    assert kept == {first.version, second.version, orphan.name}, "young folders may belong to a writer in flight"
    monkeypatch.setattr(store_module, "STALE_VERSION_S", 0.0)
    third = store.save(KEY, PIXELS, masks_for("c"), verdicts("c"), note="c")
    # the stale orphan goes; every committed version keeps its masks (versions are never overwritten)
    assert {p.name for p in store.version_dir(KEY).iterdir()} == {first.version, second.version, third.version}
    assert np.array_equal(store.load_mask(KEY, 1), masks_for("c")[1])
    assert np.array_equal(store.load_mask(KEY, 1, first.version), masks_for("a")[1])
    assert consistent_versions(store, KEY) == 3


def test_a_store_written_before_versions_still_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "reviews.sqlite3")
    db.executescript(store_module._SCHEMA.replace(",\n    version     TEXT NOT NULL DEFAULT ''", ""))
    db.execute("INSERT INTO reviews (image_key, width, height, created_at, updated_at) VALUES (?, 32, 24, 1, 1)",
               (KEY,))
    db.execute("INSERT INTO review_concepts (image_key, idx, phrase, score, box, decision) "
               "VALUES (?, 0, 'lesion', 0.5, '[0, 0, 1, 1]', 'accept')", (KEY,))
    db.commit()
    db.close()
    legacy = tmp_path / "masks" / KEY / "0.png"
    legacy.parent.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(masks_for("old")[0].astype(np.uint8) * 255).save(legacy)
    store = ReviewStore(tmp_path)
    assert store.load(KEY).version == ""
    assert np.array_equal(store.load_mask(KEY, 0), masks_for("old")[0])
