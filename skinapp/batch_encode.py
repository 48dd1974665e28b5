"""Batched image-encoder passes for the batch command: fill an :class:`~skinapp.pipeline.Analyzer`'s per-photo
caches for several photos at once, so that each ``analyze`` / ``explain`` afterwards finds its encoders done.

Batched: SAM's image embedding (``SamSegmenter.embed_batch``, when the concepts come from Grounded SAM), the
global ViT tokens, and, when phrases are explained, the CLIP image pass. Grounding DINO stays one photo per
call (its inputs differ in size and it is run per prompt set by the extractor). On a GPU this keeps the device
busy; on a CPU a batch gains little (batch 1 is the default there), but the path is the same, so the tests check
on a CPU that batched results equal one-by-one results within float tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from skinapp.clip.model import whole_photo_preprocess
from skinapp.explain import ImagePass
from skinapp.explain.base import token_layout, tokens_to_ld, vision_tower
from skinapp.explain.entropy import ENTROPY_RADIUS, entropy_weight
from skinapp.explain.pipeline import normalize_params, prepare_image  # the one-photo pass's own helpers
from skinapp.image import InvalidImageError
from skinapp.results import ImageState

log = logging.getLogger(__name__)

#: Photos per encoder batch when a CUDA device is present (the CPU default is 1: no batching).
CUDA_BATCH_SIZE = 8


def default_batch_size(device: torch.device | str) -> int:
    """:data:`CUDA_BATCH_SIZE` on CUDA, 1 elsewhere."""
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else 1


def clip_passes(model: torch.nn.Module, images: Sequence[Any], preprocess: Any, weights: Any = None) -> list[ImagePass]:
    """``encode_image_for_explain`` for several photos in one image-tower pass (same fields, per photo)."""
    visual = vision_tower(model)
    block = visual.transformer.resblocks[-1]
    layout = token_layout(visual.transformer)
    mean, std = normalize_params(preprocess)
    grid = tuple(int(g) for g in visual.grid_size)
    xs = [prepare_image(model, image, preprocess) for image in images]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            feats = visual(torch.cat(xs).to(device=visual.conv1.weight.device, dtype=visual.conv1.weight.dtype))
    finally:
        handle.remove()
    if isinstance(feats, tuple):
        feats = feats[0]
    tokens, n = captured[0], 1 + grid[0] * grid[1]
    passes = []
    for i, x in enumerate(xs):
        one = tokens[i:i + 1] if layout == "batch_first" else tokens[:, i:i + 1]
        passes.append(ImagePass(
            x_in=tokens_to_ld(one, layout, n).float().cpu(), image=x.detach().cpu(),
            image_features=feats[i].float().cpu(), entropy_weight=entropy_weight(x, grid, ENTROPY_RADIUS, mean, std),
            grid=grid, layout=layout, weights=weights, model_ref=id(model)))
    return passes


def prefill(analyzer: Any, photos: Sequence[Any], clip_choice: str | None = None) -> int:
    """Run the image encoders of ``photos`` in one batch each and store the results in ``analyzer``'s caches.

    Photos that cannot be read are left out (their own ``analyze`` call reports them). Photos already cached
    are not encoded again.

    Args:
        analyzer: a :class:`~skinapp.pipeline.Analyzer`.
        photos: anything ``analyzer.state_for`` reads.
        clip_choice: also batch this CLIP model's image pass (for ``explain``); None: no CLIP pass.

    Returns:
        How many photos were prefilled.
    """
    models = analyzer.models  # one model set for the whole batch (the app may swap models between requests)
    states: list[ImageState] = []
    for photo in photos:
        try:
            states.append(analyzer.state_for(photo))
        except (InvalidImageError, ValueError, OSError):
            continue
    if not states:
        return 0
    extractor = models.extractor
    segmenter = getattr(extractor, "segmenter", None)
    if segmenter is not None and hasattr(segmenter, "embed_batch") and hasattr(extractor, "embeddings"):
        todo = [s for s in states if s.image.key not in extractor.embeddings]
        if todo:
            for state, emb in zip(todo, segmenter.embed_batch([s.image.pixels for s in todo])):
                extractor.embeddings.put(state.image.key, emb)
    todo = [s for s in states if s.global_tokens is None]
    if todo:
        encoder = models.global_encoder
        batch = torch.cat([encoder.preprocess(s.image) for s in todo]).to(models.device)
        with torch.no_grad(), analyzer.autocast():
            tokens = encoder.tokens(batch).float()
        for i, state in enumerate(todo):
            with state.lock:
                state.global_tokens = tokens[i]
    if clip_choice is not None:
        bundle = models.clips[clip_choice]
        todo = [s for s in states if clip_choice not in s.clip_passes]
        if todo:
            passes = clip_passes(bundle.model, [s.image for s in todo], whole_photo_preprocess(bundle.image_size),
                                 bundle.weights)
            for state, image_pass in zip(todo, passes):
                with state.lock:
                    state.clip_passes[clip_choice] = image_pass
    return len(states)
