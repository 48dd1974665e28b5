"""The upload path two ways, instrumented stage by stage: ours (one pass per model) and the naive style.

Ours: the app's own :class:`~skinapp.concepts.extractor.GroundedSamExtractor` (ONE Grounding DINO pass
for all prompts, ONE SAM embedding, all boxes in one decode request, features pooled from that same
embedding), its models timed through :class:`Timed` proxies, then the ViT, the fusion head and the CLIP
image pass (kept for the explainers).

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
from skinapp.concepts.extractor import GroundedSamExtractor
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


class Timed:
    """A proxy that times some methods of ``target`` on ``clock`` (method name -> stage) and forwards the rest."""

    def __init__(self, target: Any, clock: StageClock, **stages: str) -> None:
        self._target, self._clock, self._stages = target, clock, stages

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        stage = self._stages.get(name)
        return attr if stage is None else (lambda *a, **kw: self._clock.run(stage, attr, *a, **kw))


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
    """Our upload path: the app's concept extractor (each model once), then ViT, fusion, CLIP image pass."""
    image = clock.run("load", load_image, source, max_side=max_side)
    extractor = GroundedSamExtractor(
        Timed(models.detector, clock, detect="grounding_dino"),
        Timed(models.segmenter, clock, embed="sam_embedding", decode="sam_decode", pool_features="concept_features"),
        max_concepts=max_concepts, cache_size=1)
    concepts = extractor.extract(image, prompts, box_threshold=box_threshold, text_threshold=0.0)
    dets = Detections(np.asarray(concepts.boxes), list(concepts.phrases), np.asarray(concepts.scores))
    return _finish(models, clock, image, dets, np.asarray(concepts.masks), np.asarray(concepts.mask_scores),
                   concepts.features)


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
