"""Fusion checkpoints: weights in safetensors, everything needed to rebuild and trust them in a JSON sidecar.

The sidecar (``<name>.json`` beside ``<name>.safetensors``) holds: class_names, variant, config
(including n_concepts and top_k), preprocessing, global_encoder (which ViT the head was trained with, see
:func:`global_encoder_meta`), data hash, metrics, and the SHA-256 of the weights file, checked on load.

What the predictions depend on (class names and their order, variant, config, the global encoder's identity) is
also bound into the safetensors header (metadata key :data:`BINDING_KEY`), so a sidecar edited after training
(class names reordered, another ViT named) is refused, and a checkpoint only runs with the ViT it was trained
with: its own fine-tuned ``global_encoder.safetensors`` (end-to-end training, SHA-256 checked), or the frozen ViT
weights file whose SHA-256 the sidecar records (or the same random init). Checkpoints saved before this binding
existed are refused: they must be retrained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from skinapp.checkpoints import TrainedCheckpointError, cached_sha256, sha256_file
from skinapp.fusion.encoders import VIT_PROFILES, GlobalEncoder, build_global_encoder
from skinapp.fusion.variants import FusionBase, build_fusion
from skinapp.provenance import WeightsInfo

#: safetensors header metadata key holding the binding (canonical JSON); absent in checkpoints of older skinapps.
BINDING_KEY = "skinapp.fusion.binding"
#: Format of the binding; 2 is the first with one (the sidecar-only checkpoints before it count as 1).
FORMAT = 2
#: Where train.fusion saves the end-to-end fine-tuned ViT, beside fusion.safetensors.
ENCODER_FILE = "global_encoder.safetensors"
#: The global encoder's ``init``: a random init (seed 0), a frozen weights file, the fine-tuned file beside it.
INITS = ("random", "file", "fine-tuned")
_RETRAIN = "python -m train.fusion (README, 'Training')"


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def global_encoder_meta(profile: str, checkpoint: str | Path | None = None,
                        fine_tuned: str | Path | None = None) -> dict[str, Any]:
    """The sidecar's record of the global ViT a fusion model was trained with (``meta["global_encoder"]``).

    Args:
        profile: the ViT profile ("full": ViT-B/16, "tiny").
        checkpoint: the frozen ViT weights file the tokens came from; None: the random init (seed 0).
        fine_tuned: end-to-end training: the fine-tuned ViT file, saved beside the fusion checkpoint.

    Returns:
        {"profile", "init" ("random" | "file" | "fine-tuned"), "fine_tuned", "sha256" (of the weights file;
        None for a random init), and "file" (its name) when fine-tuned}.
    """
    if fine_tuned is not None:
        path = Path(fine_tuned)
        return {"profile": profile, "init": "fine-tuned", "fine_tuned": True, "file": path.name,
                "sha256": sha256_file(path)}
    if checkpoint is not None:
        return {"profile": profile, "init": "file", "fine_tuned": False, "sha256": cached_sha256(Path(checkpoint))}
    return {"profile": profile, "init": "random", "fine_tuned": False, "sha256": None}


def _encoder_identity(encoder: Any) -> dict[str, Any]:
    """The part of ``meta["global_encoder"]`` that is bound; ValueError when it does not say which ViT."""
    if not isinstance(encoder, dict) or encoder.get("init") not in INITS or encoder.get("profile") not in VIT_PROFILES:
        raise ValueError("meta['global_encoder'] must say which ViT the model was trained with: "
                         "skinapp.fusion.checkpoint.global_encoder_meta(profile, checkpoint | fine_tuned).")
    identity = {key: encoder.get(key) for key in ("profile", "init", "sha256")}
    if encoder["init"] == "fine-tuned":
        identity["file"] = encoder.get("file")
    if (identity["sha256"] is None) != (encoder["init"] == "random"):
        raise ValueError("meta['global_encoder']: a weights file needs its sha256; a random init has none.")
    return identity


def _binding(meta: dict[str, Any]) -> dict[str, Any]:
    """What the predictions depend on, as JSON would give it back."""
    bound = {"format": FORMAT, "class_names": list(meta["class_names"]), "variant": meta["variant"],
             "config": meta["config"], "global_encoder": _encoder_identity(meta.get("global_encoder"))}
    return json.loads(json.dumps(bound, sort_keys=True, default=str))


def save_fusion_checkpoint(model: FusionBase, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors, the binding in its header) and its JSON sidecar. Returns the path.

    ``meta`` must hold ``class_names`` and ``global_encoder`` (:func:`global_encoder_meta`); for end-to-end
    training the fine-tuned ViT file must already lie beside ``path``.

    Raises:
        ValueError: wrong number of class names, no global encoder record, or its file is not beside ``path``.
    """
    path = Path(path).with_suffix(".safetensors")
    class_names = list(meta.get("class_names", []))
    if len(class_names) != model.n_classes:
        raise ValueError(f"meta['class_names'] has {len(class_names)} names for a {model.n_classes}-class model.")
    full = {**meta, "class_names": class_names, "variant": model.variant, "config": model.config,
            "n_concepts": model.config["n_concepts"], "top_k": model.k, "format": FORMAT}
    binding = _binding(full)
    encoder = binding["global_encoder"]
    own = path.parent / str(encoder.get("file"))
    if encoder["init"] == "fine-tuned" and (not own.is_file() or sha256_file(own) != encoder["sha256"]):
        raise ValueError(f"the fine-tuned ViT {encoder['file']} beside {path.name} is not the one meta names.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", BINDING_KEY: json.dumps(binding, sort_keys=True)})
    full["sha256"] = sha256_file(path)
    sidecar_path(path).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    return path


