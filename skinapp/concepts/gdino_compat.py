"""Run groundingdino-py 0.4.0 (written for transformers 4) on transformers 5.

``apply()`` adapts groundingdino's ``BertModelWarper`` in place, without touching site-packages. It is
idempotent. The adapter follows what the installed BERT modules accept (their signatures), not version
numbers. Incompatibilities handled:

1. ``BertModelWarper.__init__`` copies ``get_extended_attention_mask``, ``invert_attention_mask`` and
   ``get_head_mask`` from the ``BertModel``; transformers 5 removed these helpers, so building GroundingDINO
   raises ``AttributeError``. ``apply()`` binds transformers-4-style helpers onto the model first.
2. ``BertModelWarper.forward`` is replaced by :func:`warper_forward`, an encoder-only forward that passes the
   embeddings and the encoder only the keywords they take in every transformers 5 release:

   - the embeddings' "how many cached tokens precede" keyword was renamed (``past_key_values_length`` until
     5.23, ``cache_length`` from 5.24); an encoder without a cache needs 0, the default under either name,
     so the keyword is never passed;
   - the encoder's ``past_key_values=`` keyword is deprecated (renamed ``cache``, removal announced for 5.40)
     and its output no longer has ``past_key_values``; no cache keyword is passed and only
     ``last_hidden_state`` is read;
   - GroundingDINO's sub-sentence attention mask is a bool ``[bs, n, n]`` tensor, and torch rejects
     ``1.0 - bool``: :func:`get_extended_attention_mask` casts to float first, as transformers 4 did.
3. Features GroundingDINO never uses and transformers 5's BERT cannot honour (head masks, caches, cross
   attention, attention/hidden-state outputs) are refused with ``ValueError`` rather than silently ignored.

:func:`check_signatures` states the assumptions about the installed modules and fails loudly when a release
breaks them; ``apply()`` calls it.
"""

from __future__ import annotations

import functools
import inspect
import types

import torch
from torch import nn

_MARK = "_skinapp_transformers5_compat"
#: keywords the embeddings must take (the cache-length keyword, whatever its name, must have a default).
EMBEDDING_KEYWORDS = ("input_ids", "token_type_ids", "position_ids", "inputs_embeds")


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


def check_signatures(embeddings_cls: type | None = None, encoder_cls: type | None = None) -> None:
    """Fail loudly if the installed BERT modules no longer fit :func:`warper_forward`.

    Embeddings must take ``input_ids``, ``token_type_ids``, ``position_ids`` and ``inputs_embeds`` by keyword,
    with every other parameter defaulted (the cache length among them); the encoder must take the hidden
    states positionally and ``attention_mask`` by keyword.

    Raises:
        RuntimeError: naming the class and what is missing.
    """
    if embeddings_cls is None or encoder_cls is None:
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

        embeddings_cls, encoder_cls = embeddings_cls or BertEmbeddings, encoder_cls or BertEncoder
    params = inspect.signature(embeddings_cls.forward).parameters
    missing = [k for k in EMBEDDING_KEYWORDS if k not in params]
    required = [p.name for p in list(params.values())[1:]
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing or required:
        raise RuntimeError(f"{embeddings_cls.__name__}.forward{inspect.signature(embeddings_cls.forward)} no longer "
                           f"fits the GroundingDINO adapter (missing {missing}, required {required})")
    params = inspect.signature(encoder_cls.forward).parameters
    if "attention_mask" not in params:
        raise RuntimeError(f"{encoder_cls.__name__}.forward{inspect.signature(encoder_cls.forward)} takes no "
                           "attention_mask; the GroundingDINO adapter needs one")


def warper_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                   head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                   past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                   return_dict=None):
    """``BertModelWarper.forward`` for an encoder without a cache, on any transformers 5 BERT.

    Args:
        input_ids: [bs, n] token ids (or ``inputs_embeds`` [bs, n, d]).
        attention_mask: [bs, n] or [bs, n, n] keep-mask (GroundingDINO's sub-sentence mask is [bs, n, n]).
        token_type_ids, position_ids: [bs, n] (GroundingDINO restarts positions at each phrase).

    Returns:
        ``BaseModelOutputWithPoolingAndCrossAttentions`` with ``last_hidden_state`` [bs, n, d] and
        ``pooler_output`` [bs, d] (or the tuple of both when ``return_dict=False``).

    Raises:
        ValueError: for a head mask, a cache, cross-attention inputs or attention/hidden-state outputs.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    unsupported = {"head_mask": head_mask, "encoder_hidden_states": encoder_hidden_states,
                   "encoder_attention_mask": encoder_attention_mask, "past_key_values": past_key_values}
    unsupported = [k for k, v in unsupported.items() if v is not None]
    unsupported += [k for k, v in {"use_cache": use_cache, "output_attentions": output_attentions,
                                   "output_hidden_states": output_hidden_states}.items() if v]
    if unsupported:
        raise ValueError(f"the GroundingDINO BERT adapter does not support {', '.join(unsupported)}")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
    device = input_ids.device if input_ids is not None else inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(shape, device=device)
    if token_type_ids is None:
        token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
    hidden = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                             inputs_embeds=inputs_embeds)
    additive = get_extended_attention_mask(self, attention_mask, dtype=hidden.dtype)
    sequence_output = self.encoder(hidden, attention_mask=additive)[0]
    pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
    if return_dict is False:
        return sequence_output, pooled_output
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence_output,
                                                        pooler_output=pooled_output)


def is_applied() -> bool:
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper

    return bool(getattr(BertModelWarper, _MARK, False))


def apply() -> None:
    """Adapt ``groundingdino``'s ``BertModelWarper`` to transformers 5 (idempotent; see the module docstring)."""
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper

    if getattr(BertModelWarper, _MARK, False):
        return
    check_signatures()
    original_init, original_forward = BertModelWarper.__init__, BertModelWarper.forward

    @functools.wraps(original_init)
    def init(self, bert_model):
        original_init(self, add_mask_helpers(bert_model))

    @functools.wraps(original_forward)
    def forward(self, *args, **kwargs):
        return warper_forward(self, *args, **kwargs)

    BertModelWarper.__init__ = init
    BertModelWarper.forward = forward
    setattr(BertModelWarper, _MARK, True)
