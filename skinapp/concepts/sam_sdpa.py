"""SAM's image-encoder attention through ``torch.nn.functional.scaled_dot_product_attention``, switchable.

segment_anything's ``Attention`` (``modeling/image_encoder.py``) computes ``softmax(q k^T * scale + B) v``
step by step, materialising the attention map, where ``B`` is the decomposed relative-position bias of
MViTv2 (Li et al., 2022; ``add_decomposed_rel_pos``): ``B[(i, j), (k, l)] = q_(i,j) . Rh[i, k] + q_(i,j) . Rw[j, l]``
with ``q`` unscaled. :func:`sdpa_forward` computes the same thing in one fused call, with that bias passed as
the additive ``attn_mask`` (shape [B, heads, HW, HW]); the attention scale is SDPA's default ``head_dim**-0.5``,
the one SAM uses.

:func:`use_sdpa` swaps the forward of every ``Attention`` module of an encoder in place (an instance attribute,
so weights, state-dict keys and other encoders are untouched) and swaps it back when called with False.
Agreement with the original (fp32 and bf16) is checked in ``tests/test_precision.py`` and by the benchmark.
"""

from __future__ import annotations

import os
import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

ENV = "SKINAPP_SAM_SDPA"


def sdpa_default(setting: bool | str | None = None) -> bool:
    """Whether SAM's encoder attention uses SDPA: ``setting`` (bool, or "auto" | "on" | "off"); None reads
    ``$SKINAPP_SAM_SDPA`` (default "auto" = on: it agrees with the original in fp32 and bf16 and was faster in
    every measurement, README Performance).

    Raises:
        ValueError: an unknown setting.
    """
    if isinstance(setting, bool):
        return setting
    setting = (setting or os.environ.get(ENV) or "auto").lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{ENV} must be auto, on or off; got {setting!r}")
    return setting != "off"


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
    """The additive attention bias of ``add_decomposed_rel_pos`` for self-attention on an H x W grid.

    Args:
        q: unscaled queries [B, heads, H*W, C].
        rel_pos_h, rel_pos_w: the module's tables [2H-1, C] and [2W-1, C].
        size: (H, W).

    Returns:
        [B, heads, H*W, H*W] bias in ``q``'s dtype.
    """
    h, w = size
    b, n_heads, _, c = q.shape
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # [H, H, C]
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # [W, W, C]
    r_q = q.reshape(b * n_heads, h, w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)  # [B*heads, H, W, H]
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)  # [B*heads, H, W, W]
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]  # [B*heads, H, W, H, W]
    return bias.reshape(b, n_heads, h * w, h * w)


def sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` with one fused SDPA call. x: [B, H, W, dim] -> [B, H, W, dim]."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each [B, heads, HW, C]
    bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale: head_dim**-0.5, as self.scale
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_sdpa(encoder: nn.Module, enabled: bool = True) -> int:
    """Switch every segment_anything ``Attention`` in ``encoder`` to :func:`sdpa_forward` (or back).

    Returns:
        The number of attention modules switched.
    """
    n = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            if enabled:
                module.forward = types.MethodType(sdpa_forward, module)
            else:
                module.__dict__.pop("forward", None)
            n += 1
    return n


def sdpa_enabled(encoder: nn.Module) -> bool:
    """Whether the encoder's attention modules run :func:`sdpa_forward`."""
    return any(isinstance(m, Attention) and "forward" in m.__dict__ for m in encoder.modules())
