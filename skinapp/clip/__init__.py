"""CLIP models (open_clip ViT) for phrase explanations: builders, checkpoint I/O, text encoding."""

from skinapp.clip.model import (
    CLIP_CONFIGS,
    ClipBundle,
    build_clip,
    load_clip_checkpoint,
    save_clip_checkpoint,
)

__all__ = ["CLIP_CONFIGS", "ClipBundle", "build_clip", "load_clip_checkpoint", "save_clip_checkpoint"]
