"""Phrase explanations end to end: one image pass per photo, then any phrases x methods from its cache.

    image_pass = encode_image_for_explain(model, image)             # image tower once (+ entropy map)
    expl = explain_from_pass(model, image_pass, ["irregular streaks", "blue-whitish veil"])
    expl.heatmap("medgrad_eclip", 0, (224, 224)); expl.overlay("gradcam", 1, expl.input_rgb())

Any open_clip ViT works: the patch grid (gh, gw), patch size, heads and width are read off the model
(ViT-B/16 at 224 px: 14x14 grid, 12 heads, width 768; ViT-L/14: 16x16 grid, 16 heads, width 1024). The
last block runs on the model's own device (CPU or CUDA); the cached image pass keeps its tokens on the CPU
and they are moved to that device per request.

or in one call: ``explain(model, image, phrases)``. Heatmaps are in model-input coordinates (the
resized, centre-cropped view at the model's input size); :meth:`Explanation.input_rgb` returns that view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn as nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from skinapp.clip.text import encode_texts
from skinapp.explain.base import (
    ECLIP_MODES,
    Explainer,
    GradContext,
    ImagePass,
    LastBlock,
    token_layout,
    tokens_to_ld,
    vision_tower,
)
from skinapp.explain.entropy import ENTROPY_RADIUS, denormalise_to_uint8, entropy_weight
from skinapp.explain.grad_eclip import GradECLIP
from skinapp.explain.gradcam import GradCAM
from skinapp.explain.medgrad_eclip import MedGradECLIP
from skinapp.explain.render import blend, normalise_maps, upsample
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

#: Method name -> builder(eclip_mode, gradcam_variant) -> Explainer.
EXPLAINER_REGISTRY: dict[str, Callable[[str, str], Explainer]] = {
    "gradcam": lambda eclip_mode, gradcam_variant: GradCAM(gradcam_variant),
    "grad_eclip": lambda eclip_mode, gradcam_variant: GradECLIP(eclip_mode),
    "medgrad_eclip": lambda eclip_mode, gradcam_variant: MedGradECLIP(eclip_mode),
}
METHODS = tuple(EXPLAINER_REGISTRY)
#: Most phrases explained in one call (the UI shows them side by side; more is refused with a message).
MAX_PHRASES = 64
#: Phrases per batched backward (bounds the [T, L, D] token gradients held in memory).
GRAD_CHUNK = 16

UNKNOWN_WEIGHTS = WeightsInfo(name="clip", trained=False, source="unknown (no provenance given)")


@dataclass
class Explanation:
    """Phrase explanations of one image.

    Attributes:
        phrases: the explained phrases, or None when text features were given directly.
        similarities: float32 [T], cos(f_I, f_T) from the model's real forward.
        maps: method -> raw float32 [T, gh, gw] patch maps (after ReLU, before normalisation).
        image: float32 [1, 3, H, W] model-input tensor the maps refer to.
        eclip_mode: attention mode used by Grad E-CLIP and MedGrad E-CLIP.
        weights: provenance of the CLIP weights (untrained weights must never pass for a diagnosis).
        truncated: per phrase, True when it was cut to fit the text model.
    """

    phrases: list[str] | None
    similarities: torch.Tensor
    maps: dict[str, torch.Tensor]
    image: torch.Tensor
    eclip_mode: str
    weights: WeightsInfo
    truncated: list[bool] = field(default_factory=list)
    mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    std: tuple[float, ...] = OPENAI_DATASET_STD

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def normalised(self, method: str) -> torch.Tensor:
        """[T, gh, gw] min-max normalised to [0, 1] per phrase (constant maps are zeros)."""
        return normalise_maps(self._map(method))

    def heatmap(self, method: str, t: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """float32 [H, W] in [0, 1] for phrase ``t``, bilinearly upsampled to ``size`` (default: model input)."""
        return upsample(self.normalised(method)[t], size or self.input_size)

    def overlay(self, method: str, t: int, image_rgb: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """uint8 RGB overlay of phrase ``t``'s heatmap on ``image_rgb`` (default: the model-input view)."""
        image_rgb = self.input_rgb() if image_rgb is None else np.asarray(image_rgb)
        return blend(image_rgb, self.heatmap(method, t, image_rgb.shape[:2]), alpha)

    def input_rgb(self) -> np.ndarray:
        """The model-input image as uint8 RGB [H, W, 3] (what the heatmaps are aligned with)."""
        return denormalise_to_uint8(self.image, self.mean, self.std)

    def _map(self, method: str) -> torch.Tensor:
        if method not in self.maps:
            raise ValueError(f"Method {method!r} was not computed; available: {self.methods}")
        return self.maps[method]


