"""A CLIP checkpoint's architecture, established, never guessed: from its weights where their shapes say it,
from its stated config where they cannot, refused where neither does.

Tensor shapes fix the widths, depths, patch size, image size, context length and vocabulary; a strict
``load_state_dict`` then catches every parameter that is present or missing. Shapes cannot tell the activation
(GELU vs QuickGELU, OpenAI's), nor how a width is split into attention heads: the same tensors fit any choice,
and a wrong one gives a model that runs, and answers wrongly. Those are :data:`MUST_BE_STATED`. A few
behaviour switches without parameters (:data:`DEFAULTED`) fall back to open_clip's defaults, which match
OpenAI's CLIP; when a config leaves them out the loader says so.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

#: (path, what to tell the user): fields a checkpoint config must state because no tensor shape reveals them.
MUST_BE_STATED: tuple[tuple[str, str], ...] = (
    ("quick_gelu", "true for OpenAI-trained CLIPs, false for most open_clip-trained ones"),
    ("vision_cfg.head_width", "vision width / number of heads, 64 for ViT-B/16 and ViT-L/14"),
    ("text_cfg.heads", "text attention heads, 8 for ViT-B/16, 12 for ViT-L/14"),
)
#: fields without parameters whose open_clip default (OpenAI's behaviour) is used, and said, when absent.
DEFAULTED: dict[str, Any] = {
    "vision_cfg.pool_type": "tok", "vision_cfg.final_ln_after_pool": False,
    "text_cfg.pool_type": "argmax", "text_cfg.no_causal_mask": False, "text_cfg.final_ln_after_pool": False,
}


def _blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state for m in [pattern.match(k)] if m})


def shapes_from_weights(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture fields read off an open_clip ``CLIP`` state dict, as dotted paths.

    Raises:
        ValueError: a tensor every open_clip ViT CLIP has is missing (not an open_clip ViT CLIP state dict).
    """
    needed = ("visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight",
              "positional_embedding", "text_projection", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "transformer.resblocks.0.mlp.c_fc.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"not an open_clip ViT CLIP state dict (missing {missing})")
    conv = state["visual.conv1.weight"]  # [width, 3, patch, patch]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    v_width, t_width = conv.shape[0], state["token_embedding.weight"].shape[1]
    return {
        "embed_dim": state["text_projection"].shape[1],
        "vision_cfg.width": v_width, "vision_cfg.patch_size": conv.shape[-1],
        "vision_cfg.image_size": grid * conv.shape[-1],
        "vision_cfg.layers": _blocks(state, "visual.transformer.resblocks."),
        "vision_cfg.mlp_ratio": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / v_width,
        "text_cfg.width": t_width, "text_cfg.vocab_size": state["token_embedding.weight"].shape[0],
        "text_cfg.context_length": state["positional_embedding"].shape[0],
        "text_cfg.layers": _blocks(state, "transformer.resblocks."),
        "text_cfg.mlp_ratio": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width,
    }


def _get(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def resolve_config(config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> tuple[dict, list[str]]:
    """The full constructor config for ``state``, and what was filled in (for the log and provenance).

    Args:
        config: the checkpoint's stated config (open_clip CLIP constructor arguments: ``embed_dim``,
            ``vision_cfg``, ``text_cfg``, ``quick_gelu``), possibly partial.
        state: its weights.
        source: the file's name, for messages.

    Returns:
        (config, notes): fields read from the weights or defaulted are filled in; ``notes`` says which.

    Raises:
        ValueError: a :data:`MUST_BE_STATED` field is absent, or a stated field contradicts the weights.
    """
    config = copy.deepcopy(config)
    absent = [f"'{path}' ({hint})" for path, hint in MUST_BE_STATED if _get(config, path) is None]
    if absent:
        raise ValueError(f"{source}: its config does not state {', '.join(absent)}; the weights cannot tell, and "
                         "a wrong guess gives a model that runs but answers wrongly. Add them to its JSON config.")
    notes = []
    for path, value in shapes_from_weights(state).items():
        stated = _get(config, path)
        if stated is None:
            _set(config, path, value)
            notes.append(f"{path}={value} (from the weights)")
        elif float(stated) != float(value):
            raise ValueError(f"{source}: its config says {path}={stated} but the weights have {value}")
    for path, value in DEFAULTED.items():
        if _get(config, path) is None:
            _set(config, path, value)
            notes.append(f"{path}={value!r} (open_clip default, not stated)")
    return config, notes