def load_fusion_checkpoint(path: str | Path) -> tuple[FusionBase, dict[str, Any]]:
    """Check the sidecar against the weights (SHA-256 and binding), rebuild, load strictly.

    Returns (model in eval mode, meta). The global encoder it needs: :func:`load_fusion_encoder`.

    Raises:
        TrainedCheckpointError: missing, not safetensors, no / unreadable sidecar, damaged (SHA-256), saved by an
            older skinapp (no binding), sidecar edited (differs from the binding), or weights that do not fit.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise TrainedCheckpointError(f"Fusion checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise TrainedCheckpointError(f"{path} is not a fusion checkpoint: those are .safetensors files with a JSON "
                                     "sidecar, written by python -m train.fusion; point to the run's "
                                     "fusion.safetensors.")
    if not side.is_file():
        raise TrainedCheckpointError(f"Fusion checkpoint {path} has no JSON sidecar {side.name} beside it: copy "
                                     "the run's fusion.json with it, under the same name stem.")
    meta = _read_sidecar(side)
    if sha256_file(path) != meta["sha256"]:
        raise TrainedCheckpointError(f"{path} does not match the SHA-256 in {side.name}: the file is damaged or "
                                     "changed since training. Copy both files from the training run again.")
    saved = _saved_binding(path)
    if saved is None:
        raise _older(path)
    problem = _binding_problem(saved, meta, path)
    if problem is not None:
        raise problem
    try:
        model = build_fusion(meta["variant"], len(meta["class_names"]), meta["config"])
        model.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise TrainedCheckpointError(f"{path} does not fit the model its sidecar describes ({exc}); retrain it "
                                     f"with {_RETRAIN}.") from exc
    model.weights = WeightsInfo("fusion", True, str(path))
    return model.eval(), meta


def needs_vit_file(meta: dict[str, Any]) -> bool:
    """True when the checkpoint was trained on a frozen ViT weights file (the app must have that very file)."""
    return meta["global_encoder"]["init"] == "file"


def load_fusion_encoder(path: str | Path, meta: dict[str, Any], vit_checkpoint: str | Path | None) -> GlobalEncoder:
    """The global ViT the fusion checkpoint at ``path`` was trained with, and only that one.

    Args:
        path, meta: the checkpoint and the meta :func:`load_fusion_checkpoint` returned.
        vit_checkpoint: the app's ViT weights file (None: it has none); used only when the checkpoint was
            trained on a frozen ViT file, and only when its SHA-256 is the one recorded.

    Raises:
        TrainedCheckpointError: the end-to-end ViT file beside ``path`` is missing or differs from its recorded
            SHA-256, or (frozen ViT) the app's ViT is not the one the checkpoint was trained with.
    """
    path = Path(path)
    encoder = meta["global_encoder"]
    profile = encoder["profile"]
    if encoder["init"] == "fine-tuned":
        own = path.parent / encoder["file"]
        if not own.is_file():
            raise TrainedCheckpointError(
                f"{path} was trained end to end with its own fine-tuned ViT, {encoder['file']}, which is not beside "
                f"it ({own}). Copy {encoder['file']} from the same training run folder next to it.")
        if cached_sha256(own) != encoder["sha256"]:
            raise TrainedCheckpointError(
                f"{own} is not the fine-tuned ViT {path.name} was trained with (its SHA-256 differs from the one in "
                f"{sidecar_path(path).name}): damaged or from another run. Copy it from the same run folder again.")
        built = _build(profile, own, path)
        source = f"{own} (fine-tuned end to end with {path.name}" + (")" if encoder.get("trained") else
                                                                       " from a random init)")
        built.weights = WeightsInfo(built.weights.name, bool(encoder.get("trained")), source)
    elif encoder["init"] == "random":
        built = _build(profile, None, path)  # the same random init (seed 0) the tokens came from in training
    else:
        have = cached_sha256(Path(vit_checkpoint)) if vit_checkpoint is not None else None
        if have != encoder["sha256"]:
            has = f"{vit_checkpoint} (SHA-256 {have})" if have else "no ViT weights file (random weights)"
            raise TrainedCheckpointError(
                f"{path} was trained on the frozen ViT weights with SHA-256 {encoder['sha256']}, but the app's ViT "
                f"is {has}. Its predictions would come from a ViT it was not trained with, so it is refused. Give "
                "the app that ViT file (SKINAPP_VIT_B16_AUGREG2, pinned in your manifest: SKINAPP_MANIFEST), or "
                f"retrain the classifier on the app's ViT ({_RETRAIN}, --vit-checkpoint).")
        built = _build(profile, vit_checkpoint, path)
    if built.width != int(meta["config"]["global_dim"]):
        raise TrainedCheckpointError(f"{path}: its ViT gives {built.width}-d tokens, the classifier takes "
                                     f"{meta['config']['global_dim']}-d; retrain it with {_RETRAIN}.")
    return built


def _build(profile: str, checkpoint: Path | str | None, fusion_path: Path) -> GlobalEncoder:
    try:
        return build_global_encoder(profile, checkpoint=checkpoint)
    except (ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise TrainedCheckpointError(f"The ViT of {fusion_path} cannot be loaded: {exc}") from exc


def _read_sidecar(side: Path) -> dict[str, Any]:
    try:
        meta = json.loads(side.read_text())
    except (ValueError, OSError) as exc:
        raise TrainedCheckpointError(f"{side} cannot be read as JSON ({exc}): it is damaged; copy the run's "
                                     "fusion.json again.") from exc
    if not isinstance(meta, dict):
        raise TrainedCheckpointError(f"{side} is not a fusion checkpoint sidecar (a JSON object).")
    absent = [key for key in ("class_names", "variant", "config", "sha256") if key not in meta]
    if absent:
        raise TrainedCheckpointError(f"{side.name} lacks {', '.join(map(repr, absent))}: not a fusion sidecar, or "
                                     "damaged; copy the run's fusion.json again.")
    return meta


def check_binding(path: str | Path) -> tuple[bool | None, str]:
    """Whether the sidecar of the (SHA-256-checked) fusion checkpoint ``path`` matches the binding in its header.

    Returns (True, "") when it does; (None, why) when the file has no binding (an older skinapp: not verifiable);
    (False, why) when they differ or either cannot be read. For ``python -m skinapp.checkpoints verify``.
    """
    path = Path(path)
    try:
        saved = _saved_binding(path)
        if saved is None:
            return None, str(_older(path))
        problem = _binding_problem(saved, _read_sidecar(sidecar_path(path)), path)
    except TrainedCheckpointError as exc:
        return False, str(exc)
    return (True, "") if problem is None else (False, str(problem))


def _saved_binding(path: Path) -> dict[str, Any] | None:
    """The binding in the safetensors header; None when absent (an older skinapp); TrainedCheckpointError when
    the file cannot be read."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get(BINDING_KEY)
        saved = json.loads(text) if text is not None else None
    except (SafetensorError, ValueError, OSError) as exc:
        raise TrainedCheckpointError(f"{path} cannot be read as safetensors ({exc}): it is damaged; copy it from "
                                     "the training run again.") from exc
    return saved if isinstance(saved, dict) else None


