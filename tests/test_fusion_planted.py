"""Planted task: the class is the colour of one small blob on a limb among clutter.

Concepts come from the weight-free ColourConceptExtractor, global tokens from the tiny random ViT,
through the real feature cache and training loop. The cross-attention model must beat chance on
held-out cases, and the concept it reports must be the planted blob.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skinapp.concepts.fallback import ColourConceptExtractor
from skinapp.fusion import build_fusion, build_global_encoder, fusion_config, predict
from skinapp.image import load_image
from skinapp.synthetic import make_skin_photo
from train.data.manifest import ImageRecord, LabelledImages, SkipLog
from train.feature_cache import FeatureCache
from train.fusion import assemble, fusion_batch, fusion_forward, train_run
from train.splits import split_by_case

CLASSES = ["red", "blue_grey", "pale"]
PROMPTS = ["lesion", "skin"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    records, photos = [], {}
    for i in range(45):
        photo = make_skin_photo(1000 + i, size=(160, 208), lesion_colour=CLASSES[i % 3])
        path = root / f"{i}.png"
        Image.fromarray(photo.pixels).save(path)
        records.append(ImageRecord(path, f"case{i}", photo.label))
        photos[path] = photo
    data = LabelledImages(records, CLASSES, SkipLog())
    extractor = ColourConceptExtractor()
    cache = FeatureCache(root / "cache", extractor, build_global_encoder("tiny"), PROMPTS)
    fd = assemble(data, cache.build(records, data.skipped), data.skipped)
    return records, photos, fd, extractor


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_cross_attention_learns_the_planted_blob(planted):
    records, photos, fd, extractor = planted
    split = split_by_case(fd.case_ids, fd.labels.tolist(), 0.5, seed=0)
    cfg = fusion_config("tiny")
    torch.manual_seed(0)
    model = build_fusion("cross_attention", len(CLASSES), cfg)
    result = train_run(model, fusion_forward,
                       lambda idx, g: fusion_batch(fd, idx, cfg["n_concepts"], cfg["pad_noise"], g),
                       fd.labels, split, len(CLASSES), epochs=15, batch_size=32, lr=3e-3, seed=0,
                       device=torch.device("cpu"))
    assert result.test_metrics["accuracy"] >= 0.7          # chance is 1/3; 21 held-out cases
    model.load_state_dict(result.state)
    correct = hits = 0
    for i in split.test:
        record = records[i]
        concepts = extractor.extract(load_image(record.path), PROMPTS)
        pred = predict(model, fd.tokens[i].float(), concepts, CLASSES)
        if pred.predicted != record.label:
            continue
        correct += 1
        hits += pred.top_concept is not None and _iou(concepts.masks[pred.top_concept],
                                                      photos[record.path].lesion_mask) > 0.3
    assert correct >= 0.7 * len(split.test)
    assert hits >= 0.8 * correct
