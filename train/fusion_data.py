"""Data side of ``train.fusion``: data sets, cached fusion inputs and batches, the end-to-end model wrapper,
the concept extractor, preprocessed images, the baselines' ImageNet weights and split bookkeeping."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from skinapp.checkpoints import CheckpointMissing, resolve
from skinapp.fusion import BASELINE_CHECKPOINTS, BASELINES, pad_concepts
from skinapp.image import InvalidImageError, load_image
from train.cli import user_errors
from train.data.folder import load_folder
from train.data.manifest import LabelledImages, SkipLog, load_manifest
from train.data.scin import load_scin
from train.feature_cache import CachedFeatures
from train.splits import Split, check_split_classes, split_by_case

log = logging.getLogger("train.fusion")


def load_data(spec: str, class_names: Sequence[str] | None = None) -> LabelledImages:
    """``scin:ROOT`` | ``manifest:CSV`` | ``folder:ROOT`` -> LabelledImages."""
    kind, sep, where = spec.partition(":")
    if not sep or not where:
        raise ValueError(f"--data must be scin:PATH, manifest:PATH.csv or folder:PATH; got {spec!r}.")
    if kind == "scin":
        return load_scin(where, conditions=class_names)
    if kind == "manifest":
        return load_manifest(where, class_names)
    if kind == "folder":
        return load_folder(where, class_names)
    raise ValueError(f"Unknown data kind {kind!r} in --data {spec!r}; use scin, manifest or folder.")


@dataclass
class FusionData:
    """Cached fusion inputs of a data set, in memory: tokens [N, 196, D] float16, per-image concepts, labels [N]."""

    tokens: torch.Tensor
    features: list[torch.Tensor]
    scores: list[torch.Tensor]
    labels: torch.Tensor
    case_ids: list[str]
    image_keys: list[str]
    record_index: list[int] | None = None

    def __len__(self) -> int:
        return len(self.case_ids)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for case, key, label in sorted(zip(self.case_ids, self.image_keys, self.labels.tolist())):
            h.update(f"{case}|{key}|{label}\n".encode())
        return h.hexdigest()


def assemble(data: LabelledImages, cached: Sequence[CachedFeatures | None], skips: SkipLog) -> FusionData:
    """Keep the images whose features exist; report cases left with no readable image."""
    labels = data.labels
    keep = [i for i, c in enumerate(cached) if c is not None]
    all_cases = {r.case_id for r in data.records}
    kept_cases = {data.records[i].case_id for i in keep}
    for case in sorted(all_cases - kept_cases):
        skips.skip("cases with all images unreadable", f"case {case}: none of its images could be read")
    if not keep:
        raise ValueError(f"No readable images in {data.source} ({skips.summary()}).")
    return FusionData(
        tokens=torch.stack([cached[i].tokens for i in keep]),
        features=[cached[i].features for i in keep], scores=[cached[i].scores for i in keep],
        labels=torch.tensor([labels[i] for i in keep], dtype=torch.long),
        case_ids=[data.records[i].case_id for i in keep], image_keys=[cached[i].image_key for i in keep],
        record_index=keep)


def fusion_batch(data: FusionData, indices: Sequence[int], n: int, noise: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """tokens [B, 196, D], concepts [B, n, 256] padded by perturbation, mask [B, n], labels [B]."""
    padded = [pad_concepts(data.features[i], n, data.scores[i], noise, generator)[:2] for i in indices]
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    return (data.tokens[idx].float(), torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded]),
            data.labels[idx])


class EndToEndFusion(nn.Module):
    """The paper mode: the global ViT and the fusion head as ONE trainable model.

    ``forward(images [B, 3, 224, 224], concepts [B, n, 256], mask [B, n]) -> FusionOutput``; the ViT's patch
    tokens (class token dropped) feed the fusion head with gradients, so Adam fine-tunes the ViT together
    with the head. The concept features stay the cached SAM features (SAM is not trained, as in the paper).
    """

    def __init__(self, vit: nn.Module, head: nn.Module):
        super().__init__()
        self.vit = vit
        self.head = head
        self.variant = getattr(head, "variant", "")

    def forward(self, images: torch.Tensor, concepts: torch.Tensor, mask: torch.Tensor):
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]
        return self.head(tokens, concepts, mask)


def end_to_end_batch(data: FusionData, images: torch.Tensor, rows: torch.Tensor, indices: Sequence[int], n: int,
                     noise: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """images [B, 3, 224, 224] (``rows`` maps a FusionData row to its image), concepts, mask, labels [B]."""
    _, concepts, mask, y = fusion_batch(data, indices, n, noise, generator)
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    return images[rows[idx]].float(), concepts, mask, y


def make_extractor(kind: str, profile: str, device: torch.device, sam_checkpoint: str | None = None,
                   dino_checkpoint: str | None = None, text_encoder: str | None = None) -> Any:
    """The concept extractor: "grounded" (Grounding DINO + SAM) or "fallback" (weight-free colour concepts)."""
    if kind == "fallback":
        from skinapp.concepts.fallback import ColourConceptExtractor

        return ColourConceptExtractor()
    if kind == "grounded":
        from skinapp.concepts.detector import build_detector
        from skinapp.concepts.extractor import GroundedSamExtractor
        from skinapp.concepts.segmenter import build_segmenter

        return GroundedSamExtractor(
            build_detector(profile, checkpoint=dino_checkpoint, text_encoder=text_encoder, device=device),
            build_segmenter(profile, checkpoint=sam_checkpoint, device=device))
    raise ValueError(f"Unknown --concepts {kind!r}; use grounded or fallback.")


def baseline_checkpoints(specs: Sequence[str], profile: str) -> dict[str, str | None]:
    """Baseline name -> ImageNet weights path (None: from scratch).

    Explicit ``NAME=PATH`` specs win; in the full profile the manifest entries (:data:`BASELINE_CHECKPOINTS`)
    are used when they resolve locally (nothing is downloaded here: ``python -m skinapp.checkpoints download
    resnet50_a1_in1k``). The tiny profile has no pretrained weights.
    """
    chosen: dict[str, str | None] = {name: None for name in BASELINES}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in BASELINES or not path:
            raise ValueError(f"--baseline-checkpoint must be NAME=PATH with NAME in {list(BASELINES)}; got {spec!r}.")
        chosen[name] = path
    if profile == "full":
        for name, entry in BASELINE_CHECKPOINTS.items():
            if chosen[name] is None:
                try:
                    chosen[name] = str(resolve(entry))
                except CheckpointMissing:
                    log.warning("%s baseline: no ImageNet weights (%s not found); it trains FROM SCRATCH and is "
                                "labelled so (python -m skinapp.checkpoints download %s)", name, entry, entry)
    return chosen


def image_tensors(data: LabelledImages, encoder: Any, skips: SkipLog) -> tuple[torch.Tensor, list[int]]:
    """Preprocessed images [N, 3, 224, 224] (float16) for the image baselines, and the kept record indices."""
    kept, images = [], []
    for i, r in enumerate(tqdm(data.records, desc="loading images")):
        try:
            images.append(encoder.preprocess(load_image(r.path))[0].half())
            kept.append(i)
        except InvalidImageError as exc:
            skips.skip("unreadable images", f"{r.origin or r.path}: {r.path.name}: {exc}")
    if not images:
        raise ValueError(f"No readable images in {data.source}.")
    return torch.stack(images), kept


def split_summary(split: Split, case_ids: Sequence[str], ratio: float) -> dict[str, Any]:
    """Sizes of a split in images and cases, and the train/total case ratio it really has."""
    total = len(set(case_ids))
    n_cases = {k: len(split.cases[k]) for k in ("train", "val", "test")}
    return {"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
            "train_cases": n_cases["train"], "val_cases": n_cases["val"], "test_cases": n_cases["test"],
            "total_cases": total, "train_ratio_actual": n_cases["train"] / total}


def images_for(data: LabelledImages, encoder: Any, fusion_data: FusionData | None,
                memo: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
    if "images" not in memo:
        # unreadable files are already counted when the fusion variants cached their features
        memo["images"] = image_tensors(data, encoder, data.skipped if fusion_data is None else SkipLog())
    return memo["images"]


def checked_split(case_ids: Sequence[str], labels: Sequence[int], class_names: Sequence[str], ratio: float,
                  seed: int, val_fraction: float) -> Split:
    """:func:`train.splits.split_by_case`, refused (a :class:`train.cli.UserError`) when a part would be empty
    or a class would have no case in the train or the test part (its metrics would be NaN)."""
    with user_errors():
        split = split_by_case(case_ids, labels, ratio, seed, val_fraction)
        check_split_classes(split, case_ids, labels, class_names, ratio, seed)
    return split
