"""Safe loading of checkpoint files: safetensors, or ``torch.load(weights_only=True)``; never arbitrary pickle."""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skinapp.checkpoints._errors import CheckpointMissing, ChecksumMismatchError, ManifestError, UnsafeCheckpointError
from skinapp.checkpoints._hashing import cached_sha256
from skinapp.checkpoints._manifest import FileSpec, get_entry, manifest

log = logging.getLogger(__name__)

_SAFETENSORS_SUFFIXES = (".safetensors",)


def load_state_dict(path: str | os.PathLike, verify: bool | None = None, name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file into a dict on the CPU, without running code from the file.

    ``*.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``,
    which only rebuilds tensors and plain containers (a pickle that would call a function, or a
    TorchScript archive, is refused). The mapping is returned as stored: some official files nest
    the weights (Grounding DINO keeps them under ``"model"``).

    Args:
        path: the file.
        verify: first check its size and SHA-256 against the manifest (the entry is ``name``, or the
            one whose file name matches ``path``). None (default): check when ``name`` is given or the
            file name is that of a pinned single-file manifest entry (e.g. ``sam_vit_b_01ec64.pth``),
            so an official file is checked however it was found. The digest is cached per version
            of the file (size, mtime, ctime, inode), so repeated loads do not re-read it.
        name: manifest entry to verify against.

    Raises:
        CheckpointMissing: ``path`` does not exist.
        ChecksumMismatchError: ``verify=True`` and the digest differs from the manifest.
        ManifestError: ``verify=True`` but no pinned hash can be found for ``path``.
        ChecksumMismatchError: also raised in the default mode for a pinned official file name.
        UnsafeCheckpointError: the file needs code execution to load, or does not hold a mapping.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointMissing(f"checkpoint file not found: {path}", name or path.name, [str(path)])
    spec = _pinned_spec(path, name) if verify else _auto_spec(path, name) if verify is None else None
    if spec is not None:
        if spec.size is not None and path.stat().st_size != spec.size:
            raise ChecksumMismatchError(path, f"{spec.size} bytes", f"{path.stat().st_size} bytes", what="size",
                                        hint="The file was refused before loading: it is truncated or not the "
                                             "file the manifest pins; fetch it again.")
        digest = cached_sha256(path)
        if digest != spec.sha256:
            raise ChecksumMismatchError(path, spec.sha256, digest,
                                        hint="The file was refused before loading: it is corrupt or not the file "
                                             "the manifest pins; fetch it again.")
        log.debug("%s: SHA-256 verified", path)
    if path.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    return _torch_load(path)


def _torch_load(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        # torch's own message advises retrying with weights_only=False, which would run the file's code: never
        # passed on; the refusal is said in our words, naming the offending object when torch names one
        raise UnsafeCheckpointError(unsafe_message(path, str(err))) from None
    if not isinstance(obj, Mapping):
        raise UnsafeCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict (mapping)")
    return dict(obj)


def unsafe_message(path: Path, torch_text: str) -> str:
    """Why ``path`` was refused by a safe load, in our words (``torch_text``: what torch.load raised)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", torch_text)
    if found:
        what = f"a Python object or function ({found.group(1)}) besides tensors"
    elif "TorchScript" in torch_text:
        what = "a TorchScript program, not a state dict"
    else:
        what = "no state dict a safe load can read (it is damaged, or pickles Python objects rather than tensors)"
    return (f"{path} was refused: it holds {what}. A safe load (torch.load with weights_only=True) does not "
            "read code or objects, because loading them would run code from the file. Do not load it any other "
            "way; use a safetensors file or a weights-only state dict from a trusted source instead (e.g. the "
            "publisher's download: python -m skinapp.checkpoints download NAME).")


def _auto_spec(path: Path, name: str | None) -> FileSpec | None:
    """The pinned spec ``path`` must match in the default mode: by ``name``, else by a single-file entry's name."""
    if name is not None:
        return _pinned_spec(path, name)
    try:
        entries = manifest()
    except ManifestError as err:  # e.g. the package used without its repository's checkpoints/manifest.json
        log.warning("%s is loaded without a SHA-256 check: %s", path.name, err)
        return None
    matches = [entry.files[0] for entry in entries.values()
               if not entry.is_directory and entry.files[0].filename == path.name and entry.files[0].sha256]
    return matches[0] if len(matches) == 1 else None


def _pinned_spec(path: Path, name: str | None) -> FileSpec:
    """The manifest file spec (with a pinned SHA-256) that ``path`` should match."""
    if name is not None:
        files = get_entry(name).files
        candidates = list(files) if len(files) == 1 else [s for s in files if s.filename == path.name]
        where = f"checkpoint {name!r}"
    else:
        candidates = [spec for entry in manifest().values() for spec in entry.files if spec.filename == path.name]
        where = f"the manifest (file name {path.name!r})"
    if len(candidates) != 1:
        raise ManifestError(f"cannot verify {path}: {len(candidates)} matching files in {where}; pass name=")
    if candidates[0].sha256 is None:
        raise ManifestError(f"cannot verify {path}: {where} pins no SHA-256 for it")
    return candidates[0]


def load_tensors(path: str | os.PathLike, nested: tuple[str, ...] = ("state_dict", "model"),
                 keep_non_tensors: bool = False) -> dict[str, Any]:
    """A flat ``{name: tensor}`` state dict from a checkpoint file, loaded safely (see :func:`load_state_dict`).

    Unwraps one level of nesting under the first of ``nested`` that holds a mapping (official SAM files
    are flat, Grounding DINO nests under ``"model"``, Lightning-style files under ``"state_dict"``) and
    strips DDP's ``module.`` prefixes.

    Raises:
        CheckpointMissing: no such file.
        UnsafeCheckpointError (a ValueError): the file needs code execution to load, is not a mapping,
            or (unless ``keep_non_tensors``) holds non-tensor values.
    """
    import torch

    state: Mapping[str, Any] = load_state_dict(path)
    for key in nested:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not keep_non_tensors:
        odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if odd:
            raise UnsafeCheckpointError(f"{Path(path).name} is not a state dict of tensors (e.g. {odd[:3]})")
    return {str(k).removeprefix("module."): v for k, v in state.items()}
