"""Demo (untrained) models are built from a fixed seed: the same photo gets the same demo diagnosis in every
process (found by a new user: "Eczema" in one run, "Psoriasis" after a restart), and building them leaves the
caller's random state alone."""

from __future__ import annotations

import torch

from skinapp.models import load_models


def test_demo_weights_are_the_same_at_every_build_and_the_callers_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_models("tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected), "building the demo models moved the caller's RNG"
    b = load_models("tiny", device="cpu")
    for x, y in ((a.fusion, b.fusion), (a.global_encoder, b.global_encoder),
                 (next(iter(a.clips.values())).model, next(iter(b.clips.values())).model)):
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
