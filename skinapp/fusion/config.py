"""Fusion model configurations as data (paper settings), keyed by name.

A config is a plain dict so it can be stored verbatim in a checkpoint's JSON sidecar:

    n_concepts:  concepts per image after padding/truncation (25 SCIN, 30 NTD-like data).
    top_k:       instances averaged per class by the multi-instance pooling (2 SCIN, 5 NTD).
    dim:         width of every instance after the encoders (256).
    global_dim:  width of the global ViT tokens (768 for ViT-B/16; the tiny profile is narrower).
    concept_dim: width of one concept feature (256, SAM's embedding channels).
    heads:       cross-attention heads (8); layers: cross-attention layers (1).
    attn_dropout: dropout on the attention output before the residual.
    mlp_ratio:   hidden width of the post-attention MLP as a multiple of dim.
    classifier_hidden: channel widths of the first two of the three classifier convolutions.
    classifier_dropout: the classifier's two dropouts (0.7).
    pad_noise:   std of the noise added to padded copies, relative to the copied feature's RMS.
    pool_padded: how top-k pooling treats padded copies (see :data:`POOL_PADDED`): "real_first" (ours: a
                 padded copy fills a slot only when an image has fewer than k real concepts) or "all" (the
                 paper's plain reading: padded copies are instances like any other). Configs read from older
                 checkpoints lack the key and mean "real_first".
"""

from __future__ import annotations

import copy
from typing import Any

_PAPER: dict[str, Any] = {
    "dim": 256,
    "global_dim": 768,
    "concept_dim": 256,
    "heads": 8,
    "layers": 1,
    "attn_dropout": 0.1,
    "mlp_ratio": 4.0,
    "classifier_hidden": [256, 128],
    "classifier_dropout": 0.7,
    "pad_noise": 0.05,
    "pool_padded": "real_first",
}

#: Values of the ``pool_padded`` config key.
POOL_PADDED = ("real_first", "all")

FUSION_CONFIGS: dict[str, dict[str, Any]] = {
    "scin": {**_PAPER, "n_concepts": 25, "top_k": 2},
    "ntd": {**_PAPER, "n_concepts": 30, "top_k": 5},
    # Tests and demo mode: the same architecture on the tiny global encoder (see encoders.TINY_VIT).
    "tiny": {**_PAPER, "n_concepts": 8, "top_k": 2, "global_dim": 64},
}


def fusion_config(name_or_config: str | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A copy of a named config (or of a given dict) with ``overrides`` applied."""
    if isinstance(name_or_config, str):
        if name_or_config not in FUSION_CONFIGS:
            raise ValueError(f"Unknown fusion config {name_or_config!r}; choose one of {sorted(FUSION_CONFIGS)}.")
        base = FUSION_CONFIGS[name_or_config]
    else:
        base = name_or_config
    cfg = copy.deepcopy(base)
    unknown = set(overrides) - set(_PAPER) - {"n_concepts", "top_k"}
    if unknown:
        raise ValueError(f"Unknown fusion config keys: {sorted(unknown)}")
    cfg.update(overrides)
    if cfg["top_k"] < 1 or cfg["n_concepts"] < 1:
        raise ValueError("top_k and n_concepts must be >= 1.")
    if cfg.get("pool_padded", "real_first") not in POOL_PADDED:
        raise ValueError(f"pool_padded must be one of {POOL_PADDED}; got {cfg['pool_padded']!r}.")
    if cfg["dim"] % cfg["heads"]:
        raise ValueError(f"dim {cfg['dim']} must be divisible by heads {cfg['heads']}.")
    return cfg
