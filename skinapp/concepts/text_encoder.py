"""Small offline BERT directories for Grounding DINO's text encoder (no download, ever).

Grounding DINO builds its text branch with ``AutoTokenizer.from_pretrained(dir)`` and
``BertModel.from_pretrained(dir)``. The official model uses bert-base-uncased; tests and the "tiny"
profile point it at a directory written here instead: a BERT config, a ``vocab.txt`` that covers the
special tokens, the caption separators ("." and "?"), every lowercase word (letters plus "##" letter
pieces, so nothing maps to [UNK]), the default prompt words and common word pieces, and seeded random
weights in ``model.safetensors``.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

import torch

from skinapp.concepts.types import DEFAULT_PROMPTS

logger = logging.getLogger(__name__)

#: BERT shapes as data. "tiny" is for tests and the tiny detector profile; "bert-base" has the
#: shapes of bert-base-uncased (only the vocabulary is small), for timing the full detector.
TEXT_ENCODER_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_PUNCTUATION = (".", "?", ",", "-", "/", "(", ")", "'")
_COMMON_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "or", "skin", "body", "part", "mole", "rash",
    "spot", "patch", "wound", "scar", "nail", "lip", "eye", "ear", "nose", "mouth", "foot", "feet", "left",
    "right", "upper", "lower", "red", "dark", "brown", "blue", "white", "black", "pink",
)
_COMMON_PIECES = ("##s", "##es", "##ed", "##ing", "##er", "##ly", "##ion", "##al", "##ous", "##ic")


def tiny_vocabulary() -> list[str]:
    """The vocabulary written to ``vocab.txt``: specials first ([PAD] has id 0), no duplicates."""
    letters = list(string.ascii_lowercase)
    words = [*_SPECIAL_TOKENS, *_PUNCTUATION, *string.digits, *letters, *(f"##{c}" for c in letters),
             *_COMMON_PIECES, *_COMMON_WORDS, *(p.lower() for p in DEFAULT_PROMPTS)]
    return list(dict.fromkeys(words))


def _config(vocab_size: int, shape: str) -> dict:
    return dict(
        model_type="bert", architectures=["BertModel"], vocab_size=vocab_size, max_position_embeddings=512,
        type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0, **TEXT_ENCODER_SHAPES[shape],
    )


def _is_written(directory: Path, vocab_text: str, config: dict) -> bool:
    try:
        same_vocab = (directory / "vocab.txt").read_text(encoding="utf-8") == vocab_text
        on_disk = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same_shape = all(on_disk.get(k) == v for k, v in config.items() if k != "architectures")
    return same_vocab and same_shape and (directory / "model.safetensors").is_file()


def write_tiny_text_encoder(directory: str | Path, shape: str = "tiny", seed: int = 0,
                            vocab_file: str | Path | None = None) -> Path:
    """Write an offline BERT directory that ``from_pretrained`` loads; idempotent.

    Args:
        directory: where to write ``config.json``, ``vocab.txt``, ``tokenizer_config.json`` and
            ``model.safetensors`` (created if missing).
        shape: a key of TEXT_ENCODER_SHAPES.
        seed: seed of the random weights (the same seed writes the same weights).
        vocab_file: a WordPiece ``vocab.txt`` to use (e.g. the real bert-base-uncased one, 30,522 tokens);
            default :func:`tiny_vocabulary`.

    Returns:
        The directory. If it already holds the same vocabulary, config and a weights file, nothing is
        rewritten.
    """
    if shape not in TEXT_ENCODER_SHAPES:
        raise ValueError(f"unknown text encoder shape {shape!r}; choose one of {sorted(TEXT_ENCODER_SHAPES)}")
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    if vocab_file is None:
        vocab_text = "\n".join(tiny_vocabulary()) + "\n"
    else:
        vocab_text = Path(vocab_file).read_text(encoding="utf-8")
    vocab = vocab_text.rstrip("\n").split("\n")
    config = _config(len(vocab), shape)
    if _is_written(directory, vocab_text, config):
        return directory

    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(BertConfig(**config))
    model.save_pretrained(directory)  # config.json + model.safetensors
    (directory / "vocab.txt").write_text(vocab_text, encoding="utf-8")
    tokenizer_config = dict(tokenizer_class="BertTokenizer", do_lower_case=True, model_max_length=512)
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    logger.info("wrote %s BERT text encoder (%d tokens) to %s", shape, len(vocab), directory)
    return directory
