"""CLIP models (open_clip ViT) for phrase explanations: builders, checkpoint I/O, text encoding."""

from skinapp.clip.model import (
    CLIP_CONFIGS,
    ClipBundle,
    build_clip,
    letterbox,
    load_clip_checkpoint,
    save_clip_checkpoint,
    whole_photo_preprocess,
)
from skinapp.clip.text import TEXT_CACHE, TextEncoding, TextFeatureCache, clean_phrases, encode_texts

__all__ = ["CLIP_CONFIGS", "TEXT_CACHE", "ClipBundle", "TextEncoding", "TextFeatureCache", "build_clip",
           "clean_phrases", "encode_texts", "letterbox", "load_clip_checkpoint", "save_clip_checkpoint",
           "whole_photo_preprocess"]
