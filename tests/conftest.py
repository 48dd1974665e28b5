"""Shared test fixtures. Nothing here downloads anything: every model is built small and random."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def skin_photo():
    """A synthetic 384x512 photo: a skin-coloured limb with one dark lesion, on clutter."""
    from skinapp.synthetic import make_skin_photo

    return make_skin_photo(seed=3, lesion_colour="dark_brown")
