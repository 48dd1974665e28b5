"""MedGrad E-CLIP (Kamal and Oates): Grad E-CLIP with lambda replaced by a local-entropy weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from skinapp.explain.base import ECLIP_MODES, Explainer, GradContext


class MedGradECLIP(Explainer):
    """H_i = ReLU(sum_c w_c v_ic w_e,i) = w_e,i * ReLU(sum_c w_c v_ic) since w_e >= 0.

    w and v are Grad E-CLIP's (``mode`` picks the real multi-head forward or the reference's one-head
    recomputation for w); w_e is the image's entropy weight on the patch grid (entropy.py), computed
    once per image pass.
    """

    name = "medgrad_eclip"

    def __init__(self, mode: str = "multihead"):
        if mode not in ECLIP_MODES:
            raise ValueError(f"Unknown eclip_mode {mode!r}; choose from {ECLIP_MODES}")
        self.mode = mode

    def __call__(self, ctx: GradContext) -> torch.Tensor:
        if ctx.entropy_weight is None:
            raise ValueError("MedGrad E-CLIP needs the entropy weight: run the image pass with entropy_radius set.")
        w, v = ctx.grad_o_cls(self.mode), ctx.patch_v
        w_e = ctx.entropy_weight.reshape(1, -1).to(w.dtype)  # [1, P]
        return ctx.to_grid(F.relu((w @ v.T) * w_e))
