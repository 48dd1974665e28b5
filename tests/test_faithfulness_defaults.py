"""Faithfulness metrics default to their published definitions: RISE deletion onto zeros, RISE insertion from a
blur (kernel 11, sigma 5), pointing game with a 15 px tolerance (Zhang et al. 2016); variants stay options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from skinapp.clip import build_clip
from skinapp.explain import evaluate as explain_evaluate
from skinapp.explain.metrics import (
    DEFAULT_SUBSTRATES,
    deletion_curve,
    insertion_curve,
    pointing_game,
    similarities,
    substrate_for,
)


@pytest.fixture(scope="module")
def setup():
    model = build_clip("tiny", seed=5).model
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    text = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(1)), dim=0)
    heat = np.random.default_rng(2).random((14, 14))
    return model, image, text, heat


def test_deletion_ends_on_zeros_by_default(setup):
    model, image, text, heat = setup
    curve = deletion_curve(model, image, text, heat, steps=4)
    zeros = similarities(model, torch.zeros_like(image), text)[0]
    assert curve.scores[-1] == pytest.approx(zeros, abs=1e-5)
    blurred = similarities(model, substrate_for(image, "blur"), text)[0]
    assert abs(curve.scores[-1] - blurred) > 1e-4  # the old default (blur) ends elsewhere
    assert deletion_curve(model, image, text, heat, steps=4, substrate="blur").scores[-1] == pytest.approx(blurred,
                                                                                                           abs=1e-5)


def test_insertion_starts_from_the_rise_blur_by_default(setup):
    model, image, text, heat = setup
    curve = insertion_curve(model, image, text, heat, steps=4)
    rise_blur = gaussian_blur(image, [11, 11], [5.0, 5.0])
    assert curve.scores[0] == pytest.approx(similarities(model, rise_blur, text)[0], abs=1e-5)
    assert DEFAULT_SUBSTRATES == {"deletion": "zero", "insertion": "blur"}


def _peak(y: int, x: int) -> np.ndarray:
    h = np.zeros((224, 224))
    h[y, x] = 1.0
    return h


def test_pointing_game_has_a_15_px_tolerance():
    mask = np.zeros((224, 224), bool)
    mask[100:120, 100:120] = True
    assert pointing_game(_peak(110, 110), mask) == 1.0  # inside
    assert pointing_game(_peak(110, 134), mask) == 1.0  # 15 px right of the mask's last column (119)
    assert pointing_game(_peak(110, 135), mask) == 0.0  # 16 px
    assert pointing_game(_peak(129, 129), mask) == 1.0  # diagonal: sqrt(10^2 + 10^2) = 14.1 px
    assert pointing_game(_peak(131, 131), mask) == 0.0  # sqrt(12^2 + 12^2) = 17 px
    assert pointing_game(_peak(110, 134), mask, tolerance=0) == 0.0  # the strict variant
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(_peak(0, 0), mask, tolerance=-1)


def test_evaluation_command_defaults_are_the_published_ones(monkeypatch, tmp_path):
    seen = {}

    def fake_evaluate(*args):
        seen["args"] = args
        return []

    monkeypatch.setattr(explain_evaluate, "evaluate", fake_evaluate)
    (tmp_path / "phrases.txt").write_text("lesion\n")
    explain_evaluate.main(["--images", str(tmp_path), "--phrases", str(tmp_path / "phrases.txt"),
                           "--out", str(tmp_path / "out")])
    substrate, *_rest = seen["args"][7:]
    assert substrate is None and seen["args"][-4:] == ("zero", "blur", 15, "whole")


def test_masks_follow_the_view_the_app_explains(tmp_path):
    mask = np.zeros((100, 300), np.uint8)  # landscape photo, lesion at the far right edge
    mask[40:60, 270:300] = 255
    Image.fromarray(mask).save(tmp_path / "photo.png")
    whole = explain_evaluate.load_mask(tmp_path, "photo", 224)
    assert whole.any() and whole.shape == (224, 224)
    assert not whole[:70].any() and not whole[-70:].any()  # letterbox bands above and below the photo
    assert not explain_evaluate.load_mask(tmp_path, "photo", 224, view="centre_crop").any()  # cropped away
