"""Encode user phrases with a CLIP text tower: validation, a causal fast path and a per-phrase LRU cache.

Rules for phrases (applied by :func:`clean_phrases`):
    * Each phrase is stripped. A phrase that is empty or only whitespace (or not a string) raises
      ``ValueError`` naming its position: the UI must ask the user to fix it, nothing is skipped silently.
    * Phrases longer than :data:`MAX_PHRASE_CHARS` characters are cut to that many characters before
      tokenising (a guard against pasted essays), and every phrase is cut to the model's context
      (77 tokens for CLIP: start + 75 BPE tokens + end) the way open_clip's tokenizer does it.
      Either cut sets ``TextEncoding.truncated[i]`` so the UI can say so.
    * Any script works: CLIP's byte-level BPE encodes arbitrary Unicode.
    * Any number of phrases can be encoded; they run in batches of :data:`TEXT_BATCH`.

Fast path: CLIP's text transformer is causal and the feature is read at the end-of-text (EOT) token,
so it depends only on the tokens up to EOT. A batch is therefore run on its first ``n`` positions only,
``n`` = longest EOT position + 1, with the causal mask and positional embedding cut to ``n``. This
gives the same features as ``model.encode_text`` (up to float rounding) at a fraction of the cost for
short phrases. Models it does not apply to (no causal mask, or pooling not at EOT) use
``model.encode_text``.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from skinapp.cache import LRUCache

log = logging.getLogger(__name__)

#: Characters kept of one phrase before tokenising (77 tokens never need more for real text).
MAX_PHRASE_CHARS = 2000
#: Phrases encoded per text-tower batch.
TEXT_BATCH = 64
#: Entries kept in the per-phrase feature cache.
TEXT_CACHE_SIZE = 4096


@dataclass
class TextEncoding:
    """Text features of a list of phrases.

    Attributes:
        phrases: the cleaned phrases (stripped, possibly cut), in input order.
        features: float32 [T, E], L2-normalised.
        truncated: per phrase, True when it was cut (characters or tokens) before encoding.
        n_tokens: per phrase, BPE tokens before truncation (without start/end tokens).
    """

    phrases: list[str]
    features: torch.Tensor
    truncated: list[bool]
    n_tokens: list[int]


def clean_phrases(phrases: str | list[str] | tuple[str, ...]) -> tuple[list[str], list[bool]]:
    """Strip and validate phrases; returns (phrases, char_truncated). Raises ValueError on bad input."""
    if isinstance(phrases, str):
        phrases = [phrases]
    phrases = list(phrases)
    if not phrases:
        raise ValueError("No phrases given: type at least one phrase.")
    cleaned, cut = [], []
    for i, p in enumerate(phrases):
        if not isinstance(p, str):
            raise ValueError(f"Phrase {i + 1} is not text (got {type(p).__name__}).")
        p = p.strip()
        if not p:
            raise ValueError(f"Phrase {i + 1} is empty; remove it or type some words.")
        cut.append(len(p) > MAX_PHRASE_CHARS)
        cleaned.append(p[:MAX_PHRASE_CHARS].rstrip())
    return cleaned, cut


def _context_length(model: nn.Module, tokenizer) -> int:
    return int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))


def _token_counts(tokenizer, phrases: list[str]) -> list[int] | None:
    """BPE tokens per phrase without start/end tokens, when the tokenizer exposes ``encode``."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return None
    return [len(encode(p)) for p in phrases]


def fast_path_supported(model: nn.Module) -> bool:
    """True when the EOT-truncated fast path gives the same features as ``model.encode_text``."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(getattr(model, name, None) is not None for name in needed):
        return False
    mask = model.attn_mask
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    blocked = torch.isinf(mask) if mask.dtype != torch.bool else mask
    causal = bool((blocked == torch.ones_like(blocked).triu(1)).all())
    return causal and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")


def _eot_index(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    if getattr(model, "text_pool_type", "argmax") == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_tokens_fast(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features [T, E] from tokens [T, C], running only up to the longest EOT.

    Mirrors ``open_clip.CLIP.encode_text`` (token embedding + positional embedding, the causal
    transformer, ``ln_final``, pooling at EOT, ``text_projection``) on the first ``n`` positions.
    The transformer's layout (``batch_first``) is handled by the transformer itself.
    """
    eot = _eot_index(model, tokens)
    n = int(eot.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


class TextFeatureCache(LRUCache[torch.Tensor]):
    """Bounded LRU of normalised text features keyed by (model identity, phrase); thread-safe.

    Model identity is a per-object token held in a weak map, so a collected model can never hand its
    entries to a new model that reuses its ``id``. Fine-tuning a model in place does not invalidate
    entries: call :meth:`clear` after changing weights. The tokenizer is assumed fixed per model.
    """

    def __init__(self, maxsize: int = TEXT_CACHE_SIZE):
        super().__init__(maxsize)
        self._tokens: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self._counter = itertools.count()

    def model_token(self, model: nn.Module) -> int:
        with self._lock:
            if model not in self._tokens:
                self._tokens[model] = next(self._counter)
            return self._tokens[model]


#: The process-wide cache used by :func:`encode_texts` unless told otherwise.
TEXT_CACHE = TextFeatureCache()


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, phrases: str | list[str], *, fast: bool = True,
                 cache: TextFeatureCache | None = TEXT_CACHE, batch_size: int = TEXT_BATCH) -> TextEncoding:
    """Encode phrases with a CLIP text tower.

    Args:
        model: an open_clip CLIP (or anything with ``encode_text``).
        tokenizer: open_clip tokenizer: list[str] -> LongTensor [T, context_length].
        phrases: one phrase or a list (see the module docstring for the rules).
        fast: use the EOT-truncated fast path where it applies.
        cache: per-phrase feature cache; None disables caching.
        batch_size: phrases per text-tower batch.

    Returns:
        :class:`TextEncoding` with float32 L2-normalised features [T, E].
    """
    cleaned, char_cut = clean_phrases(phrases)
    context = _context_length(model, tokenizer)
    counts = _token_counts(tokenizer, cleaned)
    if counts is not None:
        for i, c in enumerate(counts):
            if c == 0:
                raise ValueError(f"Phrase {i + 1} ({cleaned[i]!r}) has no words the text model can read.")
        token_cut = [c + 2 > context for c in counts]
    else:
        token_cut = [False] * len(cleaned)
    truncated = [a or b for a, b in zip(char_cut, token_cut)]
    for i, t in enumerate(truncated):
        if t:  # the phrase itself is clinical text the user typed: not logged
            log.info("Phrase %d truncated to %d tokens", i + 1, context)

    key_model = cache.model_token(model) if cache is not None else -1
    out: list[torch.Tensor | None] = [cache.get((key_model, p)) if cache is not None else None for p in cleaned]
    todo = sorted({p for p, f in zip(cleaned, out) if f is None})
    use_fast = fast and fast_path_supported(model)
    device = next(model.parameters()).device
    new: dict[str, torch.Tensor] = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        tokens = tokenizer(chunk).to(device)
        feats = encode_tokens_fast(model, tokens) if use_fast else model.encode_text(tokens)
        feats = F.normalize(feats.float(), dim=-1).cpu()
        for p, f in zip(chunk, feats):
            new[p] = f
            if cache is not None:
                cache.put((key_model, p), f)
    features = torch.stack([f if f is not None else new[p] for p, f in zip(cleaned, out)])
    return TextEncoding(phrases=cleaned, features=features, truncated=truncated,
                        n_tokens=counts if counts is not None else [-1] * len(cleaned))
