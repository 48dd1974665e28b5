"""The benchmark's models: the real architectures at full size (random weights) or tiny size.

Compute does not depend on weight values, so full-size random models time the same as trained ones.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from skinapp.clip.model import ClipBundle, build_clip
from skinapp.concepts.detector import GroundingDinoDetector, build_detector
from skinapp.concepts.segmenter import SamSegmenter, build_segmenter
from skinapp.concepts.text_encoder import write_tiny_text_encoder
from skinapp.fusion import build_fusion, build_global_encoder
from skinapp.fusion.encoders import GlobalEncoder
from skinapp.fusion.variants import FusionBase


@dataclass
class BenchModels:
    """Every model of the upload and phrase paths, built once."""

    profile: str
    device: torch.device
    detector: GroundingDinoDetector
    segmenter: SamSegmenter
    vit: GlobalEncoder
    fusion: FusionBase
    clip: ClipBundle
    sam_variant: str

    def describe(self) -> dict[str, str]:
        def n_params(m: torch.nn.Module) -> str:
            return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M params"

        return {
            "grounding_dino": f"{'SwinT OGC' if self.profile == 'full' else 'tiny'} ({n_params(self.detector.model)})",
            "sam": f"{self.sam_variant} ({n_params(self.segmenter.sam)})",
            "vit": f"{'ViT-B/16' if self.profile == 'full' else 'tiny ViT'} ({n_params(self.vit)})",
            "fusion": f"{self.fusion.variant} ({n_params(self.fusion)})",
            "clip": f"{'ViT-B-16' if self.profile == 'full' else 'tiny'} ({n_params(self.clip.model)})",
        }


def randomise_rel_pos(encoder: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Give SAM's relative-position tables random values (random init leaves them zero; a trained SAM's are not),
    so that agreement checks of the attention (fp32 vs SDPA, vs bf16) include the position bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "rel_pos" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_bench_models(profile: str = "tiny", device: str | torch.device = "cpu",
                       sam_variant: str = "vit_b") -> BenchModels:
    """Build the models for a benchmark run (random weights; no checkpoint is read)."""
    device = torch.device(device)
    if profile == "full":
        # A bert-base-shaped text encoder with a small vocabulary: the same compute per token.
        text_encoder = write_tiny_text_encoder(Path(tempfile.gettempdir()) / "skinapp-bench-bert-base",
                                               shape="bert-base")
        detector = build_detector("full", text_encoder=text_encoder, device=device)
        segmenter = build_segmenter("full", variant=sam_variant, device=device)
        fusion = build_fusion("cross_attention", n_classes=5, config="scin")
    elif profile == "tiny":
        detector = build_detector("tiny", device=device)
        segmenter = build_segmenter("tiny", device=device)
        sam_variant = "tiny"
        fusion = build_fusion("cross_attention", n_classes=5, config="tiny")
    else:
        raise ValueError(f"unknown benchmark profile {profile!r}; choose 'tiny' or 'full'")
    randomise_rel_pos(segmenter.sam.image_encoder)
    vit = build_global_encoder(profile).to(device)
    clip = build_clip(profile, device=device)
    return BenchModels(profile=profile, device=device, detector=detector, segmenter=segmenter, vit=vit,
                       fusion=fusion.to(device).eval(), clip=clip, sam_variant=sam_variant)
