"""Phrase explainers on a tiny random open_clip ViT (CPU): the batched fast path against a naive reference.

The naive reference here is written independently of skinapp.explain: one full model forward and one
autograd backward per phrase and per method, reading the last block through hooks on the real
open_clip / torch modules. The "official" Grad E-CLIP reference is a re-statement of the published
code's math (Cyang-Zhao/Grad-Eclip: last block recomputed as one D-wide head, gradient at the class
row of the attention output, raw in-projection q/k cosine, min-max).
"""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.filters.rank import entropy as sk_entropy
from skimage.morphology import disk

from skinapp.clip.model import build_clip
from skinapp.explain import (
    METHODS,
    encode_image_for_explain,
    entropy_weight,
    explain,
    explain_from_pass,
    local_entropy,
    minmax,
)
from skinapp.explain.entropy import denormalise_to_uint8
from skinapp.synthetic import make_skin_photo

PHRASES = ["irregular streaks", "blue-whitish veil", "ulcer with undermined edges", "色素沉着", "a dark brown mole"]


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero biases and non-trivial LayerNorm parameters, so that no term vanishes by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif ".ln" in name or name.startswith("ln") or "ln_" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def bundle():
    b = build_clip("tiny", seed=1)
    randomise_(b.model, seed=1)
    return b


@pytest.fixture(scope="module")
def image(bundle):
    return bundle.preprocess(Image.fromarray(make_skin_photo(seed=3).pixels))[None]


@pytest.fixture(scope="module")
def text_features(bundle):
    with torch.no_grad():
        return F.normalize(bundle.model.encode_text(bundle.tokenizer(PHRASES)), dim=-1)


# ---------------------------------------------------------------- naive reference (independent) ---
def _last_block(model):
    return model.visual.transformer.resblocks[-1]


def _first(x: torch.Tensor) -> torch.Tensor:
    """[1, L, D] (batch-first) -> [L, D]."""
    assert x.shape[0] == 1
    return x[0]


def naive_gradcam(model, image, t, variant="reference"):
    """Full forward with the last block's input (or ln_1's output) as the leaf; one backward."""
    blk = _last_block(model)
    store = {}
    if variant == "reference":
        def pre(mod, args):
            leaf = args[0].detach().requires_grad_(True)
            store["A"] = leaf
            return (leaf,) + args[1:]
        h = blk.register_forward_pre_hook(pre)
    else:
        def post(mod, args, out):
            store["A"] = out
            return out
        h = blk.ln_1.register_forward_hook(post)
    try:
        f = model.encode_image(image)
    finally:
        h.remove()
    S = F.cosine_similarity(f[0], t, dim=0)
    (g,) = torch.autograd.grad(S, [store["A"]])
    A, g = _first(store["A"]).detach(), _first(g)
    w = g.mean(0) if variant == "reference" else g[1:].mean(0)
    return F.relu((A[1:] * w).sum(-1))


