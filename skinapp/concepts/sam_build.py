"""SAM's builds as data and their checkpoints: :data:`SAM_CONFIGS`, :func:`build_sam`, :func:`load_sam_checkpoint`.

The builders follow segment_anything's ``build_sam.py`` (vit_b / vit_l / vit_h) from segment_anything's own
modules, plus a small "tiny" build for tests and demo mode. :mod:`skinapp.concepts.segmenter` re-exports them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from skinapp.checkpoints import load_tensors

#: Prompt encoder / mask decoder settings, the same for every official variant.
_SAM_DECODER = {"prompt_embed_dim": 256, "decoder_depth": 2, "decoder_mlp_dim": 2048, "decoder_num_heads": 8}
_SAM_OFFICIAL = {"img_size": 1024, "patch_size": 16, "window_size": 14, **_SAM_DECODER}

#: Build settings per variant (segment_anything's ``build_sam.py`` for vit_b/l/h).
SAM_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": (2, 5, 8, 11), **_SAM_OFFICIAL},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (5, 11, 17, 23), **_SAM_OFFICIAL},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (7, 15, 23, 31), **_SAM_OFFICIAL},
    # Same classes, small encoder and 256 px input (16x16 embedding grid); features stay 256-d.
    "tiny": {"encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": (1,),
             "img_size": 256, "patch_size": 16, "window_size": 8, **_SAM_DECODER, "decoder_mlp_dim": 256},
}


def build_sam(config: dict[str, Any]) -> Sam:
    """A randomly initialised ``Sam`` in eval mode from one :data:`SAM_CONFIGS` entry."""
    img_size, patch, dim = config["img_size"], config["patch_size"], config["prompt_embed_dim"]
    grid = img_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config["encoder_depth"], embed_dim=config["encoder_embed_dim"], img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config["encoder_num_heads"],
            patch_size=patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(config["encoder_global_attn_indexes"]), window_size=config["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config["decoder_depth"], embedding_dim=dim,
                                          mlp_dim=config["decoder_mlp_dim"], num_heads=config["decoder_num_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    return load_tensors(path)


def _describe_state(state: dict[str, torch.Tensor]) -> str:
    """What SAM variant a state dict looks like, for error messages."""
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is None:
        return "not a SAM checkpoint (no image_encoder.patch_embed weights)"
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    width = int(proj.shape[0])
    for name, cfg in SAM_CONFIGS.items():
        if cfg["encoder_embed_dim"] == width and cfg["encoder_depth"] == depth:
            return f"a SAM {name} checkpoint (encoder width {width}, depth {depth})"
    return f"a SAM checkpoint of an unknown variant (encoder width {width}, depth {depth})"


def load_sam_checkpoint(sam: Sam, path: str | Path, variant: str) -> None:
    """Load an official-format state dict into ``sam`` strictly; a mismatch raises ``ValueError``."""
    path = Path(path)
    state = _read_state_dict(path)
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        first = (missing + unexpected + wrong_shape)[0]
        raise ValueError(
            f"{path.name} does not fit SAM variant {variant!r}: it looks like {_describe_state(state)}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} wrongly shaped tensors "
            f"(first: {first})")
    sam.load_state_dict(state, strict=True)
