"""The MedGrad E-CLIP entropy weight: local Shannon entropy (bits) of the grey model-input image.

Steps: de-normalise the preprocessed tensor back to 8-bit RGB, convert to 8-bit grey (ITU-R 601-2
luma, as PIL ``convert("L")`` and OpenCV), run scikit-image's rank entropy with a disk footprint
(``skimage.filters.rank.entropy`` returns base-2 entropy, i.e. bits, in [0, 8]), mean-pool over each
patch, min-max to [0, 1] (a constant map gives zeros). It depends on the image only: compute it once.
"""

from __future__ import annotations

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from skimage.filters.rank import entropy as rank_entropy
from skimage.morphology import disk

from skinapp.explain.base import minmax

#: Default disk radius (pixels on the model-input image).
ENTROPY_RADIUS = 5
_LUMA = np.array([0.299, 0.587, 0.114])


def denormalise_to_uint8(image: torch.Tensor, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> np.ndarray:
    """Preprocessed tensor [1, 3, H, W] or [3, H, W] -> uint8 RGB [H, W, 3]."""
    x = image.detach().float().cpu()
    if x.ndim == 4:
        x = x[0]
    x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def to_grey_uint8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 grey [H, W] (ITU-R 601-2 luma)."""
    return np.clip(np.round(rgb.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)


def local_entropy(grey: np.ndarray, radius: int = ENTROPY_RADIUS) -> np.ndarray:
    """Local Shannon entropy in bits [H, W] (float) of a uint8 grey image, disk footprint of ``radius``."""
    if radius < 1:
        raise ValueError(f"entropy radius must be >= 1 pixel, got {radius}")
    return rank_entropy(grey, disk(radius)).astype(np.float64)


def entropy_weight(image: torch.Tensor, grid: tuple[int, int], radius: int = ENTROPY_RADIUS,
                   mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> torch.Tensor:
    """Entropy weight w_e [gh, gw] in [0, 1] of a preprocessed image tensor [1, 3, H, W].

    The image size must be a multiple of the grid (each cell is one patch).
    """
    grey = to_grey_uint8(denormalise_to_uint8(image, mean, std))
    H, W = grey.shape
    gh, gw = grid
    if H % gh or W % gw:
        raise ValueError(f"Image {H}x{W} does not split into a {gh}x{gw} patch grid")
    ent = torch.from_numpy(local_entropy(grey, radius))
    pooled = ent.view(gh, H // gh, gw, W // gw).mean(dim=(1, 3))
    return minmax(pooled.flatten()).view(gh, gw).float()
