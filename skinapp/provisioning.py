"""Getting the real weights: download every missing official checkpoint, and swap the loaded models in.

Plain functions the app's start-up (``python app.py --download``, ``SKINAPP_DOWNLOAD=1``, Hugging Face
Spaces), the start banner's "Download the real models" button and the tests all call::

    reason = provision("vit_b")                     # None when every official checkpoint is there now
    message = hot_swap(analyzer, sam_variant="vit_b", progress=gr.Progress())   # download, load, swap

Downloads go through :mod:`skinapp.checkpoints` (``huggingface_hub`` for Hub files into ``HF_HOME``, our
resumable downloader for SAM's URLs into the checkpoint directory), every file SHA-256 checked. When a
download cannot work the reason is one line: offline settings, a read-only disk, or the error met.
Our own trained checkpoints (fusion classifier, fine-tuned CLIP) have no published weights: nothing here
fetches them, so the diagnosis stays untrained until you train one (the banner keeps saying so).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _reach
from skinapp.checkpoints._hub import hub_cache_dir
from skinapp.models import CLIP_CHECKPOINTS, CONCEPT_CHECKPOINTS, GLOBAL_CHECKPOINT, load_models

log = logging.getLogger(__name__)

#: Truthy values of SKINAPP_DOWNLOAD.
_TRUE = ("1", "true", "yes", "on")
ProgressFn = Callable[..., Any]
_swap_lock = threading.Lock()


def on_spaces() -> bool:
    """True on Hugging Face Spaces: it sets ``SPACE_ID`` (documented helper variable) and ``SYSTEM=spaces``."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SYSTEM") == "spaces"


def download_requested(flag: bool = False) -> bool:
    """Download at start? ``--download``, ``SKINAPP_DOWNLOAD=1``, or running on Hugging Face Spaces."""
    return flag or os.environ.get("SKINAPP_DOWNLOAD", "").strip().lower() in _TRUE or on_spaces()


def official_checkpoints(sam_variant: str = "vit_b") -> list[str]:
    """Manifest names of the official checkpoints the app serves at full strength."""
    return [f"sam_{sam_variant}", *CONCEPT_CHECKPOINTS, GLOBAL_CHECKPOINT, CLIP_CHECKPOINTS["pretrained"]]


def missing(sam_variant: str = "vit_b") -> list[str]:
    """The official checkpoints not present anywhere :func:`skinapp.checkpoints.resolve` looks (hashes nothing)."""
    return [name for name in official_checkpoints(sam_variant) if not ckpt.status(name).present]


def download_size(names: list[str]) -> int:
    """Bytes the manifest lists for ``names``."""
    return sum(ckpt.get_entry(name).size or 0 for name in names)


