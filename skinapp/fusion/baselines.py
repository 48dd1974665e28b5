"""Plain image classifiers used as baselines: fine-tuned ResNet-50 and ViT-B/16 (timm, trained on images).

The fusion paper's baselines start from ImageNet weights. :data:`BASELINE_CHECKPOINTS` names the manifest entry
of each (timm's own releases, SHA-256 pinned in ``checkpoints/manifest.json``); :func:`build_baseline` loads one
safely (safetensors or ``torch.load(weights_only=True)``) and drops the ImageNet classifier. A model built
without weights says so: ``model.init`` is ``"from scratch"``, and every table row trained from it carries it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from skinapp.checkpoints import load_tensors
from skinapp.fusion.encoders import VIT_PROFILES

log = logging.getLogger(__name__)

BASELINES = ("resnet50", "vit_b16")
#: Baseline -> manifest entry of its ImageNet weights (timm releases).
BASELINE_CHECKPOINTS: dict[str, str] = {"resnet50": "resnet50_a1_in1k", "vit_b16": "vit_b16_augreg2"}
#: Classifier keys of each timm model: replaced by a new head for our classes.
_HEAD_PREFIXES: dict[str, tuple[str, ...]] = {"resnet50": ("fc.",), "vit_b16": ("head.",)}
FROM_SCRATCH = "from scratch"


def build_baseline(name: str, n_classes: int, profile: str = "tiny", seed: int = 0,
                   checkpoint: str | Path | None = None) -> nn.Module:
    """A timm classifier for [B, 3, 224, 224] images -> logits [B, n_classes].

    "full" is timm's resnet50 / vit_base_patch16_224; "tiny" keeps the same classes at a toy size
    (a 4-stage BasicBlock ResNet with one block per stage; the tiny ViT of the global encoder).

    Args:
        name: one of :data:`BASELINES`.
        n_classes: classes of the new head (always freshly initialised from ``seed``).
        profile: "tiny" or "full".
        seed: seed of the random initialisation.
        checkpoint: timm state dict (.safetensors / .pth) of the same architecture, e.g. the manifest entry
            :data:`BASELINE_CHECKPOINTS` [name]; its ImageNet classifier is dropped. None: random weights.

    Returns:
        The model, with ``model.init`` = ``"pretrained (<file name>)"`` or ``"from scratch"``.

    Raises:
        ValueError: unknown name/profile, or the checkpoint does not fit the architecture.
        FileNotFoundError: the checkpoint path does not exist.
    """
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {BASELINES}.")
    if profile not in ("tiny", "full"):
        raise ValueError(f"Unknown profile {profile!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "resnet50":
            model = (timm.create_model("resnet50", pretrained=False, num_classes=n_classes) if profile == "full"
                     else ResNet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=n_classes))
        else:
            kwargs = dict(VIT_PROFILES[profile])
            model = timm.create_model(kwargs.pop("model_name"), pretrained=False, num_classes=n_classes, **kwargs)
    model.init = FROM_SCRATCH
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{name} checkpoint not found: {path}")
        state = {k: v for k, v in load_tensors(path).items() if not k.startswith(_HEAD_PREFIXES[name])}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES[name])]
        if missing or unexpected:
            raise ValueError(f"{path.name} does not match the {profile} {name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}.")
        model.init = f"pretrained ({path.name})"
        log.info("%s baseline: ImageNet weights from %s, new %d-class head", name, path, n_classes)
    return model
