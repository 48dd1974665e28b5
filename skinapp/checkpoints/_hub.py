"""Files hosted on the Hugging Face Hub: found in, and downloaded into, the Hub cache by ``huggingface_hub``.

``huggingface_hub.hf_hub_download`` does the transfer: resumable (``.incomplete`` blobs), one shared cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``; on Spaces put ``HF_HOME`` on the persistent ``/data``), a lock per
file across processes, ``HF_ENDPOINT`` for a mirror. On top of it every file is checked against the
manifest's pinned size and SHA-256 before it is used; a file that fails is deleted from the cache.

The cache and the endpoint are read from the environment at each call (``huggingface_hub.constants`` reads
them once, at import).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants

from skinapp.checkpoints._errors import ChecksumMismatchError, DownloadError
from skinapp.checkpoints._hashing import sha256_file, write_stamp
from skinapp.checkpoints._manifest import Entry, FileSpec, offline_reason

log = logging.getLogger(__name__)

LIBRARY = "skinapp"


def hub_cache_dir() -> Path:
    """The Hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default (~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def endpoint_url() -> str:
    """The Hub's base URL downloads go to: ``HF_ENDPOINT``, else huggingface_hub's (https://huggingface.co)."""
    return _endpoint() or hf_constants.ENDPOINT


def cached_file(spec: FileSpec) -> Path | None:
    """The file in the Hub cache (its snapshot path), or None when it is not there. Opens no socket."""
    assert spec.hub is not None
    found = huggingface_hub.try_to_load_from_cache(spec.hub.repo_id, spec.hub.filename, cache_dir=hub_cache_dir(),
                                                   revision=spec.hub.revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def cached_location(entry: Entry) -> Path | None:
    """Where ``entry`` is in the Hub cache (the file, or the snapshot directory for multi-file entries), or None."""
    if not entry.on_hub:
        return None
    paths = [cached_file(spec) for spec in entry.files]
    if any(p is None for p in paths):
        return None
    return paths[0].parent if entry.is_directory else paths[0]


def _discard(path: Path) -> None:
    """Delete a cached file: the blob it points to, then the snapshot link."""
    for target in (path.resolve(), path):
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def _check(spec: FileSpec, path: Path) -> ChecksumMismatchError | None:
    """The error when ``path`` does not match the pinned size / SHA-256, else None (the digest is stamped)."""
    size = path.stat().st_size
    hint = f"{spec.source} served a different file; it was deleted and not used."
    if spec.size is not None and size != spec.size:
        return ChecksumMismatchError(path, f"{spec.size} bytes", f"{size} bytes", what="size", hint=hint)
    digest = sha256_file(path)
    if spec.sha256 is not None and digest != spec.sha256:
        return ChecksumMismatchError(path, spec.sha256, digest, hint=hint)
    write_stamp(path.resolve(), digest)
    if spec.sha256 is None:
        log.warning("%s downloaded with SHA-256 %s; the manifest pins no hash, so it is NOT verified", path, digest)
    return None


def fetch(spec: FileSpec, *, local_dir: Path | None = None, progress: bool = True) -> Path:
    """Download one Hub file (or find it in the cache) and check it against its pins; return its path.

    Args:
        spec: a manifest file with ``spec.hub`` set.
        local_dir: None: the Hub cache (what :func:`cached_location` finds); else a directory the file is
            placed in under ``spec.filename`` (huggingface_hub's ``local_dir`` mode, for ``download --dir``).
        progress: show huggingface_hub's progress bar.

    Raises:
        ChecksumMismatchError: the file served has the wrong size or SHA-256 (deleted, never used).
        DownloadError: the Hub could not be reached, the file is not there, or the disk cannot be written
            (huggingface_hub keeps an ``.incomplete`` file and resumes it next time).
    """
    hub = spec.hub
    assert hub is not None
    blocked = offline_reason(hub=True)
    if blocked:
        raise DownloadError(f"could not download {hub.describe()}: {blocked} forbids downloads from the Hugging "
                            "Face Hub")
    if local_dir is None:
        stale = cached_file(spec)
        if stale is not None and _check(spec, stale) is not None:
            log.warning("%s in the Hugging Face cache does not match its pins; downloading it again", stale)
            _discard(stale)
    previous = hf_constants.HF_HUB_DISABLE_PROGRESS_BARS
    try:
        if not progress:
            huggingface_hub.utils.disable_progress_bars()
        got = huggingface_hub.hf_hub_download(
            hub.repo_id, hub.filename, revision=hub.revision, endpoint=_endpoint(), library_name=LIBRARY,
            **({"local_dir": local_dir / ".hub"} if local_dir is not None else {"cache_dir": hub_cache_dir()}))
    except (huggingface_hub.errors.HfHubHTTPError, huggingface_hub.errors.EntryNotFoundError, OSError,
            ValueError) as err:  # ValueError: e.g. a malformed answer from a mirror
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(f"could not download {hub.describe()}: {type(err).__name__}: {first}") from err
    finally:
        if not progress and not previous:
            huggingface_hub.utils.enable_progress_bars()
    path = Path(got)
    if local_dir is not None:  # under the manifest's name (the Hub's may differ)
        final = local_dir / spec.filename
        os.replace(path, final)
        path = final
    problem = _check(spec, path)
    if problem is not None:
        _discard(path)
        raise problem
    return path
