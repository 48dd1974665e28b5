"""The setup of a batch run (``run.json`` in its output folder), so that a resumed run never mixes two setups.

``run.json`` holds what decides the results: the class names, each analysis model's weights (SHA-256 of its
file, or ``untrained``), the CLIP model used for the phrases (same form), the concept prompts and the Explain
phrases. The requested ``--profile`` and the device are written too, for the record, but not compared: the
weights say which models ran. A run into a folder that holds progress records compares its setup with
``run.json`` and refuses when they differ, or when there is no ``run.json`` (results of an unknown setup);
``--restart`` (:func:`discard_outputs`) removes what the batch wrote and starts over.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skinapp.checkpoints import cached_sha256
from skinapp.concepts.prompts import normalise_prompts
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: Fields of run.json compared on resume, with the words used when one differs.
COMPARED = {"class_names": "class names", "models": "analysis model weights", "clip": "CLIP weights",
            "prompts": "concept prompts", "phrases": "Explain phrases"}
#: Files and folders the batch writes (``--restart`` removes only these).
OUTPUT_FILES = ("predictions.csv", "concepts.json", "errors.csv", "phrases.csv", RUN_FILE)
PROGRESS_GLOB = "progress.rank*.jsonl"
IMAGE_FOLDERS = ("overlays", "heatmaps")


class SetupMismatchError(ValueError):
    """The output folder holds results of another setup (or of an unknown one)."""


def _weights_file(source: str) -> Path | None:
    """The file or folder a WeightsInfo source names: the whole text, else the text before a " (" note."""
    candidates = [source] + [source[:i] for i in range(len(source)) if source.startswith(" (", i)]
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


def weights_identity(weights: WeightsInfo) -> str:
    """``sha256:<hex>`` of the weights' file (a folder: of its files' names and digests), or ``untrained``.

    Trained weights whose file cannot be found are identified by their source text (``source:<text>``).
    Hashes are cached per file version (:func:`skinapp.checkpoints.cached_sha256`).
    """
    if not weights.trained:
        return "untrained"
    path = _weights_file(weights.source)
    if path is None:
        return f"source:{weights.source}"
    if path.is_file():
        return f"sha256:{cached_sha256(path)}"
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and not p.name.endswith((".sha256", ".tmp"))):  # not our own hash stamps
        digest.update(f"{file.relative_to(path).as_posix()} {cached_sha256(file)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def describe_setup(analyzer: Any, profile: str, prompts: str | None, phrases: Sequence[str] | None) -> dict:
    """The run's setup (the content of run.json) from the Analyzer that will analyse the photos."""
    clip = None
    if phrases:
        choice = analyzer.clip_choices[0]
        clip = {"choice": choice, "weights": weights_identity(analyzer.clips[choice].weights)}
    used = normalise_prompts(prompts if prompts not in (None, "") else analyzer.default_prompts)
    return {"class_names": list(analyzer.class_names),
            "models": {w.name: weights_identity(w) for w in analyzer.analysis_weights},
            "clip": clip, "prompts": list(used), "phrases": list(phrases or []),
            "profile": profile, "device": str(analyzer.device)}


def _has_progress(out: Path) -> bool:
    return any(p.stat().st_size > 0 for p in out.glob(PROGRESS_GLOB))


def check_setup(out: Path, setup: dict) -> None:
    """Refuse to add this setup's results to a folder holding another setup's (read-only; any rank may call it).

    Raises:
        SetupMismatchError: progress records without run.json, or a run.json whose compared fields differ;
            the message says what differs and that ``--restart`` or another ``--out`` resolves it.
    """
    run_file = out / RUN_FILE
    fix = f"--restart discards the results in {out} and starts over; another --out keeps both"
    if not run_file.is_file():
        if out.is_dir() and _has_progress(out):
            raise SetupMismatchError(f"{out} holds results but no {RUN_FILE}, so their setup is unknown; {fix}.")
        return
    try:
        recorded = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SetupMismatchError(f"{run_file} cannot be read ({exc}); {fix}.") from exc
    differ = [words for key, words in COMPARED.items() if recorded.get(key) != setup.get(key)]
    if differ:
        raise SetupMismatchError(f"{out} holds results of another setup (differs: {', '.join(differ)}); {fix}.")


def write_setup(out: Path, setup: dict) -> None:
    """Write run.json atomically (a temporary file renamed), so another rank never reads half of it."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(setup, indent=1))
    os.replace(tmp, out / RUN_FILE)


def discard_outputs(out: Path) -> int:
    """Remove what the batch wrote in ``out`` (progress records, summaries, run.json, overlay / heatmap PNGs);
    other files stay. Returns how many files were removed."""
    if not out.is_dir():
        return 0
    doomed = [*out.glob(PROGRESS_GLOB), *(out / name for name in OUTPUT_FILES)]
    doomed += [p for folder in IMAGE_FOLDERS for p in (out / folder).glob("*.png")]
    removed = 0
    for path in doomed:
        if path.is_file():
            path.unlink()
            removed += 1
    for folder in IMAGE_FOLDERS:
        if (out / folder).is_dir() and not any((out / folder).iterdir()):
            (out / folder).rmdir()
    log.info("--restart: removed %d files of the earlier run", removed)
    return removed
