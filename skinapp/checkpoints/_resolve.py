"""Find, download and verify checkpoints named in the manifest.

Resolution order for :func:`resolve`:
    1. an explicit path: the ``path`` argument, else the ``SKINAPP_<NAME>`` environment variable
       (an explicit path that does not hold the checkpoint is an error, never silently skipped);
    2. the checkpoint directory (:func:`checkpoint_dir`);
    3. for files hosted on the Hugging Face Hub, the Hub cache (``HF_HOME``; see :mod:`._hub`);
    4. a download, only with ``download=True`` and without ``SKINAPP_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``: Hub
       files with ``huggingface_hub`` into the Hub cache, files hosted elsewhere (SAM) into the checkpoint
       directory;
    5. otherwise :class:`CheckpointMissing`, saying what is missing, where it was looked for and how to get it.

A file found on disk is checked against its pinned size and SHA-256 before :func:`resolve` returns it
(once per version of the file: the digest is cached by size, mtime, ctime and inode, see
:func:`~skinapp.checkpoints._hashing.cached_sha256`). A mismatch is refused with
:class:`ChecksumMismatchError`, or, for a file in the checkpoint directory with ``download=True``,
downloaded again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from skinapp.checkpoints import _hub, _reach
from skinapp.checkpoints._errors import CheckpointMissing, ChecksumMismatchError, DownloadError, UnreachableError
from skinapp.checkpoints._hashing import FileState, cached_sha256, file_state
from skinapp.checkpoints._http import fetch
from skinapp.checkpoints._manifest import Entry, FileSpec, checkpoint_dir, get_entry, offline, offline_reason

#: Sources :func:`resolve` may download again when the copy there is bad.
_MANAGED = ("checkpoint dir", "Hugging Face cache")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStatus:
    spec: FileSpec
    path: Path
    state: FileState
    sha256: str | None  # the digest computed or remembered, None when not computed


@dataclass(frozen=True)
class EntryStatus:
    """Where an entry was looked for and the state of each of its files."""

    entry: Entry
    location: Path
    source: str  # "argument", "$SKINAPP_<NAME>", "checkpoint dir" or "Hugging Face cache"
    files: tuple[FileStatus, ...]

    @property
    def present(self) -> bool:
        return all(f.state is not FileState.MISSING for f in self.files)

    @property
    def verified(self) -> bool:
        return all(f.state is FileState.VERIFIED for f in self.files)

    @property
    def mismatched(self) -> bool:
        return any(f.state is FileState.MISMATCH for f in self.files)

    @property
    def missing_files(self) -> list[str]:
        return [f.spec.filename for f in self.files if f.state is FileState.MISSING]


def resolve(name: str, path: str | os.PathLike | None = None, download: bool = False,
            verify: bool = True) -> Path:
    """Path of checkpoint ``name`` (the directory for multi-file entries); see the module docstring.

    Args:
        name: manifest name.
        path: explicit location (overrides ``SKINAPP_<NAME>`` and the checkpoint directory).
        download: fetch it into the checkpoint directory when absent (or when the copy there is bad).
        verify: check every pinned file's size and SHA-256 first (cached per file version). Only tools
            that report on files (``status``) pass False.

    Raises:
        CheckpointMissing: not found and not downloaded, or the download failed (the message says why
            and how to get it; a failed download keeps its ``.part`` file for resuming).
        ManifestError: ``name`` is not in the manifest.
        ChecksumMismatchError: a file on disk does not match its pinned size / SHA-256 (refused, left in
            place), or a downloaded file failed its check (deleted).
    """
    entry = get_entry(name)
    source, location = _candidate(entry, path)
    missing = _missing(entry, location)
    if not missing:
        bad = _first_mismatch(entry, location, source) if verify else None
        if bad is None:
            return location
        if source in _MANAGED and download and entry.downloadable and not offline():
            log.warning("%s; downloading it again", bad)
            return _download(entry, None)
        raise bad
    looked = [f"{source}: {location} ({_describe_missing(entry, missing)})"]
    if source != "checkpoint dir":
        raise CheckpointMissing(_missing_message(entry, looked, "The explicit path was used, so nothing else "
                                                 "was tried."), entry.name, looked,
                                explicit=_explicit_reason(entry, source, location, missing))
    looked.insert(0, f"${entry.env_var}: not set")
    if entry.on_hub:
        looked.append(f"Hugging Face cache: {_hub.hub_cache_dir()} (not there)")
    if download and entry.downloadable and not offline():
        try:
            return _download(entry, None)
        except DownloadError as err:
            raise CheckpointMissing(_missing_message(entry, looked, f"Downloading failed: {err}"), entry.name,
                                    looked) from err
    raise CheckpointMissing(_missing_message(entry, looked, _download_note(entry, download)), entry.name, looked)


def download(name: str, dest_dir: str | os.PathLike | None = None, *, retries: int = 3, retry_wait_s: float = 1.0,
             progress: bool = True) -> Path:
    """Download checkpoint ``name``; return its path.

    Where: with ``dest_dir`` every file goes there (under its manifest name); without, Hub files go to the
    Hugging Face cache and other files to :func:`checkpoint_dir`. Files already present with the pinned
    SHA-256 are kept. Every downloaded file is SHA-256 checked
    against the manifest; a file with no pinned hash is downloaded, its hash logged, and it stays
    unverified.

    Raises:
        CheckpointMissing: the entry has no URL (one of ours: train it) or ``SKINAPP_OFFLINE=1``.
        ChecksumMismatchError: a downloaded file failed its check (it is deleted).
        DownloadError: the transfer failed; a ``.part`` file is kept for resuming.
    """
    entry = get_entry(name)
    base = Path(dest_dir).expanduser() if dest_dir is not None else None
    if not entry.downloadable or offline():
        looked = [f"download into {entry.location(base or checkpoint_dir())}"]
        raise CheckpointMissing(_missing_message(entry, looked, _download_note(entry, True)), entry.name, looked)
    return _download(entry, base, retries=retries, retry_wait_s=retry_wait_s, progress=progress)


def verify(name: str, path: str | os.PathLike | None = None) -> bool:
    """Recompute the SHA-256 of checkpoint ``name``'s files; True only when every file matches a pinned hash.

    Mismatches are logged as errors; files with no pinned hash are logged with their digest and make the
    result False (they cannot be verified).

    Raises:
        CheckpointMissing: a file is not present (at ``path``, ``$SKINAPP_<NAME>`` or the checkpoint dir).
    """
    st = status(name, path=path, recompute=True)
    if not st.present:
        looked = [f"{st.source}: {st.location} ({_describe_missing(st.entry, st.missing_files)})"]
        raise CheckpointMissing(_missing_message(st.entry, looked, None), name, looked)
    for f in st.files:
        if f.state is FileState.MISMATCH:
            log.error("%s: SHA-256 mismatch: expected %s, got %s", f.path, f.spec.sha256, f.sha256)
        elif f.state is FileState.UNPINNED:
            log.warning("%s: SHA-256 %s; the manifest pins no hash, so it is NOT verified", f.path, f.sha256)
    return st.verified


def status(name: str, path: str | os.PathLike | None = None, recompute: bool = False) -> EntryStatus:
    """State of each file of ``name`` where :func:`resolve` would look first (no download).

    With ``recompute=False`` no file is hashed: a file is "verified" only through a still-valid stamp
    left by a download or :func:`verify`.
    """
    entry = get_entry(name)
    source, location = _candidate(entry, path)
    files = []
    for spec, file_path in _files_at(entry, location):
        state, digest = file_state(file_path, spec.sha256, recompute)
        files.append(FileStatus(spec, file_path, state, digest))
    return EntryStatus(entry, location, source, tuple(files))


def _download(entry: Entry, base: Path | None, *, retries: int = 3, retry_wait_s: float = 1.0,
              progress: bool = True) -> Path:
    """Fetch every file of ``entry``; ``base`` None: Hub files to the Hub cache, others to the checkpoint dir.

    Each file's servers are probed first (:mod:`._reach`); a file none of whose servers can be reached
    raises :class:`UnreachableError` at once, without retries."""
    with _reach.remembered():  # each server probed once for all the entry's files
        return _download_files(entry, base, retries=retries, retry_wait_s=retry_wait_s, progress=progress)


def _download_files(entry: Entry, base: Path | None, *, retries: int, retry_wait_s: float, progress: bool) -> Path:
    target = entry.location(base if base is not None else checkpoint_dir())
    if entry.on_hub and base is None and entry.is_directory:  # one snapshot directory in the Hub cache
        for spec in entry.files:
            _sources(spec)
        paths = [_hub.fetch(spec, progress=progress) for spec in entry.files]
        return paths[0].parent
    if base is not None and entry.is_directory:
        target.mkdir(parents=True, exist_ok=True)
    location = target
    for spec, file_path in _files_at(entry, target):
        if file_path.is_file() and _already_good(spec, file_path):
            log.info("%s already present%s", file_path, " and verified" if spec.sha256 else "")
            continue
        use_hub, urls = _sources(spec)  # raises at once when no server answers
        if use_hub:
            log.info("downloading %s", spec.hub.describe())
            try:
                got = _hub.fetch(spec, local_dir=file_path.parent if base is not None else None, progress=progress)
                location = got if not entry.is_directory else location
                continue
            except DownloadError as err:
                if not urls:
                    raise
                log.warning("%s; trying %s", err, urls[0])
        log.info("downloading %s -> %s", urls[0], file_path)
        digest = fetch(urls, file_path, size=spec.size, sha256=spec.sha256, retries=retries,
                       retry_wait_s=retry_wait_s, progress=progress)
        if spec.sha256 is None:
            log.warning("%s downloaded with SHA-256 %s; the manifest pins no hash, so it is NOT verified",
                        file_path, digest)
    return location


def _sources(spec: FileSpec) -> tuple[bool, tuple[str, ...]]:
    """(fetch from the Hub?, the URLs worth trying) for ``spec``: sources whose server cannot be reached are
    dropped. The Hub is not probed when offline settings forbid it (its fetch says so).

    Raises:
        UnreachableError: no source of ``spec`` can be reached.
    """
    hub_url = _hub.endpoint_url() if spec.hub is not None and not offline_reason(hub=True) else None
    down = _reach.unreachable([url for url in (hub_url, *spec.urls) if url])
    urls = tuple(url for url in spec.urls if _reach.host_of(url) not in down)
    use_hub = spec.hub is not None and (hub_url is None or _reach.host_of(hub_url) not in down)
    if not use_hub and not urls:
        raise UnreachableError(spec.filename, down)
    return use_hub, urls


def _already_good(spec: FileSpec, path: Path) -> bool:
    """True for a present file matching its pinned hash (or any present file when none is pinned)."""
    if spec.sha256 is None:
        return True
    if spec.size is not None and path.stat().st_size != spec.size:
        log.warning("%s has %d bytes, not the pinned %d; downloading it again", path, path.stat().st_size, spec.size)
        return False
    digest = cached_sha256(path)
    if digest == spec.sha256:
        return True
    log.warning("%s does not match its pinned SHA-256 (got %s); downloading it again", path, digest)
    return False


def _first_mismatch(entry: Entry, location: Path, source: str) -> ChecksumMismatchError | None:
    """The error for the first pinned file at ``location`` whose size or SHA-256 is wrong, else None.

    The size is compared first (a truncated file is refused without reading it); unpinned files
    (our trained checkpoints) are skipped: their JSON sidecars carry their SHA-256.
    """
    for spec, file_path in _files_at(entry, location):
        if spec.sha256 is None:
            continue
        size = file_path.stat().st_size
        if spec.size is not None and size != spec.size:
            return ChecksumMismatchError(file_path, f"{spec.size} bytes", f"{size} bytes", what="size",
                                         hint=_refusal_hint(entry, source))
        digest = cached_sha256(file_path)
        if digest != spec.sha256:
            return ChecksumMismatchError(file_path, spec.sha256, digest, hint=_refusal_hint(entry, source))
    return None


def _refusal_hint(entry: Entry, source: str) -> str:
    text = (f"Checkpoint {entry.name!r} ({source}) was refused before loading: the file is corrupt, truncated, "
            "or not the one the checkpoint manifest pins. ")
    if entry.downloadable:
        where = "the Hugging Face cache" if entry.on_hub else "the checkpoint directory"
        text += (f"Get it again with: python -m skinapp.checkpoints download {entry.name} (replaces a bad copy in "
                 f"{where}), or set {entry.env_var} to a good copy.")
    else:
        text += f"Set {entry.env_var} to a good copy."
    return text + " Weights of your own need a manifest that pins them (SKINAPP_MANIFEST)."


def _candidate(entry: Entry, path: str | os.PathLike | None) -> tuple[str, Path]:
    """Where to look first: the explicit path (argument, else env var) or the checkpoint directory."""
    if path is not None:
        source, explicit = "argument", Path(path)
    elif os.environ.get(entry.env_var):
        source, explicit = f"${entry.env_var}", Path(os.environ[entry.env_var])
    else:
        location = entry.location(checkpoint_dir())
        if not _missing(entry, location):
            return "checkpoint dir", location
        cached = _hub.cached_location(entry)
        return ("Hugging Face cache", cached) if cached is not None else ("checkpoint dir", location)
    explicit = explicit.expanduser()
    if not entry.is_directory and explicit.is_dir():
        explicit = explicit / entry.files[0].filename
    return source, explicit


def _files_at(entry: Entry, location: Path) -> list[tuple[FileSpec, Path]]:
    if entry.is_directory:
        return [(spec, location / spec.filename) for spec in entry.files]
    return [(entry.files[0], location)]


def _missing(entry: Entry, location: Path) -> list[str]:
    return [spec.filename for spec, p in _files_at(entry, location) if not p.is_file()]


def _explicit_reason(entry: Entry, source: str, location: Path, missing: list[str]) -> str:
    """One line: the explicit path that does not hold ``entry`` (naming its variable) and what to do."""
    what = f"{location}: {_describe_missing(entry, missing)}"
    if source.startswith("$"):
        return (f"{entry.env_var}={os.environ.get(entry.env_var, '')} does not hold checkpoint {entry.name!r} "
                f"({what}). Point {entry.env_var} at the checkpoint, or unset it to use the checkpoint directory.")
    return f"The path given for checkpoint {entry.name!r} does not hold it ({what})."


def _describe_missing(entry: Entry, missing: list[str]) -> str:
    if not entry.is_directory:
        return "not found"
    return f"missing {', '.join(missing)}"


def _download_note(entry: Entry, download_requested: bool) -> str:
    if not entry.downloadable:
        return "It has no download URL: it is one of our own trained checkpoints."
    if offline():
        return "Downloading is disabled by SKINAPP_OFFLINE=1."
    if not download_requested:
        return "Downloading was not requested (download=False)."
    return ""


def _missing_message(entry: Entry, looked: list[str], note: str | None) -> str:
    what = entry.directory + "/" if entry.is_directory else entry.files[0].filename
    lines = [f"Checkpoint {entry.name!r} ({what}) is missing: {entry.description}", "Looked in:"]
    lines += [f"  - {item}" for item in looked]
    if note:
        lines.append(note)
    lines.append("How to get it:")
    if entry.downloadable:
        target = entry.location(checkpoint_dir())
        unset = "unset SKINAPP_OFFLINE, then " if offline() else ""  # else the command refuses as this did
        lines.append(f"  - {unset}python -m skinapp.checkpoints download {entry.name}")
        lines.append(f"  - or skinapp.checkpoints.resolve({entry.name!r}, download=True)")
        for spec in entry.files:
            dest = target / spec.filename if entry.is_directory else target
            lines.append(f"  - or fetch {spec.source} to {dest} (SHA-256 {spec.sha256 or 'not pinned'})")
    elif entry.how_to_get:
        lines.append(f"  - {entry.how_to_get}")
    lines.append(f"  - or set {entry.env_var}=/path/to/{what}")
    return "\n".join(lines)
