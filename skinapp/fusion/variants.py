"""The fusion model and its ablations, one small module per variant over a shared base.

Every variant maps (global tokens, concept features, concept mask) to a set of instances
[B, N, D]; the shared instance classifier turns them into a CAM [B, N, C], and masked top-k
pooling gives class scores [B, C]. Images with no real concept are routed, per row, to
global-only instances (the projected ViT tokens) so that they still get a prediction.

    global          instances = the 196 projected global tokens (concepts unused)
    local           instances = the encoded concepts
    concat          instances = concepts plus one pooled-global instance (n + 1)
    concat_feature  instances = [concept ; pooled global] along the feature axis (2D wide)
    avg_sum         instances = (concept + pooled global) / 2
    cross_attention instances = concepts attending to the global tokens (the paper's model)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from skinapp.fusion.attention import CrossAttentiveModule
from skinapp.fusion.config import fusion_config
from skinapp.fusion.encoders import GlobalProjection, LocalEncoder
from skinapp.fusion.pooling import InstanceClassifier, topk_pool
from skinapp.provenance import untrained

DEFAULT_VARIANT = "cross_attention"


@dataclass
class FusionOutput:
    """What one forward pass returns.

    Attributes:
        scores: [B, C] top-k-pooled class scores (logits of the MIL loss).
        cam: [B, N, C] instance x class scores (N = n concepts, n + 1 for concat, 196 for global).
        mask: bool [B, N], True for real instances.
        n_concept_rows: how many leading CAM rows are concepts (0 for the global variant).
        fallback: bool [B], True where the image had no real concept and global instances were used.
        fallback_cam: [B_fallback, 196, C] CAM of the global instances for those rows (None if none).
    """

    scores: torch.Tensor
    cam: torch.Tensor
    mask: torch.Tensor
    n_concept_rows: int
    fallback: torch.Tensor
    fallback_cam: torch.Tensor | None = None


class FusionBase(nn.Module):
    """Shared parts: global projection, local encoder, instance classifier, pooling and fallback."""

    variant = ""
    uses_concepts = True

    def __init__(self, n_classes: int, config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.n_classes = n_classes
        self.k = int(config["top_k"])
        dim = int(config["dim"])
        self.global_proj = GlobalProjection(int(config["global_dim"]), dim)
        self.local = LocalEncoder(int(config["concept_dim"]), dim)
        self.classifier = InstanceClassifier(self.instance_dim(dim), n_classes, config["classifier_hidden"],
                                             float(config["classifier_dropout"]))

    def instance_dim(self, dim: int) -> int:
        return dim

    def instances(self, z_global: torch.Tensor, z_local: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_global [B, T, D], z_local [B, n, D], mask [B, n] -> instances [B, N, D'], mask [B, N]."""
        raise NotImplementedError

    def fallback_instances(self, z_global: torch.Tensor) -> torch.Tensor:
        """Global-only instances [B, T, D'] for images without any real concept."""
        return z_global

    def forward(self, global_tokens: torch.Tensor, concepts: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        """global_tokens [B, 196, global_dim], concepts [B, n, concept_dim], mask bool [B, n] -> FusionOutput."""
        if global_tokens.ndim != 3 or global_tokens.shape[-1] != self.config["global_dim"]:
            raise ValueError(f"global tokens must be [B, T, {self.config['global_dim']}]; "
                             f"got {tuple(global_tokens.shape)}.")
        if concepts.ndim != 3 or concepts.shape[-1] != self.config["concept_dim"] or mask.shape != concepts.shape[:2]:
            raise ValueError(f"concepts must be [B, n, {self.config['concept_dim']}] with mask [B, n]; "
                             f"got {tuple(concepts.shape)} and {tuple(mask.shape)}.")
        mask = mask.bool()
        z_global = self.global_proj(global_tokens.float())
        if self.uses_concepts:
            z_local = self.local(concepts.float())
            inst, inst_mask = self.instances(z_global, z_local, mask)
            n_rows = concepts.shape[1]
            fallback = ~mask.any(dim=1)
        else:
            inst, inst_mask = self.instances(z_global, z_global[:, :0], mask[:, :0])
            n_rows = 0
            fallback = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        cam = self.classifier(inst)
        scores, _ = topk_pool(cam, inst_mask, self.k, self.config.get("pool_padded", "real_first"))
        fallback_cam = None
        if fallback.any():
            fallback_cam = self.classifier(self.fallback_instances(z_global[fallback]))
            global_scores, _ = topk_pool(fallback_cam, torch.ones(fallback_cam.shape[:2], dtype=torch.bool,
                                                                  device=cam.device), self.k)
            scores = scores.clone()
            scores[fallback] = global_scores
        return FusionOutput(scores, cam, inst_mask, n_rows, fallback, fallback_cam)


class GlobalOnly(FusionBase):
    variant = "global"
    uses_concepts = False

    def instances(self, z_global, z_local, mask):
        return z_global, torch.ones(z_global.shape[:2], dtype=torch.bool, device=z_global.device)


class LocalOnly(FusionBase):
    variant = "local"

    def instances(self, z_global, z_local, mask):
        return z_local, mask


class Concat(FusionBase):
    variant = "concat"

    def instances(self, z_global, z_local, mask):
        pooled = z_global.mean(dim=1, keepdim=True)
        ones = torch.ones(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
        return torch.cat([z_local, pooled], dim=1), torch.cat([mask, ones], dim=1)


class ConcatFeature(FusionBase):
    variant = "concat_feature"

    def instance_dim(self, dim: int) -> int:
        return 2 * dim

    def instances(self, z_global, z_local, mask):
        pooled = z_global.mean(dim=1, keepdim=True).expand(-1, z_local.shape[1], -1)
        return torch.cat([z_local, pooled], dim=-1), mask

    def fallback_instances(self, z_global):
        return torch.cat([z_global, z_global.mean(dim=1, keepdim=True).expand_as(z_global)], dim=-1)


class AvgSum(FusionBase):
    variant = "avg_sum"

    def instances(self, z_global, z_local, mask):
        return (z_local + z_global.mean(dim=1, keepdim=True)) / 2, mask


class CrossAttentionFusion(FusionBase):
    variant = "cross_attention"

    def __init__(self, n_classes: int, config: dict[str, Any]):
        super().__init__(n_classes, config)
        self.cross = nn.ModuleList(
            CrossAttentiveModule(int(config["dim"]), int(config["heads"]), float(config["attn_dropout"]),
                                 float(config["mlp_ratio"])) for _ in range(int(config["layers"])))

    def instances(self, z_global, z_local, mask):
        out = z_local
        for layer in self.cross:
            out = layer(out, z_global)
        return out, mask


FUSION_VARIANTS: dict[str, type[FusionBase]] = {
    cls.variant: cls for cls in (GlobalOnly, LocalOnly, Concat, ConcatFeature, AvgSum, CrossAttentionFusion)
}


def build_fusion(variant: str = DEFAULT_VARIANT, n_classes: int = 5,
                 config: str | dict[str, Any] = "scin") -> FusionBase:
    """Build a fusion model by variant name (see FUSION_VARIANTS) for ``n_classes`` classes."""
    if variant not in FUSION_VARIANTS:
        raise ValueError(f"Unknown fusion variant {variant!r}; choose one of {sorted(FUSION_VARIANTS)}.")
    if n_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes; got {n_classes}.")
    model = FUSION_VARIANTS[variant](n_classes, fusion_config(config))
    model.weights = untrained("fusion", f"random init ({variant})")
    return model