def normalize_params(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) of ``preprocess``'s ``Normalize`` step (torchvision Compose), else OpenAI
    CLIP's, the default of open_clip's models."""
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
    return OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def default_preprocess(model: nn.Module) -> Callable:
    """open_clip's eval transform for the model's image size (resize, centre crop, OpenAI normalisation)."""
    visual = vision_tower(model)
    mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
    return open_clip.image_transform(visual.image_size, is_train=False, mean=mean, std=std)


def prepare_image(model: nn.Module, image: Any, preprocess: Callable | None = None) -> torch.Tensor:
    """PIL image / uint8 RGB array / LoadedImage / tensor [3,H,W] or [1,3,H,W] -> float32 [1, 3, H, W]."""
    visual = vision_tower(model)
    if hasattr(image, "pil") and hasattr(image, "pixels"):  # skinapp.image.LoadedImage
        image = image.pil()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Expected a uint8 RGB array [H, W, 3], got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        x = (preprocess or default_preprocess(model))(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        x = image
    else:
        raise ValueError(f"Unsupported image type {type(image).__name__}: give a PIL image, a uint8 RGB array "
                         "or a preprocessed tensor [1, 3, H, W].")
    if x.ndim == 3:
        x = x[None]
    size = tuple(int(s) for s in visual.image_size) if isinstance(visual.image_size, tuple) \
        else (int(visual.image_size),) * 2
    if x.ndim != 4 or x.shape[:2] != (1, 3) or tuple(x.shape[-2:]) != size:
        raise ValueError(f"Expected one preprocessed image [1, 3, {size[0]}, {size[1]}], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("The image tensor contains NaN or infinite values.")
    return x.float()


@torch.no_grad()
def encode_image_for_explain(model: nn.Module, image: Any, entropy_radius: int | None = ENTROPY_RADIUS,
                             preprocess: Callable | None = None, weights: WeightsInfo | None = None) -> ImagePass:
    """Run the image tower ONCE and keep what the explainers need.

    Args:
        model: an open_clip ViT CLIP (either token layout, any parameter dtype).
        image: PIL image, uint8 RGB array, LoadedImage, or a preprocessed tensor [1, 3, H, W].
        entropy_radius: disk radius of the MedGrad entropy map; None skips it (MedGrad then refuses).
        preprocess: transform for non-tensor images (default: open_clip eval transform); its
            Normalize mean/std are also used to de-normalise for the entropy map.
        weights: provenance of the weights (default: unknown, treated as untrained).

    Returns:
        :class:`ImagePass` with x_in [L, D], image features [E] and the entropy weight [gh, gw].
    """
    visual = vision_tower(model)
    block = visual.transformer.resblocks[-1]
    layout = token_layout(visual.transformer)
    preprocess = preprocess or default_preprocess(model)
    x = prepare_image(model, image, preprocess)
    mean, std = normalize_params(preprocess)
    grid = tuple(int(g) for g in visual.grid_size)
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    try:
        dtype = visual.conv1.weight.dtype
        feats = visual(x.to(device=visual.conv1.weight.device, dtype=dtype))
    finally:
        handle.remove()
    if isinstance(feats, tuple):
        feats = feats[0]
    x_in = tokens_to_ld(captured[0], layout, 1 + grid[0] * grid[1]).float().cpu()
    ent = entropy_weight(x, grid, entropy_radius, mean, std) if entropy_radius else None
    return ImagePass(x_in=x_in, image=x.detach().cpu(), image_features=feats[0].float().cpu(), entropy_weight=ent,
                     grid=grid, layout=layout, weights=weights or UNKNOWN_WEIGHTS, model_ref=id(model))


def _check_methods(methods: Sequence[str], eclip_mode: str) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in EXPLAINER_REGISTRY]
    if unknown or not methods:
        raise ValueError(f"Unknown explanation method(s) {unknown}; choose from {list(METHODS)}")
    if eclip_mode not in ECLIP_MODES:
        raise ValueError(f"Unknown eclip_mode {eclip_mode!r}; choose from {ECLIP_MODES}")
    return methods


def explain_from_pass(model: nn.Module, image_pass: ImagePass, texts: Sequence[str] | torch.Tensor,
                      methods: Sequence[str] = METHODS, eclip_mode: str = "multihead", tokenizer: Any = None,
                      gradcam_variant: str = "reference") -> Explanation:
    """Explain phrases (or text features [T, E]) on a cached image pass: no image-tower work.

    The last block and head run once for the batch; every phrase's gradients come from one
    batched backward (chunks of :data:`GRAD_CHUNK` phrases).
    """
    if image_pass.model_ref and image_pass.model_ref != id(model):
        raise ValueError("This image pass was computed with a different model; run encode_image_for_explain again.")
    methods = _check_methods(methods, eclip_mode)
    phrases, truncated = None, []
    if isinstance(texts, torch.Tensor):
        feats = texts.detach().float().cpu()
        if feats.ndim == 1:
            feats = feats[None]
        if feats.ndim != 2 or feats.shape[1] != image_pass.image_features.shape[0] or feats.shape[0] == 0:
            raise ValueError(f"Text features must be [T, {image_pass.image_features.shape[0]}], "
                             f"got {tuple(texts.shape)}")
    else:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) > MAX_PHRASES:
            raise ValueError(f"Too many phrases ({len(texts)}); explain at most {MAX_PHRASES} at a time.")
        enc = encode_texts(model, tokenizer or open_clip.get_tokenizer("ViT-B-16"), list(texts))
        feats, phrases, truncated = enc.features, enc.phrases, enc.truncated
    if feats.shape[0] > MAX_PHRASES:
        raise ValueError(f"Too many phrases ({feats.shape[0]}); explain at most {MAX_PHRASES} at a time.")
    if not torch.isfinite(feats).all() or bool((feats.norm(dim=-1) == 0).any()):
        raise ValueError("Text features contain NaN/inf or an all-zero row.")

    block = LastBlock(model)
    explainers = [EXPLAINER_REGISTRY[m](eclip_mode, gradcam_variant) for m in methods]
    sims, maps = [], {m: [] for m in methods}
    for start in range(0, feats.shape[0], GRAD_CHUNK):
        ctx = GradContext(block, image_pass, feats[start:start + GRAD_CHUNK])
        sims.append(ctx.similarities.cpu())
        for name, explainer in zip(methods, explainers):
            maps[name].append(explainer(ctx).detach().cpu())
    return Explanation(phrases=phrases, similarities=torch.cat(sims), maps={m: torch.cat(v) for m, v in maps.items()},
                       image=image_pass.image, eclip_mode=eclip_mode, weights=image_pass.weights,
                       truncated=truncated)


def explain(model: Any, image: Any, texts: Sequence[str] | torch.Tensor, methods: Sequence[str] = METHODS,
            eclip_mode: str = "multihead", entropy_radius: int = ENTROPY_RADIUS, tokenizer: Any = None,
            preprocess: Callable | None = None, gradcam_variant: str = "reference",
            weights: WeightsInfo | None = None) -> Explanation:
    """Explain the CLIP similarity between ``image`` and each phrase with Grad-CAM, Grad E-CLIP, MedGrad E-CLIP.

    Args:
        model: an open_clip ViT CLIP, or a :class:`skinapp.clip.ClipBundle` (its tokenizer, preprocess
            and weights provenance are then used unless given).
        image: PIL image, uint8 RGB array, LoadedImage, or a preprocessed tensor [1, 3, H, W].
        texts: phrases (list of str) or text features [T, E].
        methods: any of "gradcam", "grad_eclip", "medgrad_eclip".
        eclip_mode: "multihead" (model's real heads) or "official" (the reference's one-head recomputation).
        entropy_radius: MedGrad entropy disk radius in model-input pixels.
        tokenizer, preprocess: open_clip tokenizer / image transform (defaults: ViT-B-16's / open_clip eval).
        gradcam_variant: "reference" (x_in, all tokens) or "patches" (pytorch-grad-cam's ViT recipe).
        weights: provenance of the weights.
    """
    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "weights"):  # ClipBundle
        tokenizer = tokenizer or model.tokenizer
        preprocess = preprocess or model.preprocess
        weights = weights or model.weights
        model = model.model
    needs_entropy = "medgrad_eclip" in _check_methods(methods, eclip_mode)
    image_pass = encode_image_for_explain(model, image, entropy_radius if needs_entropy else None, preprocess,
                                          weights)
    expl = explain_from_pass(model, image_pass, texts, methods, eclip_mode, tokenizer, gradcam_variant)
    expl.mean, expl.std = normalize_params(preprocess or default_preprocess(model))
    return expl
