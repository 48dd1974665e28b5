"""open_clip's Hugging Face Hub format (``hf-hub:<repo>``), read from a local directory: DermLIP ViT-B/16.

DermLIP (Yan et al., "Derm1M: A Million-scale Vision-Language Dataset Aligned with Clinical Ontology Knowledge
for Dermatology", ICCV 2025; ``redlessone/DermLIP_ViT-B-16``) is an open_clip ViT-B-16 published the way
``open_clip.push_to_hf_hub`` writes models: a directory with

* ``open_clip_config.json``: ``{"model_cfg": {embed_dim, vision_cfg, text_cfg, [quick_gelu]},
  "preprocess_cfg": {mean, std, ...}}``;
* ``open_clip_model.safetensors`` (preferred) or ``open_clip_pytorch_model.bin`` (read with
  ``weights_only=True``): an open_clip ``CLIP`` state dict.

The format's own defaults apply to what ``model_cfg`` leaves out, exactly as ``open_clip.create_model`` would
build it: ``quick_gelu`` False, ``head_width`` 64, text ``heads`` 8, OpenAI's mean/std. The loader logs every
default it used. Models with a Hugging Face text tower, a timm tower or a non-ViT vision tower are refused
(the explainers need open_clip's own ViT and CLIP BPE text tower).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from skinapp.checkpoints import load_tensors
from skinapp.clip.architecture import resolve_config
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
#: Weight files of the format, in order of preference.
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: What open_clip.create_model uses when model_cfg leaves these out (open_clip's CLIP / CLIPVisionCfg /
#: CLIPTextCfg defaults).
FORMAT_DEFAULTS = {"quick_gelu": False, "vision_cfg.head_width": 64, "text_cfg.heads": 8}
_UNSUPPORTED = ("hf_model_name", "timm_model_name", "hf_tokenizer_name", "layers_per_stage")


def read_config(directory: Path) -> tuple[dict[str, Any], tuple[float, ...], tuple[float, ...], list[str]]:
    """(CLIP constructor config, mean, std, notes on defaults used) from ``open_clip_config.json``.

    Raises:
        FileNotFoundError: no config file. ValueError: not a plain open_clip ViT CLIP.
    """
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory.name}: {CONFIG_NAME} not found (an open_clip hf-hub directory)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    cfg = dict(raw.get("model_cfg") or {})
    if not cfg.get("vision_cfg") or not cfg.get("text_cfg"):
        raise ValueError(f"{path.name}: model_cfg must hold vision_cfg and text_cfg")
    cfg["vision_cfg"], cfg["text_cfg"] = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    odd = [k for k in _UNSUPPORTED if cfg["vision_cfg"].get(k) or cfg["text_cfg"].get(k)]
    if odd or cfg.get("custom_text") or isinstance(cfg["vision_cfg"].get("layers"), (list, tuple)):
        raise ValueError(f"{path.name}: only open_clip ViT CLIPs with the CLIP BPE text tower are supported "
                         f"(found {odd or 'a custom text tower or a ResNet'})")
    notes = []
    for dotted, value in FORMAT_DEFAULTS.items():
        node, _, leaf = dotted.rpartition(".")
        target = cfg[node] if node else cfg
        if target.get(leaf) is None:
            target[leaf] = value
            notes.append(f"{dotted}={value!r} (open_clip default: not in {CONFIG_NAME})")
    keep = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    config = {k: cfg[k] for k in keep if k in cfg}
    pre = raw.get("preprocess_cfg") or {}
    mean = tuple(float(m) for m in pre.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(s) for s in pre.get("std", OPENAI_DATASET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path.name}: preprocess_cfg mean/std must have 3 values")
    return config, mean, std, notes


def weights_file(directory: Path) -> Path:
    """The directory's weight file (safetensors first). Raises FileNotFoundError when there is none."""
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory.name}: no weights ({' or '.join(WEIGHT_NAMES)})")


def load_open_clip_hub(directory: str | Path, device: str | torch.device = "cpu", label: str = "DermLIP ViT-B/16",
                       licence: str = ""):
    """Load an open_clip hf-hub directory as a :class:`~skinapp.clip.model.ClipBundle`.

    Raises:
        FileNotFoundError: missing config or weights. ValueError: unsupported config, or weights that do not
            fit it (strict load).
    """
    from skinapp.clip.model import make_bundle, model_from_state

    directory = Path(directory)
    config, mean, std, notes = read_config(directory)
    path = weights_file(directory)
    state = load_tensors(path)  # safetensors, or torch.load(weights_only=True)
    state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config, shape_notes = resolve_config(config, state, f"{directory.name}/{path.name}")
    model = model_from_state(config, state, f"{directory.name}/{path.name}")
    for note in (*notes, *shape_notes):
        (log.warning if "default" in note else log.info)("%s: %s", directory.name, note)
    source = f"{directory} (open_clip hf-hub format)"
    defaulted = [n.split(" ")[0] for n in notes]
    if defaulted:
        source += f"; open_clip defaults {', '.join(defaulted)}"
    weights = WeightsInfo(name="clip", trained=True, source=source)
    context = int(config["text_cfg"].get("context_length", 77))
    bundle = make_bundle(model, config, weights, label, device, mean=mean, std=std,
                         tokenizer=open_clip.SimpleTokenizer(context_length=context))
    bundle.licence = licence
    log.info("Loaded %s from %s", label, directory)
    return bundle
