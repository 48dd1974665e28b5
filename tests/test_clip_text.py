"""Text encoding: the EOT-truncated fast path equals open_clip's encode_text; phrase validation; the cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from skinapp.clip.model import build_clip
from skinapp.clip.text import (
    MAX_PHRASE_CHARS,
    TextFeatureCache,
    encode_texts,
    encode_tokens_fast,
    fast_path_supported,
)

PHRASES = ["irregular streaks", "blue-whitish veil", "ulcer with undermined edges", "色素沉着 病变",
           "пигментная сеть", "a " * 120]


@pytest.fixture(scope="module")
def bundle():
    b = build_clip("tiny", seed=2)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in b.model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return b


def _reference(model, tokenizer, phrases):
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(phrases)), dim=-1)


def test_fast_path_equals_encode_text_and_runs_fewer_positions(bundle):
    model, tok = bundle.model, bundle.tokenizer
    assert fast_path_supported(model)
    lengths = []
    h = model.transformer.register_forward_pre_hook(lambda m, a, kw: lengths.append(a[0].shape[1]), with_kwargs=True)
    try:
        enc = encode_texts(model, tok, PHRASES[:5], cache=None)
    finally:
        h.remove()
    torch.testing.assert_close(enc.features, _reference(model, tok, enc.phrases), atol=1e-5, rtol=1e-5)
    assert lengths == [int(tok(enc.phrases).argmax(-1).max()) + 1] and lengths[0] < 77
    # a truncated phrase fills the context: still identical
    enc_long = encode_texts(model, tok, PHRASES, cache=None)
    torch.testing.assert_close(enc_long.features, _reference(model, tok, enc_long.phrases), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        raw = encode_tokens_fast(model, tok(PHRASES[:2]))
        torch.testing.assert_close(raw, model.encode_text(tok(PHRASES[:2])), atol=1e-5, rtol=1e-5)


def test_fast_path_with_length_first_text_transformer(bundle):
    model = copy.deepcopy(bundle.model)
    model.transformer.batch_first = False
    for blk in model.transformer.resblocks:
        blk.attn.batch_first = False
    enc = encode_texts(model, bundle.tokenizer, PHRASES[:3], cache=None)
    torch.testing.assert_close(enc.features, _reference(bundle.model, bundle.tokenizer, enc.phrases),
                               atol=1e-5, rtol=1e-5)


def test_phrase_validation(bundle):
    model, tok = bundle.model, bundle.tokenizer
    for bad in ([""], ["ok", "   \t\n"], []):
        with pytest.raises(ValueError, match="empty|No phrases"):
            encode_texts(model, tok, bad, cache=None)
    with pytest.raises(ValueError, match="not text"):
        encode_texts(model, tok, ["ok", 3], cache=None)
    enc = encode_texts(model, tok, ["  lesion  ", "x" * 10_000, "ok " * 80, "ok " * 10], cache=None)
    assert enc.phrases[0] == "lesion"
    assert enc.truncated == [False, True, True, False]
    assert len(enc.phrases[1]) == MAX_PHRASE_CHARS
    assert torch.isfinite(enc.features).all()


def test_many_phrases_are_batched(bundle):
    phrases = [f"lesion number {i}" for i in range(200)]
    enc = encode_texts(bundle.model, bundle.tokenizer, phrases, cache=None, batch_size=64)
    assert enc.features.shape == (200, 64)
    torch.testing.assert_close(enc.features[150:153], _reference(bundle.model, bundle.tokenizer, phrases[150:153]),
                               atol=1e-5, rtol=1e-5)


def test_cache_hits_are_per_model_and_bounded(bundle):
    cache = TextFeatureCache(maxsize=3)
    model, tok = bundle.model, bundle.tokenizer
    a = encode_texts(model, tok, ["streaks", "veil"], cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    b = encode_texts(model, tok, ["veil", "streaks"], cache=cache)
    assert cache.hits == 2
    torch.testing.assert_close(b.features, a.features.flip(0))
    other = build_clip("tiny", seed=7).model
    c = encode_texts(other, tok, ["veil"], cache=cache)
    assert cache.misses == 3 and not torch.allclose(c.features[0], a.features[1])
    encode_texts(model, tok, ["dots", "globules"], cache=cache)
    assert len(cache) == 3


def test_checkpoint_from_random_init_is_not_called_trained(tmp_path):
    from skinapp.clip import build_clip, load_clip_checkpoint, save_clip_checkpoint

    bundle = build_clip("tiny")
    scratch = save_clip_checkpoint(bundle.model, tmp_path / "scratch", bundle.config, {"base_checkpoint": None})
    assert not load_clip_checkpoint(scratch, profile="tiny").weights.trained
    tuned = save_clip_checkpoint(bundle.model, tmp_path / "tuned", bundle.config,
                                 {"base_checkpoint": "checkpoints/clip_vit_b16_openai.safetensors"})
    assert load_clip_checkpoint(tuned, profile="tiny").weights.trained


def test_whole_photo_preprocess_keeps_the_edges():
    """The app's explain view letterboxes: a marker at a landscape photo's edge stays in the model input."""
    import numpy as np
    from PIL import Image

    from skinapp.clip import letterbox, whole_photo_preprocess
    from skinapp.clip.model import LETTERBOX_FILL

    photo = np.full((300, 600, 3), 128, np.uint8)
    photo[140:160, :20] = (255, 0, 0)  # red marker at the left edge
    square = letterbox(photo)
    assert square.shape == (600, 600, 3) and (square[:150] == LETTERBOX_FILL).all()
    assert (square[150:450] == photo).all()
    x = whole_photo_preprocess(224)(Image.fromarray(photo))
    assert x.shape == (3, 224, 224)
    assert x[0, 110:115, 0:5].mean() > 1.0  # the red marker survived (a centre crop would cut it)
    assert x[:, :50].abs().max() < 0.05     # the bands normalise to ~0
