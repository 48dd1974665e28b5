"""Checkpoint manager: one manifest (``checkpoints/manifest.json``) of every checkpoint the app uses,
resolution of where each one is, resumable SHA-256-checked downloads, and safe loading.

Typical use::

    from skinapp import checkpoints
    path = checkpoints.resolve("sam_vit_b", download=True)        # Path to sam_vit_b_01ec64.pth
    state = checkpoints.load_state_dict(path, verify=True)         # dict of tensors, checked first
    bert_dir = checkpoints.resolve("bert_base_uncased")            # a directory (multi-file entry)

Resolution: explicit ``path`` / ``SKINAPP_<NAME>`` -> :func:`checkpoint_dir` (``SKINAPP_CHECKPOINT_DIR``)
-> the Hugging Face cache (Hub files) -> download (``download=True`` and not ``SKINAPP_OFFLINE=1``; Hub files
with ``huggingface_hub``, others with our resumable downloader) -> :class:`CheckpointMissing`.
Command line: ``python -m skinapp.checkpoints list | download NAME [--dir D] | verify [NAME]``.
"""

from skinapp.checkpoints._errors import (
    CheckpointMissing,
    ChecksumMismatchError,
    DownloadError,
    ManifestError,
    TrainedCheckpointError,
    UnreachableError,
    UnsafeCheckpointError,
)
from skinapp.checkpoints._hashing import FileState, cached_sha256, sha256_file
from skinapp.checkpoints._loading import load_state_dict, load_tensors
from skinapp.checkpoints._manifest import (
    Entry,
    FileSpec,
    HubFile,
    checkpoint_dir,
    get_entry,
    manifest,
    offline,
    offline_reason,
    set_manifest,
    use_manifest,
)
from skinapp.checkpoints._resolve import EntryStatus, FileStatus, download, resolve, status, verify

__all__ = [
    "CheckpointMissing",
    "ChecksumMismatchError",
    "DownloadError",
    "Entry",
    "EntryStatus",
    "FileSpec",
    "FileState",
    "FileStatus",
    "HubFile",
    "ManifestError",
    "TrainedCheckpointError",
    "UnreachableError",
    "UnsafeCheckpointError",
    "cached_sha256",
    "checkpoint_dir",
    "download",
    "get_entry",
    "load_state_dict",
    "load_tensors",
    "manifest",
    "offline",
    "offline_reason",
    "resolve",
    "set_manifest",
    "sha256_file",
    "status",
    "use_manifest",
    "verify",
]
