"""A CLIP checkpoint's architecture is established, never silently guessed (QuickGELU, heads, widths)."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from skinapp.clip import CLIP_CONFIGS, build_clip, load_clip_checkpoint, save_clip_checkpoint
from skinapp.clip.architecture import MUST_BE_STATED, shapes_from_weights

TINY = CLIP_CONFIGS["tiny"]


@pytest.fixture(scope="module")
def tiny():
    return build_clip("tiny", seed=1)


@pytest.fixture
def checkpoint(tiny, tmp_path):
    """A trained-format tiny checkpoint (safetensors + sidecar); edit the sidecar's config in the test."""
    path = save_clip_checkpoint(tiny.model, tmp_path / "clip.safetensors", copy.deepcopy(TINY),
                                meta={"base_checkpoint": "openai.safetensors"})
    return path


def _edit_config(path, edit):
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    edit(meta["config"])
    sidecar.write_text(json.dumps(meta))


def _embeddings(model):
    torch.manual_seed(0)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        return model.encode_image(images)


@pytest.mark.parametrize(("path", "hint"), MUST_BE_STATED)
def test_a_config_that_leaves_out_what_weights_cannot_tell_is_refused(checkpoint, path, hint):
    section, _, leaf = path.rpartition(".")
    _edit_config(checkpoint, lambda c: (c[section] if section else c).pop(leaf))
    with pytest.raises(ValueError, match=rf"does not state '{path}'"):
        load_clip_checkpoint(checkpoint, profile="tiny")


def test_quick_gelu_matters_so_a_silent_default_would_be_wrong(tiny, checkpoint):
    """The reason for the rule: the same weights with plain GELU load without error and answer differently."""
    _edit_config(checkpoint, lambda c: c.update(quick_gelu=False))
    wrong = load_clip_checkpoint(checkpoint, profile="tiny")
    assert not torch.allclose(_embeddings(wrong.model), _embeddings(tiny.model), atol=1e-3)


def test_fields_the_weights_fix_are_read_from_them_and_said(tiny, checkpoint, caplog):
    def drop(config):
        del config["embed_dim"], config["vision_cfg"]["width"], config["text_cfg"]["layers"]

    _edit_config(checkpoint, drop)
    with caplog.at_level(logging.INFO, logger="skinapp.clip.model"):
        loaded = load_clip_checkpoint(checkpoint, profile="tiny")
    assert (loaded.config["embed_dim"], loaded.config["vision_cfg"]["width"], loaded.config["text_cfg"]["layers"]) \
        == (TINY["embed_dim"], TINY["vision_cfg"]["width"], TINY["text_cfg"]["layers"])
    assert "embed_dim=64 (from the weights)" in caplog.text
    torch.testing.assert_close(_embeddings(loaded.model), _embeddings(tiny.model))
    assert loaded.weights.trained


def test_defaulted_switches_are_said_in_the_log_and_the_provenance(checkpoint, caplog):
    def drop(config):
        del config["vision_cfg"]["pool_type"], config["text_cfg"]["pool_type"]

    _edit_config(checkpoint, drop)
    with caplog.at_level(logging.WARNING, logger="skinapp.clip.model"):
        loaded = load_clip_checkpoint(checkpoint, profile="tiny")
    assert "vision_cfg.pool_type='tok' (open_clip default, not stated)" in caplog.text
    assert "assumed open_clip defaults" in loaded.weights.source and "text_cfg.pool_type" in loaded.weights.source
    assert "no_causal_mask" not in loaded.weights.source  # stated in the config: not a default


def test_a_config_contradicting_the_weights_is_refused(checkpoint):
    _edit_config(checkpoint, lambda c: c["vision_cfg"].update(patch_size=32))
    with pytest.raises(ValueError, match="vision_cfg.patch_size=32 but the weights have 16"):
        load_clip_checkpoint(checkpoint, profile="tiny")


def test_shapes_from_weights_reads_the_tiny_and_full_architectures(tiny):
    shapes = shapes_from_weights(tiny.model.state_dict())
    assert shapes["vision_cfg.layers"] == TINY["vision_cfg"]["layers"] and shapes["vision_cfg.image_size"] == 224
    assert shapes["text_cfg.context_length"] == 77 and shapes["vision_cfg.mlp_ratio"] == 4.0
    with pytest.raises(ValueError, match="not an open_clip ViT CLIP"):
        shapes_from_weights({"visual.conv1.weight": torch.zeros(1)})