def _writable(directory: Path) -> str | None:
    """None when files can be created under ``directory`` (created if needed), else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".skinapp-write-test-"):
            pass
    except OSError as err:
        return f"cannot write to {directory} ({err.strerror or err}; a read-only disk?)"
    return None


def blocker(names: list[str]) -> str | None:
    """Why downloading ``names`` cannot work here (offline settings, a read-only target), or None. No network."""
    reason = ckpt.offline_reason()
    if reason:
        return f"{reason} forbids downloads"
    entries = [ckpt.get_entry(name) for name in names]
    hub_only = [e.name for e in entries if any(f.hub is not None and not f.urls for f in e.files)]
    reason = ckpt.offline_reason(hub=True)
    if reason and hub_only:
        return f"{reason} forbids downloads from the Hugging Face Hub (needed for {', '.join(hub_only)})"
    targets = {hub_cache_dir() for e in entries if any(f.hub for f in e.files)}
    targets |= {ckpt.checkpoint_dir() for e in entries if any(f.hub is None for f in e.files)}
    for target in sorted(targets):
        problem = _writable(target)
        if problem:
            return problem
    return None


@dataclass
class Provisioned:
    """What :func:`download_missing` did: names downloaded, ``failed`` {name: one-line reason}, and
    ``unreachable`` {host: why} for the download servers that could not be reached at all."""

    downloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    cut_off: list[str] = field(default_factory=list)  # names that failed because no server answered

    @property
    def no_internet(self) -> bool:
        """True when nothing was downloaded and every failure was a server that could not be reached."""
        return bool(self.failed) and not self.downloaded and set(self.failed) == set(self.cut_off)

    @property
    def reason(self) -> str | None:
        """One line saying what failed, a clause for the log and the start banner, or None."""
        if not self.failed:
            return None
        if self.no_internet:
            return f"cannot reach the download servers ({', '.join(self.unreachable)}): no internet here?"
        return "; ".join(f"{name}: {why}" for name, why in self.failed.items())

    @property
    def page_message(self) -> str | None:
        """The whole message for the page when something failed (the app stays in demo mode), or None."""
        if not self.failed:
            return None
        if self.no_internet:
            return (f"Cannot reach the download servers ({', '.join(self.unreachable)}): no internet here? "
                    "The app stays in demo mode.")
        # one full stop: some reasons are whole sentences already ("... fetch it again.")
        return f"Could not download the real models: {self.reason.rstrip('.')}. The app stays in demo mode."


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if line.startswith("Downloading failed:"):
            return line.removeprefix("Downloading failed:").strip()
    return text.splitlines()[0] if text else type(err).__name__


def download_missing(sam_variant: str = "vit_b", progress: ProgressFn | None = None) -> Provisioned:
    """Download every missing official checkpoint (progress bars in the console; ``progress(fraction, desc=)``
    per checkpoint for the UI). Never raises for a failed download: see :attr:`Provisioned.failed`."""
    todo = missing(sam_variant)
    done = Provisioned()
    if not todo:
        return done
    why_not = blocker(todo)
    if why_not:
        done.failed = dict.fromkeys(todo, why_not)
        return done
    with _reach.remembered():  # each download server probed once for all the checkpoints
        _download_each(todo, done, progress)
    return done


def _download_each(todo: list[str], done: Provisioned, progress: ProgressFn | None) -> None:
    """Resolve each of ``todo`` with download=True, recording into ``done``; one log line per failure."""
    total = max(1, download_size(todo))
    fetched = 0
    for name in todo:
        size = ckpt.get_entry(name).size or 0
        if progress is not None:
            progress(fetched / total, desc=f"Downloading {name} ({size / 2**20:.0f} MiB)")
        try:
            ckpt.resolve(name, download=True)
            done.downloaded.append(name)
        except (ckpt.CheckpointMissing, ckpt.ChecksumMismatchError, ckpt.DownloadError, OSError) as err:
            cause = err if isinstance(err, ckpt.UnreachableError) else err.__cause__
            if isinstance(cause, ckpt.UnreachableError):
                done.failed[name] = cause.short
                done.cut_off.append(name)
                for host, why in cause.hosts.items():
                    done.unreachable.setdefault(host, why)
            else:
                done.failed[name] = _one_line(err)
            log.warning("%s: %s", name, done.failed[name])
        fetched += size
    if progress is not None:
        progress(1.0, desc="Downloads finished")


def provision(sam_variant: str = "vit_b", progress: ProgressFn | None = None) -> str | None:
    """Download what is missing before the models load; log one line. Return None on success, else why not."""
    return _provision(sam_variant, progress).reason


def _provision(sam_variant: str, progress: ProgressFn | None) -> Provisioned:
    todo = missing(sam_variant)
    if not todo:
        log.info("Every official checkpoint is present; nothing to download")
        return Provisioned()
    log.info("Downloading %d official checkpoint(s), %.0f MiB: %s", len(todo), download_size(todo) / 2**20,
             ", ".join(todo))
    result = download_missing(sam_variant, progress)
    if result.reason:
        log.error("Could not download the real models, starting in demo mode: %s", result.reason)
    return result


def hot_swap(analyzer: Any, *, sam_variant: str = "vit_b", profile: str = "auto", warmup: bool = True,
             progress: ProgressFn | None = None) -> str:
    """Download what is missing, load a new model set and swap it into ``analyzer`` without a restart.

    Requests in flight finish on the old models (:meth:`skinapp.pipeline.Analyzer.swap_models`). One swap at
    a time; a click that waited for another's swap does not load again.

    Returns:
        The message for the page: what was loaded, or exactly why nothing could be.
    """
    before = analyzer.models
    with _swap_lock:
        if analyzer.models is not before:
            return f"The real models were just loaded by another request (mode: {analyzer.mode})."
        result = _provision(sam_variant, progress)
        if result.page_message:
            return result.page_message
        if progress is not None:
            progress(0.95, desc="Loading the models")
        try:
            models = load_models(profile, device=analyzer.device, sam_variant=sam_variant,
                                 cache_size=analyzer.cache_size)
            if warmup:
                type(analyzer)(models, analyzer.cache_size).warm_up()  # first-call costs off the live analyzer
        except (ckpt.CheckpointMissing, ckpt.ChecksumMismatchError, ckpt.UnsafeCheckpointError, OSError,
                RuntimeError, ValueError) as err:
            log.error("Could not load the downloaded models: %s", _one_line(err))
            return f"Could not load the downloaded models: {_one_line(err)}. The app stays in demo mode."
        analyzer.swap_models(models)
    if models.mode == "full":
        return "The real models are loaded: full mode."
    left = [r for items in models.reasons.values() for r in items]
    return "The official models are loaded; still untrained: " + " ".join(left)
