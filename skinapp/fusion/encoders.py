"""Encoders: the frozen global ViT (tokens, cached in training), and the trainable projections.

``GlobalEncoder`` wraps a timm ViT-B/16 (or a narrow/shallow copy on the same 14x14 grid) and returns
patch tokens without the class token. ``GlobalProjection`` and ``LocalEncoder`` are the trainable
parts of the fusion model that bring both feature kinds to the shared width ``dim``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from skinapp.checkpoints import load_tensors
from skinapp.image import LoadedImage, load_image
from skinapp.provenance import WeightsInfo, untrained

log = logging.getLogger(__name__)

#: timm constructor arguments per profile. Both keep 224 px input and 16 px patches: 14x14 = 196 tokens.
VIT_PROFILES: dict[str, dict[str, Any]] = {
    "full": {"model_name": "vit_base_patch16_224", "embed_dim": 768, "depth": 12, "num_heads": 12},
    "tiny": {"model_name": "vit_base_patch16_224", "embed_dim": 64, "depth": 2, "num_heads": 2},
}

#: Preprocessing stored with every checkpoint: the whole photo resized to 224x224 (no crop, so a
#: lesion near the border is kept), scaled to [0, 1], normalised (timm ViT-B/16 augreg statistics).
PREPROCESSING: dict[str, Any] = {"size": 224, "resize": "bilinear, whole image, no crop",
                                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

GRID = 14
N_TOKENS = GRID * GRID


class GlobalEncoder(nn.Module):
    """A timm ViT returning its patch tokens.

    Attributes:
        vit: the timm ``VisionTransformer`` (no classification head).
        width: token width (768 for ViT-B/16).
        weights: provenance of the weights.
    """

    def __init__(self, vit: nn.Module, weights: WeightsInfo, preprocessing: dict[str, Any] | None = None):
        super().__init__()
        self.vit = vit
        self.width = int(vit.embed_dim)
        self.weights = weights
        self.preprocessing = dict(preprocessing or PREPROCESSING)

    @torch.no_grad()
    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a preprocessed batch [B, 3, 224, 224] -> [B, 196, width]."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, 224, 224):
            raise ValueError(f"Expected a batch [B, 3, 224, 224]; got {tuple(batch.shape)}.")
        param = next(self.vit.parameters())
        out = self.vit.forward_features(batch.to(device=param.device, dtype=param.dtype))
        return out[:, self.vit.num_prefix_tokens:]

    def preprocess(self, image: LoadedImage | np.ndarray) -> torch.Tensor:
        """A LoadedImage or uint8 array [H, W, 3] -> normalised float tensor [1, 3, 224, 224]."""
        pixels = load_image(image).pixels if not isinstance(image, LoadedImage) else image.pixels
        size = int(self.preprocessing["size"])
        resized = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.preprocessing["mean"]).view(3, 1, 1)
        std = torch.tensor(self.preprocessing["std"]).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0)


def build_global_encoder(profile: str = "tiny", checkpoint: str | Path | None = None,
                         seed: int = 0) -> GlobalEncoder:
    """Build the global ViT; random weights unless ``checkpoint`` (timm layout, .safetensors or .pth) is given.

    Args:
        profile: "full" (ViT-B/16, 768-d tokens) or "tiny" (64-d, 2 blocks, same 14x14 grid).
        checkpoint: a timm ViT-B/16 state dict; classification-head keys are ignored.
        seed: seed for the random initialisation (deterministic tiny encoders across processes).
    """
    if profile not in VIT_PROFILES:
        raise ValueError(f"Unknown ViT profile {profile!r}; choose one of {sorted(VIT_PROFILES)}.")
    kwargs = dict(VIT_PROFILES[profile])
    name = kwargs.pop("model_name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if checkpoint is None:
        weights = untrained(f"vit_{profile}", f"random init ({profile} profile)")
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"ViT checkpoint not found: {path}")
        state = {k: v for k, v in load_tensors(path).items() if not k.startswith("head.")}
        missing, unexpected = vit.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path.name} does not match the {profile} ViT: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}.")
        weights = WeightsInfo(f"vit_{profile}", True, str(path))
    return GlobalEncoder(vit.eval(), weights)


class GlobalProjection(nn.Module):
    """Global tokens [B, T, global_dim] -> [B, T, dim] (one linear layer)."""

    def __init__(self, global_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(global_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class LocalEncoder(nn.Module):
    """Concept features [B, n, concept_dim] -> [B, n, dim]: two 1x1 convolutions over the concept axis."""

    def __init__(self, concept_dim: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(concept_dim, dim, kernel_size=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, concepts: torch.Tensor) -> torch.Tensor:
        x = concepts.transpose(1, 2)
        x = self.conv2(F.relu(self.conv1(x)))
        return x.transpose(1, 2)
