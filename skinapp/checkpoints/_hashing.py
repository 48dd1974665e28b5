"""SHA-256 of checkpoint files, and the small stamps that remember a verification.

A stamp ``<file>.sha256`` (JSON) records the digest, size and mtime of a file whose hash was computed
(after a download or ``verify``). ``list`` trusts a stamp only while the file's size and mtime are
unchanged; ``verify`` always recomputes.
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
    return path.with_name(path.name + ".sha256")


def write_stamp(path: Path, digest: str) -> None:
    """Record ``digest`` for ``path`` (best effort: an unwritable directory only logs a warning)."""
    st = path.stat()
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target = stamp_path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, target)
    except OSError as err:
        log.warning("could not write verification stamp %s: %s", target, err)


def read_stamp(path: Path) -> str | None:
    """The recorded digest of ``path`` if its stamp is still valid (same size and mtime), else None."""
    try:
        record = json.loads(stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


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
