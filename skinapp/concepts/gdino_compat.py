"""Run groundingdino-py 0.4.0 (written for transformers 4) on transformers 5 and recent torch.

``apply()`` adapts groundingdino's ``BertModelWarper`` in place, without touching site-packages. It is
idempotent and a no-op on whatever transformers 4 already provides. Incompatibilities fixed:

1. ``BertModelWarper.__init__`` copies ``get_extended_attention_mask``, ``invert_attention_mask`` and
   ``get_head_mask`` from the ``BertModel``; transformers 5 removed these helpers (masks are now built
   inside ``BertModel.forward``), so building GroundingDINO raises ``AttributeError``. The warper calls
   the encoder directly (to pass its [bs, n, n] sub-sentence mask, which ``BertModel.forward`` in
   transformers 5 does not accept), so it still needs them: ``apply()`` gives the model the
   transformers 4 behaviour for an encoder.
2. GroundingDINO's sub-sentence attention mask is a bool tensor, and torch rejects ``1.0 - bool``
   (NotImplementedError). The restored ``get_extended_attention_mask`` casts to float first, as
   transformers 4 did.
3. Head masking is gone from transformers 5's BERT: ``get_head_mask`` accepts only ``None`` (all that
   GroundingDINO passes) and raises ValueError otherwise, rather than silently ignoring a mask.
4. ``BertModelWarper.forward`` reads ``config.use_return_dict``, deprecated in transformers 5 (it
   warns and may go); the adapter passes ``return_dict=True``, which GroundingDINO expects anyway (it
   indexes ``bert_output["last_hidden_state"]``).

Checked and still compatible on transformers 5 (no change needed): ``AutoTokenizer.from_pretrained``
on a local BERT directory (returns the tokenizers-backed ``BertTokenizer``, so ``char_to_token`` and
offsets work); ``BertModel.from_pretrained`` on a local directory (it needs a weights file, see
``skinapp.concepts.text_encoder``); ``BertEmbeddings.forward(..., past_key_values_length=...)``; the
encoder call (unused ``head_mask``/``output_*`` keywords are swallowed by its ``**kwargs``; it returns
``last_hidden_state`` and ``past_key_values``); ``get_phrases_from_posmap`` (plain ``tokenizer.decode``).
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn

_MARK = "_skinapp_transformers5_compat"


def get_extended_attention_mask(model: nn.Module, attention_mask: torch.Tensor, input_shape=None,
                                device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Keep-mask -> additive mask, as transformers 4 did for an encoder.

    Args:
        attention_mask: [bs, n] or [bs, n, n], bool or 0/1, True/1 = attend.

    Returns:
        float [bs, 1, 1, n] or [bs, 1, n, n]: 0 where attended, the dtype's minimum elsewhere.
    """
    if getattr(model.config, "is_decoder", False):
        raise ValueError("the transformers-5 adapter only supports BERT as an encoder (is_decoder=False)")
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"attention_mask must be [bs, n] or [bs, n, n], got shape {tuple(attention_mask.shape)}")
    dtype = dtype or next(model.parameters()).dtype
    return (1.0 - extended.to(dtype)) * torch.finfo(dtype).min


def invert_attention_mask(model: nn.Module, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """Cross-attention keep-mask [bs, n] or [bs, m, n] -> additive float mask (transformers 4 behaviour)."""
    mask = encoder_attention_mask
    extended = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    dtype = next(model.parameters()).dtype
    return (1.0 - extended.to(dtype)) * torch.finfo(dtype).min


def get_head_mask(model: nn.Module, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False) -> list:
    """``[None] * num_hidden_layers``; transformers 5's BERT cannot mask heads, so a real mask is refused."""
    if head_mask is not None:
        raise ValueError("head_mask is not supported by BERT in transformers 5")
    return [None] * num_hidden_layers


_HELPERS = {
    "get_extended_attention_mask": get_extended_attention_mask,
    "invert_attention_mask": invert_attention_mask,
    "get_head_mask": get_head_mask,
}


def add_mask_helpers(bert_model: nn.Module) -> nn.Module:
    """Bind the transformers-4 helpers that ``bert_model`` lacks onto it (instance attributes only)."""
    for name, helper in _HELPERS.items():
        if not hasattr(bert_model, name):
            setattr(bert_model, name, types.MethodType(helper, bert_model))
    return bert_model


def is_applied() -> bool:
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper

    return bool(getattr(BertModelWarper, _MARK, False))


def apply() -> None:
    """Adapt ``groundingdino``'s ``BertModelWarper`` to transformers 5 (idempotent; see the module docstring)."""
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper

    if getattr(BertModelWarper, _MARK, False):
        return
    original_init, original_forward = BertModelWarper.__init__, BertModelWarper.forward

    @functools.wraps(original_init)
    def init(self, bert_model):
        original_init(self, add_mask_helpers(bert_model))

    @functools.wraps(original_forward)
    def forward(self, *args, return_dict=True, **kwargs):
        return original_forward(self, *args, return_dict=return_dict, **kwargs)

    BertModelWarper.__init__ = init
    BertModelWarper.forward = forward
    setattr(BertModelWarper, _MARK, True)
