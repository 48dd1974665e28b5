"""Fusion checkpoints: weights in safetensors, everything needed to rebuild and trust them in a JSON sidecar.

The sidecar (``<name>.json`` beside ``<name>.safetensors``) holds: class_names, variant, config
(including n_concepts and top_k), preprocessing, global_encoder (profile and provenance), data
hash, metrics, and the SHA-256 of the weights file, checked on load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from skinapp.checkpoints import sha256_file
from skinapp.fusion.variants import FusionBase, build_fusion
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_fusion_checkpoint(model: FusionBase, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar; ``meta`` must hold ``class_names``. Returns the path."""
    path = Path(path).with_suffix(".safetensors")
    class_names = list(meta.get("class_names", []))
    if len(class_names) != model.n_classes:
        raise ValueError(f"meta['class_names'] has {len(class_names)} names for a {model.n_classes}-class model.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    full = {**meta, "class_names": class_names, "variant": model.variant, "config": model.config,
            "n_concepts": model.config["n_concepts"], "top_k": model.k, "sha256": sha256_file(path)}
    sidecar_path(path).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    return path


def load_fusion_checkpoint(path: str | Path) -> tuple[FusionBase, dict[str, Any]]:
    """Rebuild the model from the sidecar, check the weights' SHA-256, load strictly. Returns (model in eval, meta)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Fusion checkpoint not found: {path}")
    if not side.is_file():
        raise FileNotFoundError(f"Fusion checkpoint {path.name} has no JSON sidecar {side.name}.")
    meta = json.loads(side.read_text())
    for key in ("class_names", "variant", "config", "sha256"):
        if key not in meta:
            raise ValueError(f"{side.name} lacks {key!r}.")
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise ValueError(f"{path.name} does not match the SHA-256 in {side.name} (file changed or damaged).")
    model = build_fusion(meta["variant"], len(meta["class_names"]), meta["config"])
    model.load_state_dict(load_file(str(path)), strict=True)
    model.weights = WeightsInfo("fusion", True, str(path))
    encoder = meta.get("global_encoder") or {}
    if encoder.get("fine_tuned"):  # trained end to end (train.fusion --mode end_to_end): the head needs its own ViT
        log.warning("%s was trained end to end with a fine-tuned ViT (%s beside it): use that file as the global "
                    "encoder, or its predictions come from a ViT it was not trained with", path.name,
                    encoder.get("file", "global_encoder.safetensors"))
    return model.eval(), meta
