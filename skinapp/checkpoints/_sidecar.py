"""Our trained checkpoints (fusion classifier, fine-tuned CLIP) are pinned by their JSON sidecars, not by the manifest.

``<name>.json`` beside ``<name>.safetensors`` records the weights' SHA-256 (``"sha256"``); an end-to-end fusion
classifier's also names its fine-tuned ViT file beside it and that file's SHA-256 (``"global_encoder": {"file",
"sha256"}``). :func:`sidecar_checks` recomputes both, for ``python -m skinapp.checkpoints verify``, and checks a
fusion classifier's sidecar against the class names, configuration and ViT bound into its weights' header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skinapp.checkpoints._hashing import FileState, sha256_file
from skinapp.checkpoints._resolve import EntryStatus


@dataclass(frozen=True)
class SidecarCheck:
    """One file checked against a sidecar: its path, state, digest (None when not computed) and the words shown."""

    path: Path
    state: FileState
    sha256: str | None
    text: str


def sidecar_checks(st: EntryStatus) -> list[SidecarCheck] | None:
    """The checks of a present trained single-file checkpoint against its sidecar; None for any other entry."""
    if st.entry.origin != "trained" or st.entry.is_directory or not st.present:
        return None
    path = st.files[0].path
    side = path.with_suffix(".json")
    if not side.is_file():
        return [SidecarCheck(side, FileState.MISSING, None, "missing (the JSON sidecar recording the weights' "
                                                            "SHA-256; copy it from the training run)")]
    try:
        meta = json.loads(side.read_text())
    except (ValueError, OSError):
        return [SidecarCheck(side, FileState.MISMATCH, None, "damaged (not readable JSON; copy it from the training "
                                                             "run again)")]
    meta = meta if isinstance(meta, dict) else {}
    checks = [_check(path, meta.get("sha256"), side.name)]
    if st.entry.kind == "fusion" and checks[0].state is FileState.VERIFIED:
        checks.append(_binding_check(path, side))
    encoder = meta.get("global_encoder")
    if isinstance(encoder, dict) and isinstance(encoder.get("file"), str):  # the end-to-end fine-tuned ViT
        checks.append(_check(path.parent / encoder["file"], encoder.get("sha256"), side.name))
    return checks


def _check(path: Path, expected: object, sidecar: str) -> SidecarCheck:
    if not path.is_file():
        return SidecarCheck(path, FileState.MISSING, None, f"missing (named by {sidecar})")
    digest = sha256_file(path)
    if not isinstance(expected, str):
        return SidecarCheck(path, FileState.UNPINNED, digest, f"present, UNVERIFIED ({sidecar} records no SHA-256)")
    if digest != expected:
        return SidecarCheck(path, FileState.MISMATCH, digest, f"SHA-256 MISMATCH with {sidecar} (it records "
                                                              f"{expected})")
    return SidecarCheck(path, FileState.VERIFIED, digest, f"verified against {sidecar}")


def _binding_check(path: Path, side: Path) -> SidecarCheck:
    """The fusion classifier's sidecar against the binding in its weights' header (what the app checks on load)."""
    from skinapp.fusion.checkpoint import check_binding  # torch and timm: only for this check

    bound, why = check_binding(path)
    if bound:
        return SidecarCheck(side, FileState.VERIFIED, None, f"matches the class names, configuration and ViT bound "
                                                            f"into {path.name}")
    state = FileState.UNPINNED if bound is None else FileState.MISMATCH
    return SidecarCheck(side, state, None, ("UNVERIFIED: " if bound is None else "REFUSED by the app: ") + why)