def _older(path: Path) -> TrainedCheckpointError:
    return TrainedCheckpointError(
        f"{path} was saved by an older skinapp: its class names, configuration and global ViT are not bound into "
        "the weights file, so an edited sidecar or the wrong ViT could not be detected. Retrain it with "
        f"{_RETRAIN}; the new run's files are checked on every load.")


def _binding_problem(saved: dict[str, Any], meta: dict[str, Any], path: Path) -> TrainedCheckpointError | None:
    """Why the sidecar ``meta`` does not match the ``saved`` binding of ``path``; None when it does."""
    side = sidecar_path(path)
    try:
        expected = _binding(meta)
    except (ValueError, TypeError, KeyError) as exc:
        return TrainedCheckpointError(f"{side.name}: {exc} The sidecar was edited or is damaged; copy the run's "
                                      "fusion.json again.")
    if saved == expected:
        return None
    differ = [key for key in expected if saved.get(key) != expected[key]]
    return TrainedCheckpointError(
        f"{side.name} does not match the checkpoint {path.name} it describes: {', '.join(differ)} differ "
        f"(the weights were saved with {_shown(saved, differ)}; the sidecar says {_shown(expected, differ)}). "
        "The sidecar was edited or belongs to another run: copy the pair from the same training run again.")


def _shown(binding: dict[str, Any], keys: list[str]) -> str:
    return "; ".join(f"{key} {json.dumps(binding.get(key), sort_keys=True)}" for key in keys)