def naive_eclip_parts(model, image, t):
    """w = dS/do_cls via the attention module's output y = o W_out^T + b (dS/do = dS/dy W_out); q, k, v raw."""
    blk = _last_block(model)
    store = {}

    def pre(mod, args, kwargs):
        store["X"] = args[0].detach()

    def post(mod, args, kwargs, out):
        store["y"] = out[0]

    h1 = blk.attn.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = blk.attn.register_forward_hook(post, with_kwargs=True)
    try:
        f = model.encode_image(image)
    finally:
        h1.remove()
        h2.remove()
    S = F.cosine_similarity(f[0], t, dim=0)
    (gy,) = torch.autograd.grad(S, [store["y"]])
    w = _first(gy)[0] @ blk.attn.out_proj.weight
    X = _first(store["X"])
    q, k, v = F.linear(X, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
    return w.detach(), q.detach(), k.detach(), v.detach()


def naive_grad_eclip_multihead(model, image, t):
    w, q, k, v = naive_eclip_parts(model, image, t)
    H = _last_block(model).attn.num_heads
    dh = q.shape[1] // H
    total = torch.zeros(k.shape[0] - 1)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        cos = torch.stack([F.cosine_similarity(q[0, sl], k[i, sl], dim=0) for i in range(1, k.shape[0])])
        lam = (cos - cos.min()) / (cos.max() - cos.min())
        total += ((w[sl] * v[1:, sl]).sum(-1)) * lam
    return F.relu(total)


def naive_medgrad(model, image, t, w_e):
    w, q, k, v = naive_eclip_parts(model, image, t)
    return F.relu((w * v[1:]).sum(-1) * w_e.flatten())


def naive_grad_eclip_official(model, image, t):
    """Re-statement of the reference: recompute the last block with ONE head over all D channels."""
    blk = _last_block(model)
    store = {}
    h = blk.register_forward_pre_hook(lambda mod, args: store.setdefault("x_in", args[0].detach()))
    with torch.no_grad():
        model.encode_image(image)
    h.remove()
    x_in = _first(store["x_in"])
    X = blk.ln_1(x_in)
    q, k, v = F.linear(X, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
    D = q.shape[-1]
    attn = torch.softmax((q * D ** -0.5) @ k.T, dim=-1)
    o = (attn @ v).requires_grad_(True)
    x = F.linear(o, blk.attn.out_proj.weight, blk.attn.out_proj.bias) + x_in
    x = x + blk.mlp(blk.ln_2(x))
    f = model.visual.ln_post(x) @ model.visual.proj
    S = F.cosine_similarity(f[0], t, dim=0)
    (g,) = torch.autograd.grad(S, [o])
    cos = F.cosine_similarity(q[:1], k[1:], dim=-1)
    cos = (cos - cos.min()) / (cos.max() - cos.min())
    return F.relu((g[0] * v[1:] * cos[:, None]).sum(-1)).detach()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


# ---------------------------------------------------------------------------------------- tests ---
def test_fast_path_matches_naive_reference(bundle, image, text_features):
    model = bundle.model
    ip = encode_image_for_explain(model, image)
    expl = explain_from_pass(model, ip, text_features, methods=METHODS, eclip_mode="multihead")
    patches = explain_from_pass(model, ip, text_features, methods=("gradcam",), gradcam_variant="patches")
    assert expl.maps["gradcam"].shape == (len(PHRASES), 14, 14)
    for i, t in enumerate(text_features):
        ref = {
            "gradcam": naive_gradcam(model, image, t),
            "grad_eclip": naive_grad_eclip_multihead(model, image, t),
            "medgrad_eclip": naive_medgrad(model, image, t, ip.entropy_weight),
        }
        for m, r in ref.items():
            assert r.abs().sum() > 0, f"reference {m} is all zero: the test would be vacuous"
            assert rel_err(expl.maps[m][i].flatten(), r) < 1e-4, m
        assert rel_err(patches.maps["gradcam"][i].flatten(), naive_gradcam(model, image, t, "patches")) < 1e-4
    with torch.no_grad():
        sims = F.normalize(model.encode_image(image), dim=-1)[0] @ text_features.T
    torch.testing.assert_close(expl.similarities, sims, atol=1e-5, rtol=1e-5)


def test_official_mode_matches_reference_code(bundle, image, text_features):
    model = bundle.model
    expl = explain(model, image, text_features, methods=("grad_eclip",), eclip_mode="official")
    for i, t in enumerate(text_features):
        ref = naive_grad_eclip_official(model, image, t)
        assert ref.abs().sum() > 0
        assert pearson(expl.maps["grad_eclip"][i], ref) > 0.99
        assert rel_err(expl.maps["grad_eclip"][i].flatten(), ref) < 1e-4
    multi = explain(model, image, text_features, methods=("grad_eclip",), eclip_mode="multihead")
    assert not torch.allclose(multi.maps["grad_eclip"], expl.maps["grad_eclip"]), "modes must differ"


def test_phrase_path_does_not_rerun_image_tower(bundle, image):
    model = bundle.model
    ip = encode_image_for_explain(model, image)
    calls = []
    h = model.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        expl = explain_from_pass(model, ip, PHRASES[:3], tokenizer=bundle.tokenizer)
    finally:
        h.remove()
    assert calls == []
    assert expl.phrases == PHRASES[:3]
    assert set(expl.maps) == set(METHODS)


def _length_first_copy(model):
    """The same weights run in OpenAI's [L, N, D] layout (open_clip's own batch_first switch)."""
    m = copy.deepcopy(model)
    m.visual.transformer.batch_first = False
    for blk in m.visual.transformer.resblocks:
        blk.attn.batch_first = False
    return m


def test_both_token_layouts_give_same_maps(bundle, image, text_features):
    model = bundle.model
    lf = _length_first_copy(model)
    captured = []
    h = lf.visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, a: captured.append(a[0].shape))
    ip_lf = encode_image_for_explain(lf, image)
    h.remove()
    assert captured[0][1] == 1 and captured[0][0] == 197, "the copy must really run length-first"
    ip_bf = encode_image_for_explain(model, image)
    assert (ip_bf.layout, ip_lf.layout) == ("batch_first", "length_first")
    a = explain_from_pass(model, ip_bf, text_features)
    b = explain_from_pass(lf, ip_lf, text_features)
    for m in METHODS:
        torch.testing.assert_close(a.maps[m], b.maps[m], atol=1e-6, rtol=1e-4)


def test_openai_state_dict_model(image):
    """A model rebuilt by open_clip from an OpenAI-format state dict is explained like the original."""
    cfg = dict(embed_dim=64, vision_cfg=dict(image_size=224, layers=2, width=128, head_width=64, patch_size=16),
               text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1), quick_gelu=True)
    torch.manual_seed(0)
    original = randomise_(open_clip.CLIP(**cfg), seed=2).half().float().eval()  # fp16-exact weights
    state = {k: v.clone() for k, v in original.state_dict().items()}
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    rebuilt = open_clip.model.build_model_from_openai_state_dict(state).float().eval()
    text = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = explain(original, image, text)
    b = explain(rebuilt, image, text)
    for m in METHODS:
        torch.testing.assert_close(a.maps[m], b.maps[m], atol=1e-6, rtol=1e-4)


