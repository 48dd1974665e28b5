"""Faithfulness metrics on a tiny random open_clip model: deletion/insertion curves, energy, pointing game."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skinapp.clip.model import build_clip
from skinapp.explain.metrics import (
    auc,
    deletion_curve,
    energy_in_mask,
    insertion_curve,
    perturbation_curve,
    pointing_game,
    similarities,
)


@pytest.fixture(scope="module")
def planted():
    """A dark image with one bright 64x64 square; the 'phrase' is what the square adds to the image feature."""
    model = build_clip("tiny", seed=4).model
    img = torch.full((1, 3, 224, 224), -1.5)
    img[:, :, 80:144, 60:124] = 2.0
    mask = np.zeros((224, 224), bool)
    mask[80:144, 60:124] = True
    with torch.no_grad():
        text = F.normalize(model.encode_image(img)[0] - model.encode_image(torch.full_like(img, -1.5))[0], dim=0)
    return model, img, text, mask


def test_auc_trapezoid():
    assert auc(np.array([0, 0.5, 1.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert auc(np.array([0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.5)


def test_perfect_heatmap_beats_its_inverse(planted):
    model, img, text, mask = planted
    perfect = mask.astype(np.float32)
    inverse = 1.0 - perfect
    s0 = similarities(model, img, text)[0]
    for substrate, margin in (("mean", 0.05), ("blur", 0.0)):
        good = deletion_curve(model, img, text, perfect, steps=8, substrate=substrate)
        bad = deletion_curve(model, img, text, inverse, steps=8, substrate=substrate)
        assert good.scores[0] == pytest.approx(s0, abs=1e-5)  # step 0 is the untouched image
        assert good.auc < bad.auc - margin, substrate
    ins_good = insertion_curve(model, img, text, perfect, steps=8, substrate="mean")
    ins_bad = insertion_curve(model, img, text, inverse, steps=8, substrate="mean")
    assert ins_good.scores[-1] == pytest.approx(s0, abs=1e-5)  # everything restored
    assert ins_good.auc > ins_bad.auc + 0.05
    assert len(good.fractions) == 9 and good.fractions[0] == 0 and good.fractions[-1] == 1


def test_curve_batching_does_not_change_scores(planted):
    model, img, text, mask = planted
    a = perturbation_curve(model, img, text, mask.astype(float), steps=5, batch_size=1)
    b = perturbation_curve(model, img, text, mask.astype(float), steps=5, batch_size=16)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    # a grid-size heatmap is upsampled to the image
    c = perturbation_curve(model, img, text, np.ones((14, 14)), steps=2)
    assert np.isfinite(c.scores).all()
    with torch.no_grad():
        own = F.normalize(model.encode_image(img)[0], dim=0)
    np.testing.assert_allclose(similarities(model, img, own), [1.0], atol=1e-4)


def test_energy_and_pointing(planted):
    _, _, _, mask = planted
    heat = np.zeros((224, 224))
    heat[100, 100] = 3.0
    heat[10, 10] = 1.0
    assert energy_in_mask(heat, mask) == pytest.approx(0.75)
    assert pointing_game(heat, mask) == 1.0
    assert pointing_game(1.0 - mask, mask) == 0.0
    assert np.isnan(energy_in_mask(np.zeros((14, 14)), mask))
    assert np.isnan(pointing_game(np.ones((224, 224)), mask))


def test_metric_input_errors(planted):
    model, img, text, mask = planted
    with pytest.raises(ValueError, match="deletion"):
        perturbation_curve(model, img, text, mask, kind="sideways")
    with pytest.raises(ValueError, match="substrate"):
        perturbation_curve(model, img, text, mask, substrate="noise")
    with pytest.raises(ValueError, match="2-D"):
        deletion_curve(model, img, text, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        deletion_curve(model, img, text, np.full((14, 14), np.nan))
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_mask(-np.ones((4, 4)), mask)
