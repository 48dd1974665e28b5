"""Grounding DINO's CPU speed levers: bf16 autocast by scope, applied to groundingdino's own modules in place.

Scopes (``SKINAPP_GDINO_BF16`` = ``auto`` | ``off`` | ``backbone`` | ``transformer``):
    "off": everything float32.
    "backbone": the Swin backbone and the BERT text encoder under bf16 autocast.
    "transformer": also every encoder layer (deformable, image-text fusion, text self-attention) and decoder layer;
        inside them each multi-scale deformable attention (``MSDeformAttn``: its projections and the bilinear
        sampling) is kept float32. (groundingdino's own decoder FFN turns CUDA autocast off, but not CPU autocast,
        so under this scope it runs in bf16 on a CPU.)
Outputs of each bf16 module come back float32, so input projections, the query selection, the box refinement
and the class/box heads stay float32 in every scope.

``auto`` is "off": measured on this project's 2-core CPU (``python -m skinapp.bench``, README Performance), neither
scope kept the same boxes (26 of the top 30 random-weight boxes matched, IoU 1.0; sigmoid logits moved by up to
0.999 because random-weight logits are large, so a small relative change flips them), and the gain was unclear
(1.0x and 1.4x for "backbone" in two runs on the loaded machine). Random weights make box agreement fragile;
the check must be repeated with the official checkpoint before a scope becomes the default.
"""

from __future__ import annotations

import os

from torch import nn

from skinapp.precision import restore_forward, run_in_bf16, run_in_fp32

ENV = "SKINAPP_GDINO_BF16"
SCOPES = ("off", "backbone", "transformer")


def resolve_scope(device, setting: str | None = None) -> str:
    """The bf16 scope on a CPU ``device`` from ``setting`` (None: ``$SKINAPP_GDINO_BF16``, default "auto" = "off").

    Raises:
        ValueError: an unknown setting.
    """
    setting = (setting or os.environ.get(ENV) or "auto").lower()
    if setting not in ("auto", *SCOPES):
        raise ValueError(f"{ENV} must be auto, {', '.join(SCOPES)}; got {setting!r}")
    return "off" if setting == "auto" else setting


def _bf16_modules(model: nn.Module, scope: str) -> list[nn.Module]:
    modules = [model.backbone[0], model.bert]  # Swin (the Joiner's position encoding stays fp32), BERT
    if scope == "transformer":
        enc, dec = model.transformer.encoder, model.transformer.decoder
        modules += [*enc.layers, *enc.fusion_layers, *enc.text_layers, *dec.layers]
    return modules


def _deformable_attention(model: nn.Module) -> list[nn.Module]:
    from groundingdino.models.GroundingDINO.ms_deform_attn import MultiScaleDeformableAttention

    return [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]


def set_bf16_scope(model: nn.Module, scope: str, device) -> None:
    """Put groundingdino's ``GroundingDINO`` ``model`` in one bf16 ``scope`` (see module docstring), replacing any
    earlier scope.

    Raises:
        ValueError: an unknown scope.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown bf16 scope {scope!r}; choose one of {SCOPES}")
    for module in _bf16_modules(model, "transformer") + _deformable_attention(model):
        restore_forward(module)
    model._skinapp_bf16_scope = scope
    if scope == "off":
        return
    for module in _bf16_modules(model, scope):
        run_in_bf16(module, device)
    if scope == "transformer":
        for module in _deformable_attention(model):
            run_in_fp32(module, device)


def bf16_scope(model: nn.Module) -> str:
    """The scope :func:`set_bf16_scope` last set ("off" when none)."""
    return getattr(model, "_skinapp_bf16_scope", "off")
