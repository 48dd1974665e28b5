"""The upload path two ways, instrumented stage by stage: ours (one pass per model) and the naive style.

Ours: ONE Grounding DINO pass for all prompts, ONE SAM embedding, ALL boxes decoded in one call,
concept features pooled from that same embedding, then the ViT, the fusion head and the CLIP image
pass (kept for the explainers).

Naive (the common pipeline style): one Grounding DINO call per prompt, one SAM decode call per box,
and a second SAM encoder pass to get the concept features.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from skinapp.bench.models import BenchModels
from skinapp.bench.timing import synchronize
from skinapp.concepts.types import Concepts, Detections
from skinapp.explain import encode_image_for_explain
from skinapp.fusion import predict
from skinapp.image import LoadedImage, load_image

CLASS_NAMES = ("Eczema", "Allergic Contact Dermatitis", "Urticaria", "Insect Bite", "Psoriasis")


@dataclass
class StageClock:
    """Accumulates wall-clock seconds per named stage (CUDA-synchronised)."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - t0
        self.calls[name] += 1
        return out

    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class UploadOutputs:
    """What the upload path produces for one photo (enough to compare the two pipelines)."""

    image: LoadedImage
    detections: Detections
    masks: np.ndarray
    mask_scores: np.ndarray
    features: torch.Tensor
    probs: np.ndarray
    clip_pass: Any


def _cap(dets: Detections, n: int) -> Detections:
    order = np.argsort(-dets.scores, kind="stable")[:n]
    return Detections(dets.boxes[order], [dets.phrases[i] for i in order], dets.scores[order])


def _finish(models: BenchModels, clock: StageClock, image: LoadedImage, dets: Detections, masks: np.ndarray,
            mask_scores: np.ndarray, features: torch.Tensor) -> UploadOutputs:
    """The stages both pipelines share: ViT tokens, fusion, CLIP image pass."""
    tokens = clock.run("vit", lambda: models.vit.tokens(models.vit.preprocess(image).to(models.device)))
    concepts = Concepts(boxes=dets.boxes, phrases=dets.phrases, scores=dets.scores, masks=masks,
                        mask_scores=mask_scores, features=features.cpu(), source="grounded_sam",
                        weights=(models.detector.weights, models.segmenter.weights), image_key=image.key)
    pred = clock.run("fusion", lambda: predict(models.fusion, tokens[0], concepts, CLASS_NAMES))
    clip_pass = clock.run("clip_image_pass", lambda: encode_image_for_explain(
        models.clip.model, image.pil(), preprocess=models.clip.preprocess))
    return UploadOutputs(image, dets, masks, mask_scores, features, pred.probs, clip_pass)


def upload_ours(models: BenchModels, source: Any, prompts: Sequence[str], max_concepts: int, clock: StageClock,
                max_side: int = 1024, box_threshold: float = 0.0) -> UploadOutputs:
    """Our upload path, each model once."""
    image = clock.run("load", load_image, source, max_side=max_side)
    dets = clock.run("grounding_dino", models.detector.detect, image.pixels, prompts, box_threshold=box_threshold,
                     text_threshold=0.0)
    dets = _cap(dets, max_concepts)
    emb = clock.run("sam_embedding", models.segmenter.embed, image.pixels)
    masks, mask_scores = clock.run("sam_decode", models.segmenter.decode, emb, dets.boxes)
    features = clock.run("concept_features", models.segmenter.pool_features, emb, masks, dets.boxes)
    return _finish(models, clock, image, dets, masks, mask_scores, features)


def upload_naive(models: BenchModels, source: Any, prompts: Sequence[str], max_concepts: int, clock: StageClock,
                 max_side: int = 1024, box_threshold: float = 0.0,
                 boxes_for_masks: Detections | None = None) -> UploadOutputs:
    """The naive upload path: a detector call per prompt, a decode call per box, a second encoder pass.

    ``boxes_for_masks`` (our pipeline's detections) makes the SAM stages decode the same boxes as ours,
    so their masks and features can be compared one to one.
    """
    image = clock.run("load", load_image, source, max_side=max_side)
    per_prompt = [clock.run("grounding_dino", models.detector.detect, image.pixels, [p],
                            box_threshold=box_threshold, text_threshold=0.0) for p in prompts]
    merged = Detections(np.concatenate([d.boxes for d in per_prompt]).reshape(-1, 4).astype(np.float32),
                        [p for d in per_prompt for p in d.phrases],
                        np.concatenate([d.scores for d in per_prompt]).astype(np.float32))
    dets = boxes_for_masks if boxes_for_masks is not None else _cap(merged, max_concepts)
    emb = clock.run("sam_embedding", models.segmenter.embed, image.pixels)
    h, w = image.size
    masks, scores = np.zeros((len(dets), h, w), bool), np.zeros((len(dets),), np.float32)
    for i, box in enumerate(dets.boxes):
        m, s = clock.run("sam_decode", models.segmenter.decode, emb, box[None])
        masks[i], scores[i] = m[0], s[0]
    emb_again = clock.run("concept_features", models.segmenter.embed, image.pixels)
    features = clock.run("concept_features", models.segmenter.pool_features, emb_again, masks, dets.boxes)
    return _finish(models, clock, image, dets, masks, scores, features)


def single_passes(models: BenchModels, source: Any, prompts: Sequence[str], max_concepts: int,
                  clock: StageClock) -> None:
    """The unavoidable model passes alone (no loading, pooling or fusion): the floor of the upload path.

    One Grounding DINO forward, one SAM embedding + one batched decode, one ViT pass, one CLIP image pass.
    """
    image = load_image(source)
    dets = _cap(clock.run("grounding_dino", models.detector.detect, image.pixels, prompts, box_threshold=0.0,
                          text_threshold=0.0), max_concepts)
    emb = clock.run("sam_embedding", models.segmenter.embed, image.pixels)
    clock.run("sam_decode", models.segmenter.decode, emb, dets.boxes)
    batch = models.vit.preprocess(image).to(models.device)
    clock.run("vit", models.vit.tokens, batch)
    x = models.clip.preprocess(image.pil())[None].to(models.device)
    with torch.no_grad():
        clock.run("clip_image_pass", models.clip.model.encode_image, x)