def test_entropy_weight_matches_skimage_and_favours_texture():
    rng = np.random.default_rng(0)
    rgb = np.full((224, 224, 3), 120, np.uint8)
    rgb[:, :112] = rng.integers(0, 256, size=(224, 112, 3), dtype=np.uint8)  # textured left half
    mean, std = open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD
    x = ((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None])
         / torch.tensor(std)[:, None, None])[None]
    assert (denormalise_to_uint8(x) == rgb).all()
    grey = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    ent = sk_entropy(grey, disk(5))
    # units: base-2 Shannon entropy of the grey levels inside the disk, checked at one pixel by hand
    r, c = 50, 40
    yy, xx = np.mgrid[-5:6, -5:6]
    inside = yy ** 2 + xx ** 2 <= 25
    vals = grey[r - 5:r + 6, c - 5:c + 6][inside]
    p = np.bincount(vals, minlength=256) / vals.size
    p = p[p > 0]
    assert abs(local_entropy(grey, 5)[r, c] - float(-(p * np.log2(p)).sum())) < 1e-6
    pooled = np.array([[ent[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].mean() for j in range(14)] for i in range(14)])
    expected = (pooled - pooled.min()) / (pooled.max() - pooled.min())
    w = entropy_weight(x, (14, 14), radius=5).numpy()
    np.testing.assert_allclose(w, expected, atol=1e-6)
    assert w[:, :6].mean() > 0.9 and np.all(w[:, 8:] == 0)


def test_constant_maps_normalise_to_zero_without_nan(bundle):
    flat = torch.zeros(1, 3, 224, 224)  # a uniform image: entropy constant -> MedGrad weight all zeros
    expl = explain(bundle.model, flat, PHRASES[:2], tokenizer=bundle.tokenizer)
    assert torch.all(expl.maps["medgrad_eclip"] == 0)
    heat = expl.heatmap("medgrad_eclip", 0, (50, 60))
    assert heat.shape == (50, 60) and np.isfinite(heat).all() and np.all(heat == 0)
    assert torch.all(minmax(torch.full((3, 5), 7.0)) == 0)
    for m in ("gradcam", "grad_eclip"):
        h = expl.heatmap(m, 1, (224, 224))
        assert np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1
    over = expl.overlay("gradcam", 0, np.zeros((30, 40, 3), np.uint8), alpha=0.4)
    assert over.shape == (30, 40, 3) and over.dtype == np.uint8


