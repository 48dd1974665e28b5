"""Plain image classifiers used as baselines: fine-tuned ResNet-50 and ViT-B/16 (timm, trained on images)."""

from __future__ import annotations

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from skinapp.fusion.encoders import VIT_PROFILES

BASELINES = ("resnet50", "vit_b16")


def build_baseline(name: str, n_classes: int, profile: str = "tiny", seed: int = 0) -> nn.Module:
    """A timm classifier for [B, 3, 224, 224] images -> logits [B, n_classes] (random init, pretrained=False).

    "full" is timm's resnet50 / vit_base_patch16_224; "tiny" keeps the same classes at a toy size
    (a 4-stage BasicBlock ResNet with one block per stage; the tiny ViT of the global encoder).
    """
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {BASELINES}.")
    if profile not in ("tiny", "full"):
        raise ValueError(f"Unknown profile {profile!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "resnet50":
            if profile == "full":
                return timm.create_model("resnet50", pretrained=False, num_classes=n_classes)
            return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=n_classes)
        kwargs = dict(VIT_PROFILES[profile])
        return timm.create_model(kwargs.pop("model_name"), pretrained=False, num_classes=n_classes, **kwargs)
