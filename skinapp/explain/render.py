"""Turn raw patch maps into display heatmaps: normalise, upsample, colour-map, blend."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps

from skinapp.explain.base import minmax

#: Colour map for overlays (the Grad E-CLIP and MedGrad figures use jet).
COLORMAP = "jet"


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each map of [T, gh, gw] to [0, 1]; a constant map stays all zeros."""
    return minmax(maps.reshape(maps.shape[0], -1)).view_as(maps)


def upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[gh, gw] -> float32 [H, W] by bilinear interpolation (values stay in the input's range)."""
    up = F.interpolate(grid_map[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up[0, 0].clamp(0, 1).numpy()


def colourise(heat: np.ndarray, cmap: str = COLORMAP) -> np.ndarray:
    """float [H, W] in [0, 1] -> uint8 RGB [H, W, 3]."""
    rgba = colormaps[cmap](np.clip(heat, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def blend(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = COLORMAP) -> np.ndarray:
    """Overlay a heatmap [H, W] on a uint8 RGB image [H, W, 3]: (1 - alpha) * image + alpha * colour."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 RGB image [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}")
    colour = colourise(heat, cmap).astype(np.float32)
    out = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * colour
    return np.clip(out.round(), 0, 255).astype(np.uint8)