def test_bad_inputs_raise_clear_errors(bundle, image, text_features):
    model = bundle.model
    with pytest.raises(ValueError, match="Unknown explanation method"):
        explain(model, image, text_features, methods=("lime",))
    with pytest.raises(ValueError, match="eclip_mode"):
        explain(model, image, text_features, eclip_mode="bogus")
    with pytest.raises(ValueError, match=r"\[1, 3, 224, 224\]"):
        explain(model, torch.zeros(1, 3, 100, 100), text_features)
    with pytest.raises(ValueError, match="Text features"):
        explain(model, image, torch.zeros(2, 7))
    with pytest.raises(ValueError, match="empty"):
        explain(bundle, image, ["ok", "   "])
    with pytest.raises(ValueError, match="at most"):
        explain(bundle, image, ["lesion"] * 65)
    ip = encode_image_for_explain(model, image)
    with pytest.raises(ValueError, match="different model"):
        explain_from_pass(_length_first_copy(model), ip, text_features)


def test_bundle_carries_provenance_and_truncation(bundle):
    photo = make_skin_photo(seed=5)
    expl = explain(bundle, photo.pixels, ["lesion", "x " * 300])
    assert expl.weights == bundle.weights and not expl.weights.trained
    assert expl.truncated == [False, True]
    assert expl.input_rgb().shape == (224, 224, 3)


# Shapes the explainers must read off the model, never assume: (profile, grid, patch size, heads, width).
VIT_SHAPES = [("tiny", (14, 14), 16, 12, 96), ("tiny_l14", (16, 16), 14, 16, 64)]


@pytest.mark.parametrize(("profile", "grid", "patch", "heads", "width"), VIT_SHAPES,
                         ids=["vit_b16_shaped", "vit_l14_shaped"])
def test_all_methods_match_naive_reference_on_b16_and_l14_shapes(profile, grid, patch, heads, width):
    """ViT-B/16 (14x14 grid, 12 heads) and ViT-L/14 (16x16 grid, 16 heads) structure at a tiny width."""
    b = build_clip(profile, seed=7)
    model = randomise_(b.model, seed=7)
    attn = model.visual.transformer.resblocks[-1].attn
    assert (tuple(model.visual.grid_size), model.visual.patch_size[0], attn.num_heads, attn.embed_dim) == \
        (grid, patch, heads, width), "the tiny config must have the real model's token structure"
    image = b.preprocess(Image.fromarray(make_skin_photo(seed=5).pixels))[None]
    with torch.no_grad():
        feats = F.normalize(model.encode_text(b.tokenizer(PHRASES[:3])), dim=-1)
    ip = encode_image_for_explain(model, image)
    assert ip.grid == grid and ip.x_in.shape == (1 + grid[0] * grid[1], width)
    expl = explain_from_pass(model, ip, feats, methods=METHODS)
    official = explain_from_pass(model, ip, feats, methods=("grad_eclip",), eclip_mode="official")
    for i, t in enumerate(feats):
        ref = {"gradcam": naive_gradcam(model, image, t),
               "grad_eclip": naive_grad_eclip_multihead(model, image, t),
               "medgrad_eclip": naive_medgrad(model, image, t, ip.entropy_weight)}
        for m, r in ref.items():
            assert expl.maps[m].shape == (3, *grid)
            assert r.abs().sum() > 0, f"reference {m} is all zero: the test would be vacuous"
            assert rel_err(expl.maps[m][i].flatten(), r) < 1e-4, (profile, m)
        assert rel_err(official.maps["grad_eclip"][i].flatten(), naive_grad_eclip_official(model, image, t)) < 1e-4
    assert tuple(expl.heatmap("grad_eclip", 0).shape) == (224, 224)
