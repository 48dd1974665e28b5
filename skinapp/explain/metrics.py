"""Faithfulness metrics for phrase heatmaps: deletion / insertion curves, energy inside a mask, pointing game.

Defaults are the published definitions:

* Deletion (RISE, Petsiuk et al., BMVC 2018): rank pixels by the heatmap, replace the top ones (in ``steps``
  equal steps) with ZEROS of the model-input tensor (RISE's ``torch.zeros_like`` on the normalised image,
  i.e. the normalisation mean colour), record S = cos(f_I, f_T) after each step; lower area under the curve
  (AUC, x in [0, 1]) means the heatmap found what drives S.
* Insertion (RISE): start from a Gaussian blur of the image (kernel 11, sigma 5) and put the top pixels back;
  higher AUC is better.
* Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016): a hit when
  the heatmap's maximum lies within 15 px of the reference mask (the mask dilated by the tolerance, in the
  mask's pixels).

Variants stay available: ``substrate="blur"`` / ``"mean"`` for deletion, ``"zero"`` / ``"mean"`` for insertion,
``tolerance=0`` for a strict pointing game. All perturbed images of one curve go through the image encoder
in batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

#: Substrates a removed pixel is replaced with: zeros of the model input (RISE deletion), Gaussian blur
#: (RISE insertion), the image's mean colour.
SUBSTRATES = ("zero", "blur", "mean")
#: The published substrate of each curve (RISE): deletion -> zeros, insertion -> blur.
DEFAULT_SUBSTRATES: dict[str, str] = {"deletion": "zero", "insertion": "blur"}
#: Gaussian blur used as substrate (as in RISE's insertion metric): kernel 11, sigma 5.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
#: Pointing-game tolerance in pixels (Zhang et al. 2016).
POINTING_TOLERANCE_PX = 15


@dataclass
class Curve:
    """One deletion or insertion curve.

    Attributes:
        kind: "deletion" or "insertion".
        fractions: float [K + 1], fraction of pixels removed (deletion) or restored (insertion).
        scores: float [K + 1], S after each step.
        auc: trapezoidal area under scores over fractions in [0, 1].
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: float


def auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Trapezoidal area under ``scores`` over ``fractions``."""
    f, s = np.asarray(fractions, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (s[1:] + s[:-1]) / 2.0))


def _as_heatmap(heatmap, size: tuple[int, int]) -> torch.Tensor:
    h = torch.as_tensor(np.asarray(heatmap), dtype=torch.float32)
    if h.ndim != 2:
        raise ValueError(f"A heatmap must be 2-D, got shape {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("The heatmap contains NaN or infinite values.")
    if tuple(h.shape) != tuple(size):
        h = F.interpolate(h[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return h


def substrate_for(image: torch.Tensor, substrate: str = "blur") -> torch.Tensor:
    """The replacement image [1, 3, H, W]: zeros (of the normalised model input), the Gaussian-blurred image
    (kernel 11, sigma 5) or its per-channel mean colour."""
    if substrate == "zero":
        return torch.zeros_like(image)
    if substrate == "blur":
        return gaussian_blur(image, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    if substrate == "mean":
        return image.mean(dim=(2, 3), keepdim=True).expand_as(image).clone()
    raise ValueError(f"Unknown substrate {substrate!r}; choose from {SUBSTRATES}")


def pixel_order(heatmap: torch.Tensor) -> torch.Tensor:
    """Flat pixel indices sorted by heatmap value, highest first (ties keep raster order)."""
    return torch.sort(heatmap.flatten(), descending=True, stable=True).indices


@torch.no_grad()
def similarities(model: nn.Module, images: torch.Tensor, text_feature: torch.Tensor,
                 batch_size: int = 16) -> np.ndarray:
    """cos(f_I, f_T) for a batch of preprocessed images [N, 3, H, W] and one text feature [E]."""
    t = F.normalize(text_feature.detach().float().reshape(-1), dim=0)
    visual = getattr(model, "visual", model)
    dtype, device = visual.conv1.weight.dtype, visual.conv1.weight.device
    out = []
    for start in range(0, images.shape[0], batch_size):
        f = model.encode_image(images[start:start + batch_size].to(device=device, dtype=dtype))
        out.append(F.normalize(f.float(), dim=-1).cpu() @ t)
    return torch.cat(out).numpy().astype(np.float64)


def perturbation_curve(model: nn.Module, image: torch.Tensor, text_feature: torch.Tensor, heatmap,
                       kind: str = "deletion", steps: int = 20, substrate: str | None = None,
                       batch_size: int = 16) -> Curve:
    """Deletion or insertion curve of one heatmap.

    Args:
        model: CLIP model with ``encode_image``.
        image: preprocessed image [1, 3, H, W].
        text_feature: [E] text feature of the explained phrase.
        heatmap: [h, w] array/tensor (any size; bilinearly resized to H x W), higher = more important.
        kind: "deletion" (remove top pixels) or "insertion" (restore top pixels onto the substrate).
        steps: number of equal steps from 0 to all pixels.
        substrate: "zero", "blur" or "mean"; None (default) is the published one of ``kind``
            (:data:`DEFAULT_SUBSTRATES`: zeros for deletion, blur for insertion).
        batch_size: perturbed images per encoder batch.
    """
    if kind not in ("deletion", "insertion"):
        raise ValueError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"Expected a preprocessed image [1, 3, H, W], got {tuple(image.shape)}")
    substrate = substrate or DEFAULT_SUBSTRATES[kind]
    image = image.detach().float().cpu()
    H, W = image.shape[-2:]
    order = pixel_order(_as_heatmap(heatmap, (H, W)))
    base = substrate_for(image, substrate)
    src, dst = (image, base) if kind == "deletion" else (base, image)
    counts = np.round(np.linspace(0, H * W, steps + 1)).astype(int)
    rank = torch.empty(H * W, dtype=torch.long)
    rank[order] = torch.arange(H * W)
    changed = rank[None, :] < torch.as_tensor(counts)[:, None]  # [K+1, H*W]
    changed = changed.view(-1, 1, H, W)
    batch = torch.where(changed, dst, src)  # [K+1, 3, H, W]
    scores = similarities(model, batch, text_feature, batch_size)
    fractions = counts / float(H * W)
    return Curve(kind=kind, fractions=fractions, scores=scores, auc=auc(fractions, scores))


def deletion_curve(model, image, text_feature, heatmap, **kwargs) -> Curve:
    return perturbation_curve(model, image, text_feature, heatmap, kind="deletion", **kwargs)


def insertion_curve(model, image, text_feature, heatmap, **kwargs) -> Curve:
    return perturbation_curve(model, image, text_feature, heatmap, kind="insertion", **kwargs)


def _mask_and_map(heatmap, mask) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"A mask must be 2-D, got shape {mask.shape}")
    h = _as_heatmap(heatmap, mask.shape).numpy().astype(np.float64)
    if (h < 0).any():
        raise ValueError("Heatmaps for energy/pointing must be non-negative")
    return h, mask


def energy_in_mask(heatmap, mask) -> float:
    """Fraction of heatmap mass inside ``mask`` (heatmap resized to the mask); NaN for an all-zero heatmap."""
    h, mask = _mask_and_map(heatmap, mask)
    total = h.sum()
    return float(h[mask].sum() / total) if total > 0 else float("nan")


def pointing_game(heatmap, mask, tolerance: float = POINTING_TOLERANCE_PX) -> float:
    """1.0 if the heatmap's maximum lies within ``tolerance`` pixels of ``mask`` (Zhang et al. 2016: 15 px), else
    0.0; NaN for a constant heatmap.

    The heatmap is resized to the mask; distances are Euclidean, in the mask's pixels. ``tolerance=0`` is the
    strict game (the maximum inside the mask).
    """
    from scipy.ndimage import distance_transform_edt

    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
    h, mask = _mask_and_map(heatmap, mask)
    if h.max() == h.min():
        return float("nan")
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    if mask[y, x]:
        return 1.0
    if tolerance == 0 or not mask.any():
        return 0.0
    distance = distance_transform_edt(~mask)  # to the nearest mask pixel
    return float(distance[y, x] <= tolerance)
