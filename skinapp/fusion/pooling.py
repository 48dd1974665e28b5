"""The instance classifier (CAM) and masked top-k multi-instance pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Added to padded instances' ranking key so that every real instance ranks before every padded one.
_PAD_PENALTY = 1e6


class InstanceClassifier(nn.Module):
    """Three 1x1 convolutions over the instance axis with two dropouts -> CAM.

    Kernel size 1: instance order carries no meaning (concepts come in detector order), so each
    instance is scored on its own. Input [B, N, in_dim] -> CAM [B, N, C].
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: tuple[int, int] | list[int] = (256, 128),
                 dropout: float = 0.7):
        super().__init__()
        h1, h2 = hidden
        self.layers = nn.Sequential(
            nn.Conv1d(in_dim, h1, 1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(h1, h2, 1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(h2, n_classes, 1),
        )

    def forward(self, instances: torch.Tensor) -> torch.Tensor:
        return self.layers(instances.transpose(1, 2)).transpose(1, 2)


def topk_pool(cam: torch.Tensor, mask: torch.Tensor, k: int,
              padded: str = "real_first") -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, average the k highest-scoring instances (top-k multi-instance pooling).

    ``padded="real_first"`` (our default): real instances are always taken first; padded instances
    (mask False, perturbed copies of the image's own concepts) fill the k slots only when an image has
    fewer than k real ones, so a strong concept and its noisy copies cannot take several slots.
    ``padded="all"`` (the fusion paper's plain reading, Hu et al. WACV 2025, Sec. 3): every instance,
    padded or not, competes on its score. Either way, rows with no real instance are routed by the model
    to the global fallback.

    Args:
        cam: [B, N, C] instance x class scores.
        mask: bool [B, N], True for real instances.
        k: instances averaged per class (clamped to N).
        padded: "real_first" or "all".

    Returns:
        scores [B, C] and the chosen instance indices [B, k, C].
    """
    if padded not in ("real_first", "all"):
        raise ValueError(f"padded must be 'real_first' or 'all'; got {padded!r}.")
    k = min(k, cam.shape[1])
    if padded == "all":
        idx = cam.topk(k, dim=1).indices
        return cam.gather(1, idx).mean(dim=1), idx
    key = cam - (~mask).unsqueeze(-1).to(cam.dtype) * _PAD_PENALTY
    idx = key.topk(k, dim=1).indices
    return cam.gather(1, idx).mean(dim=1), idx


def top_real_instance(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring REAL instance per class: cam [B, N, C], mask [B, N] -> [B, C] (-1 if none)."""
    masked = cam.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    idx = masked.argmax(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), idx, torch.full_like(idx, -1))


def mil_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-instance loss: softmax cross-entropy over the top-k-pooled class scores [B, C]."""
    return F.cross_entropy(scores, labels)
