"""Tiny dermatology CLIP checkpoints in their published formats, written by tests (no downloads).

* :func:`write_tiny_monet`: MONET's transformers ``CLIPModel`` directory (``save_pretrained``), ViT-L/14-shaped
  (14 px patches, 16x16 grid, 16 heads) at a tiny width, with ImageNet mean/std in its
  ``preprocessor_config.json`` (as MONET's own file says) and CLIP BPE ``vocab.json`` / ``merges.txt``.
* :func:`write_tiny_dermlip`: DermLIP's open_clip hf-hub directory (``open_clip_config.json`` + weights).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from safetensors.torch import save_file

from skinapp.clip.model import CLIP_CONFIGS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DERMLIP_MEAN, DERMLIP_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial LayerNorms and biases, so a swapped or dropped parameter cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name or "layrnorm" in name or "ln_" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def write_clip_bpe(directory: Path) -> None:
    """vocab.json + merges.txt equivalent to open_clip's bundled BPE (as OpenAI's CLIP tokenizer is built)."""
    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def tiny_hf_config(hidden_act: str = "quick_gelu"):
    """A transformers CLIPConfig: ViT-L/14-shaped (14 px patches, 16x16 grid, 16 heads) at a tiny width and depth."""
    import transformers

    return transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=49408, max_position_embeddings=77, hidden_act=hidden_act),
        vision_config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act=hidden_act),
        projection_dim=24)


def write_tiny_monet(directory: Path, seed: int = 0):
    """Write a MONET-format directory; returns the transformers CLIPModel it holds."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hf = randomise_(transformers.CLIPModel(tiny_hf_config()), seed=seed)
    hf.save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "resample": 3, "size": 224}))
    write_clip_bpe(directory)
    return hf


def write_tiny_dermlip(directory: Path, weights: str = "safetensors", quick_gelu: bool | None = None,
                       seed: int = 5) -> open_clip.CLIP:
    """Write a DermLIP-format (open_clip hf-hub) directory; returns the open_clip model it holds."""
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = {k: v for k, v in CLIP_CONFIGS["tiny"].items() if k != "quick_gelu"}
    if quick_gelu is not None:
        model_cfg["quick_gelu"] = quick_gelu
    torch.manual_seed(seed)
    model = randomise_(open_clip.CLIP(**model_cfg), seed=seed)
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg, "preprocess_cfg": {"mean": list(DERMLIP_MEAN), "std": list(DERMLIP_STD)}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(directory / "open_clip_model.safetensors"))
    else:
        torch.save(state, directory / "open_clip_pytorch_model.bin")
    return model
