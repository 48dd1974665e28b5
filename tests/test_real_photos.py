"""Every real photo in ../shared/data through the Analyzer: demo mode (weight-free concepts) and the tiny
grounded profile (random tiny Grounding DINO + SAM), without error, masks inside the image, finite features,
the untrained banner present. Skips with a reason when the data folder is absent (a user's clone)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
DATASETS = ("pad_ufes_20", "ham10000")


def real_photos() -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every row of every data set's labels.csv; skips the test when there is none."""
    rows = []
    for name in DATASETS:
        labels = DATA / name / "labels.csv"
        if labels.is_file():
            with open(labels, newline="") as fh:
                rows += [(DATA / name / r["image"], DATA / name / r["mask"] if r["mask"] else None)
                         for r in csv.DictReader(fh)]
    if not rows:
        pytest.skip(f"real photos not found under {DATA.resolve()} (CI has them; a user's clone may not)")
    return rows


@pytest.fixture(scope="module")
def demo() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False, cache_size=2)


@pytest.fixture(scope="module")
def grounded_tiny(tmp_path_factory) -> Analyzer:
    pytest.importorskip("groundingdino")
    from skinapp.concepts.detector import build_detector
    from skinapp.concepts.extractor import GroundedSamExtractor
    from skinapp.concepts.segmenter import build_segmenter
    from skinapp.concepts.text_encoder import write_tiny_text_encoder

    torch.manual_seed(0)
    analyzer = Analyzer.create(profile="tiny", device="cpu", warmup=False, cache_size=2)
    detector = build_detector("tiny", text_encoder=write_tiny_text_encoder(tmp_path_factory.mktemp("bert")),
                              input_size=256)
    extractor = GroundedSamExtractor(detector, build_segmenter("tiny"), max_concepts=3, cache_size=2)
    analyzer.swap_models(dataclasses.replace(analyzer.models, extractor=extractor))
    return analyzer


def _check(result, source: str) -> None:
    h, w = result.image.height, result.image.width
    concepts = result.concepts
    n = len(concepts)
    assert concepts.source == source
    assert concepts.masks.shape == (n, h, w) and concepts.masks.dtype == bool
    assert np.all(concepts.boxes[:, [0, 2]] >= 0) and np.all(concepts.boxes[:, [0, 2]] <= w)
    assert np.all(concepts.boxes[:, [1, 3]] >= 0) and np.all(concepts.boxes[:, [1, 3]] <= h)
    assert concepts.features.shape == (n, 256) and torch.isfinite(concepts.features).all()
    probs = np.array(list(result.class_probabilities().values()))
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.banner.startswith(UNTRAINED_WARNING)


def test_every_real_photo_in_demo_mode(demo):
    photos = real_photos()
    for image, mask in photos:
        result = demo.analyze(str(image), prompts="lesion . arm . face")
        _check(result, "fallback")
        if mask is not None:  # a photo with a lesion mask gets at least one lesion concept
            assert "lesion" in result.concepts.phrases, image.name
        demo.states.clear()
        demo.extractor.clear()


@pytest.mark.slow
def test_every_real_photo_with_the_tiny_grounded_profile(grounded_tiny):
    for image, _ in real_photos():
        result = grounded_tiny.analyze(str(image), prompts="lesion . arm", box_threshold=0.0, text_threshold=0.0)
        _check(result, "grounded_sam")
        grounded_tiny.states.clear()
        grounded_tiny.extractor.clear()
