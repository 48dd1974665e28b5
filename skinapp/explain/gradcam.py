"""Grad-CAM for CLIP's last vision block (the variant used in the MedGrad E-CLIP comparison)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from skinapp.explain.base import Explainer, GradContext

#: "reference": A = x_in (last block's input, before ln_1), weights averaged over ALL tokens including
#: the class token (the Grad E-CLIP authors' CLIP Grad-CAM). "patches": pytorch-grad-cam's ViT recipe,
#: A = ln_1's output with weights averaged over the patch tokens only.
GRADCAM_VARIANTS = ("reference", "patches")


class GradCAM(Explainer):
    """M_i = ReLU(sum_c w_c A_ic) over patch tokens, w_c = mean over tokens of dS/dA_c.

    Args:
        variant: "reference" (default) or "patches"; see :data:`GRADCAM_VARIANTS`.
    """

    name = "gradcam"

    def __init__(self, variant: str = "reference"):
        if variant not in GRADCAM_VARIANTS:
            raise ValueError(f"Unknown Grad-CAM variant {variant!r}; choose from {GRADCAM_VARIANTS}")
        self.variant = variant

    def __call__(self, ctx: GradContext) -> torch.Tensor:
        if self.variant == "reference":
            A, g = ctx.x_in.detach(), ctx.grad_tokens("x_in")  # [L, D], [T, L, D]
            w = g.mean(dim=1)
        else:
            A, g = ctx.X.detach(), ctx.grad_tokens("ln_1")
            w = g[:, 1:].mean(dim=1)
        return ctx.to_grid(F.relu(w @ A[1:].T))  # [T, P] -> [T, gh, gw]
