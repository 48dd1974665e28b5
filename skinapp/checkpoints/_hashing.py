"""SHA-256 of checkpoint files, and the small stamps that remember a verification.

A stamp ``<file>.sha256`` (JSON) records the digest of a file whose hash was computed (after a download,
``verify`` or the check before a first load) together with the file's identity: size, mtime, ctime and
inode. A stamp is trusted only while all four are unchanged, so rewriting, truncating or swapping the file
(even with its mtime set back by ``touch -r``, which changes the ctime) invalidates it; ``verify`` always
recomputes. :func:`cached_sha256` adds an in-process cache with the same key, for read-only directories.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: stat fields that identify one version of a file: a stamp or cache entry is valid only while all match.
_IDENTITY = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")
_memory: dict[str, tuple[tuple[int, ...], str]] = {}


class FileState(str, enum.Enum):
    """Verification state of one checkpoint file."""

    MISSING = "missing"
    NOT_CHECKED = "present, not checked"
    VERIFIED = "verified"
    UNPINNED = "present, UNVERIFIED (no pinned SHA-256)"
    MISMATCH = "SHA-256 MISMATCH"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stamp_path(path: Path) -> Path:
    """``<file>.sha256`` beside the file's content (a link, e.g. a Hugging Face cache snapshot, is followed)."""
    real = Path(path).resolve()
    return real.with_name(real.name + ".sha256")


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return tuple(int(getattr(st, field)) for field in _IDENTITY)


def write_stamp(path: Path, digest: str) -> None:
    """Record ``digest`` for ``path`` (best effort: an unwritable directory only logs a warning)."""
    st = path.stat()
    _memory[str(path.resolve())] = (_identity(st), digest)
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
              "ino": st.st_ino}
    target = stamp_path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, target)
    except OSError as err:
        log.warning("could not write verification stamp %s: %s", target, err)


def read_stamp(path: Path) -> str | None:
    """The recorded digest of ``path`` if its stamp is still valid (same size, mtime, ctime, inode), else None."""
    try:
        record = json.loads(stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    recorded = tuple(record.get(key) for key in ("size", "mtime_ns", "ctime_ns", "ino"))
    if recorded != _identity(st):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


def cached_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of ``path``, computed at most once per version of the file.

    Looks in an in-process cache, then in the file's stamp (both keyed by size, mtime, ctime and inode),
    and hashes the file only when neither matches, leaving a stamp for the next start.
    """
    path = Path(path)
    st = path.stat()
    hit = _memory.get(str(path.resolve()))
    if hit is not None and hit[0] == _identity(st):
        return hit[1]
    digest = read_stamp(path)
    if digest is None:
        digest = sha256_file(path)
        if _identity(path.stat()) == _identity(st):  # not changed while it was read
            write_stamp(path, digest)
    else:
        _memory[str(path.resolve())] = (_identity(st), digest)
    return digest


def file_state(path: Path, expected: str | None, recompute: bool) -> tuple[FileState, str | None]:
    """State of ``path`` against the ``expected`` SHA-256, with the digest used (None if not computed).

    With ``recompute=False`` only a valid stamp is consulted (no hashing), so big files are cheap to list.
    """
    if not path.is_file():
        return FileState.MISSING, None
    digest = sha256_file(path) if recompute else read_stamp(path)
    if recompute and digest is not None:
        write_stamp(path, digest)
    if expected is None:
        return FileState.UNPINNED, digest
    if digest is None:
        return FileState.NOT_CHECKED, None
    return (FileState.VERIFIED if digest == expected else FileState.MISMATCH), digest
