"""Grad E-CLIP (Zhao et al., ICML 2024): H_i = ReLU(sum_c w_c v_ic lambda_i)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from skinapp.explain.base import ECLIP_MODES, Explainer, GradContext


class GradECLIP(Explainer):
    """Grad E-CLIP on the last vision block.

    w_c = dS/do_cls,c (gradient at the class-token row of the attention output, before the
    out-projection); v = in-projection values of the patch tokens; lambda_i = min-max over patches of
    cos(q_cls, k_i) (raw in-projection q, k with bias, no softmax).

    Args:
        mode: "multihead" (default): the model's real attention heads; w from the real forward and
            lambda computed per head on that head's channels. "official": as the published code, the
            last block is recomputed as ONE head over all D channels (w from that forward, lambda
            from the D-wide cosine).
    """

    name = "grad_eclip"

    def __init__(self, mode: str = "multihead"):
        if mode not in ECLIP_MODES:
            raise ValueError(f"Unknown eclip_mode {mode!r}; choose from {ECLIP_MODES}")
        self.mode = mode

    def __call__(self, ctx: GradContext) -> torch.Tensor:
        w, v = ctx.grad_o_cls(self.mode), ctx.patch_v  # [T, D], [P, D]
        lam = ctx.qk_lambda(self.mode)
        if self.mode == "official":
            maps = (w @ v.T) * lam  # [T, P]
        else:
            H = lam.shape[0]
            T, D = w.shape
            per_head = torch.einsum("thd,phd->thp", w.view(T, H, D // H), v.view(-1, H, D // H))
            maps = (per_head * lam).sum(dim=1)
        return ctx.to_grid(F.relu(maps))
