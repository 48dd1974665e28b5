"""The explainers' edges, each value computed by hand or by an independent reference (not our code).

* Normalisation: every phrase's map on its own scale; bilinear upsampling by hand, orientation kept,
  a heatmap never leaves [0, 1].
* Colours: the jet colour map's end points, the blend formula, and the refusals of what cannot be blended.
* Entropy weight inputs: the grey conversion of pure colours (ITU-R 601-2), de-normalisation of a
  [3, H, W] tensor, refusals.
* Model structure: models with LayerScale or without a projection head are explained like the naive
  hook-based reference of tests/test_explain.py; unsupported towers and blocks are refused with the
  reason; token layouts read off the model.
"""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from skinapp.clip.model import build_clip
from skinapp.explain import METHODS, encode_image_for_explain, explain_from_pass, minmax, token_layout
from skinapp.explain.base import GradContext, LastBlock, tokens_to_ld, vision_tower
from skinapp.explain.entropy import denormalise_to_uint8, entropy_weight, local_entropy, to_grey_uint8
from skinapp.explain.grad_eclip import GradECLIP
from skinapp.explain.gradcam import GradCAM
from skinapp.explain.medgrad_eclip import MedGradECLIP
from skinapp.explain.render import blend, colourise, normalise_maps, upsample
from skinapp.synthetic import make_skin_photo
from tests.test_explain import naive_grad_eclip_multihead, naive_gradcam, naive_medgrad, randomise_, rel_err

# ------------------------------------------------------------------------------------------- normalising


def test_minmax_scales_each_slice_on_its_own():
    x = torch.tensor([[1.0, 3.0, 5.0], [10.0, 20.0, 40.0], [7.0, 7.0, 7.0], [0.0, 1e-4, 2e-4]])
    expected = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1 / 3, 1.0], [0.0, 0.0, 0.0], [0.0, 0.5, 1.0]])
    torch.testing.assert_close(minmax(x, dim=-1), expected)
    # along the other dimension: each column on its own
    torch.testing.assert_close(minmax(x.T, dim=0), expected.T)


def test_each_phrase_map_is_normalised_on_its_own_scale():
    """A weak map (values 1..5) and a strong one (10..40) both span [0, 1]: the colours compare places within
    one phrase, not strengths between phrases."""
    maps = torch.stack([torch.tensor([[1.0, 3.0], [5.0, 2.0]]), torch.tensor([[10.0, 40.0], [20.0, 25.0]])])
    expected = torch.stack([torch.tensor([[0.0, 0.5], [1.0, 0.25]]), torch.tensor([[0.0, 1.0], [1 / 3, 0.5]])])
    torch.testing.assert_close(normalise_maps(maps), expected)


def test_upsampling_is_bilinear_with_half_pixel_centres():
    """2 -> 4 pixels: output centres fall at input positions -0.25, 0.25, 0.75, 1.25 (clamped to the edge),
    so a row [a, b] becomes [a, 0.75a + 0.25b, 0.25a + 0.75b, b]."""
    a, b, c, d = 0.0, 1.0, 0.4, 0.8
    up = upsample(torch.tensor([[a, b], [c, d]]), (4, 4))
    assert up.dtype == np.float32 and up.shape == (4, 4)
    top = np.array([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    bottom = np.array([c, 0.75 * c + 0.25 * d, 0.25 * c + 0.75 * d, d])
    expected = np.stack([top, 0.75 * top + 0.25 * bottom, 0.25 * top + 0.75 * bottom, bottom])
    np.testing.assert_allclose(up, expected, atol=1e-6)


def test_upsampling_keeps_orientation_and_the_size_is_height_then_width():
    grid = torch.zeros(14, 14)
    grid[0, 13] = 1.0  # top-right patch
    up = upsample(grid, (60, 200))
    assert up.shape == (60, 200)
    y, x = np.unravel_index(np.argmax(up), up.shape)
    assert y < 60 / 14 and x >= 200 * 13 / 14, (y, x)
    assert up[:, :100].max() == 0 and up[30:].max() == 0


def test_a_heatmap_never_leaves_zero_to_one():
    """Bilinear weights summing to 1 in float32 can give 1 + 1e-7 (an all-hot 14x14 map at 19 x 41)."""
    up = upsample(torch.ones(14, 14), (19, 41))
    assert up.max() <= 1.0 and up.min() >= 0.0


# -------------------------------------------------------------------------------------------------- colours
# jet (matplotlib's _jet_data): at 0 red 0, green 0, blue 0.5 (dark blue); at 1 red 0.5, green 0, blue 0 (dark red)
JET_0, JET_1 = (0, 0, 128), (128, 0, 0)


def test_heat_zero_is_dark_blue_and_one_is_dark_red_out_of_range_clipped():
    heat = np.array([[0.0, 1.0], [-0.5, 1.5]])
    colour = colourise(heat)
    assert colour.dtype == np.uint8 and colour.shape == (2, 2, 3)
    assert [tuple(colour[0, 0]), tuple(colour[0, 1])] == [JET_0, JET_1]
    assert [tuple(colour[1, 0]), tuple(colour[1, 1])] == [JET_0, JET_1]


def test_blend_is_one_minus_alpha_image_plus_alpha_colour():
    image = np.full((2, 3, 3), 100, np.uint8)
    image[1] = (10, 200, 40)
    heat = np.zeros((2, 3))
    heat[:, 2] = 1.0
    out = blend(image, heat, alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    # 0.75 * 100 + 0.25 * (0, 0, 128) = (75, 75, 107); 0.75 * 100 + 0.25 * (128, 0, 0) = (107, 75, 75)
    assert tuple(out[0, 0]) == (75, 75, 107) and tuple(out[0, 2]) == (107, 75, 75)
    # 0.75 * (10, 200, 40) + 0.25 * (0, 0, 128) = (7.5, 150, 62) -> 8 (round half to even), 150, 62
    assert tuple(out[1, 0]) == (8, 150, 62)
    np.testing.assert_array_equal(blend(image, heat), blend(image, heat, alpha=0.5))  # the default: half and half
    assert tuple(blend(image, heat)[0, 0]) == (50, 50, 114)
    np.testing.assert_array_equal(blend(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(blend(image, heat, alpha=1.0), colourise(heat))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_blend_refuses_an_alpha_outside_zero_to_one(alpha):
    with pytest.raises(ValueError, match=rf"^alpha must be in \[0, 1\], got {alpha}$"):
        blend(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=alpha)


@pytest.mark.parametrize("image", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                   np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.float64)],
                         ids=["float_rgb", "grey", "rgba", "float_rgba"])
def test_blend_refuses_what_is_not_a_uint8_rgb_image(image):
    with pytest.raises(ValueError, match=r"Expected a uint8 RGB image \[H, W, 3\], got "):
        blend(image, np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------ entropy inputs


def test_grey_is_itu_r_601_luma_of_pure_colours():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [100, 100, 100]]], np.uint8)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1
    np.testing.assert_array_equal(to_grey_uint8(rgb), [[76, 150, 29, 255, 0, 100]])
    reference = np.asarray(Image.fromarray(rgb).convert("L"))  # PIL's own conversion
    assert np.abs(to_grey_uint8(rgb).astype(int) - reference).max() <= 1


def test_denormalise_takes_one_image_with_or_without_batch_and_clips_to_bytes():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    x = torch.zeros(3, 2, 2)
    x[0] = torch.tensor([[-1.0, 1.0], [-5.0, 5.0]])  # 0, 1, below 0, above 1 after de-normalising
    x[1] = 1.0  # 0.25 * 1 + 0.25 = 0.5 -> 127.5 -> 128
    x[2] = 0.2  # 0.2 -> 51
    out = denormalise_to_uint8(x, mean, std)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [0, 255]])
    assert np.all(out[..., 1] == 128) and np.all(out[..., 2] == 51)
    np.testing.assert_array_equal(denormalise_to_uint8(x[None], mean, std), out)


def test_local_entropy_is_in_bits_down_to_a_radius_of_one_pixel():
    """Radius 1 is the 5-pixel cross; on a checkerboard the centre differs from its 4 neighbours:
    H = -(1/5 log2 1/5 + 4/5 log2 4/5) = 0.7219 bits everywhere inside."""
    board = (np.indices((9, 9)).sum(0) % 2 * 200).astype(np.uint8)
    expected = -(0.2 * np.log2(0.2) + 0.8 * np.log2(0.8))
    np.testing.assert_allclose(local_entropy(board, 1)[1:-1, 1:-1], expected, atol=1e-6)
    assert np.all(local_entropy(np.full((9, 9), 77, np.uint8), 1) == 0)


def test_entropy_weight_uses_the_normalisation_it_is_given():
    """The pipeline passes the preprocess's own mean / std: the same photo normalised two ways gives one weight."""
    rgb = make_skin_photo(seed=2).pixels[:64, :64]
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    clip_mean, clip_std = open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD
    other_mean, other_std = (0.2, 0.7, 0.4), (0.9, 0.1, 0.3)

    def normalised(mean, std):
        return ((pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]

    reference = entropy_weight(normalised(clip_mean, clip_std), (4, 4))  # open_clip's constants are the default
    assert reference.max() == 1 and reference.min() == 0
    other = entropy_weight(normalised(other_mean, other_std), (4, 4), mean=other_mean, std=other_std)
    torch.testing.assert_close(other, reference)
    assert not torch.equal(entropy_weight(normalised(other_mean, other_std), (4, 4)), reference)


def test_entropy_refusals_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^entropy radius must be >= 1 pixel, got 0$"):
        local_entropy(np.zeros((8, 8), np.uint8), 0)
    with pytest.raises(ValueError, match=r"^Image 30x32 does not split into a 4x4 patch grid$"):
        entropy_weight(torch.zeros(1, 3, 30, 32), (4, 4))


# ----------------------------------------------------------------------------------------- model structure


def _photo_tensor(model_image_size: int = 224) -> torch.Tensor:
    pixels = make_skin_photo(seed=3).pixels
    return open_clip.image_transform(model_image_size, is_train=False)(Image.fromarray(pixels))[None]


def _check_against_naive(model, text):
    image = _photo_tensor()
    ip = encode_image_for_explain(model, image)
    expl = explain_from_pass(model, ip, text, methods=METHODS)
    with torch.no_grad():
        f = model.encode_image(image)
    torch.testing.assert_close(expl.similarities, F.normalize(f, dim=-1)[0] @ F.normalize(text, dim=-1).T,
                               atol=1e-5, rtol=1e-5)
    for i, t in enumerate(F.normalize(text, dim=-1)):
        ref = {"gradcam": naive_gradcam(model, image, t), "grad_eclip": naive_grad_eclip_multihead(model, image, t),
               "medgrad_eclip": naive_medgrad(model, image, t, ip.entropy_weight)}
        for m, r in ref.items():
            assert r.abs().sum() > 0, f"reference {m} is all zero: the test would be vacuous"
            assert rel_err(expl.maps[m][i].flatten(), r) < 1e-4, m


def _tiny_open_clip(**vision) -> open_clip.CLIP:
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=224, layers=2, width=64, head_width=16, patch_size=16,
                                             **vision),
               text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    torch.manual_seed(0)
    return randomise_(open_clip.CLIP(**cfg), seed=4)


def test_a_model_with_layer_scale_is_explained_like_the_naive_reference():
    """LayerScale (ls_1, ls_2 gammas, as in EVA / some open_clip ViTs) scales both residual branches."""
    model = _tiny_open_clip(ls_init_value=0.5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for blk in model.visual.transformer.resblocks:
            for ls in (blk.ls_1, blk.ls_2):
                ls.gamma.copy_(0.5 + torch.rand(ls.gamma.shape, generator=g))
    text = torch.randn(3, 32, generator=g) * 4.0  # not normalised: the explainers normalise it
    _check_against_naive(model, text)


def test_a_tower_without_projection_is_explained_on_its_pooled_token():
    """open_clip's pruned head (``proj = None``): the image feature is ln_post of the class token."""
    model = _tiny_open_clip()
    model.visual.proj = None
    text = torch.randn(2, 64, generator=torch.Generator().manual_seed(6))
    _check_against_naive(model, text)


def test_text_features_are_normalised_by_the_explainer():
    bundle = build_clip("tiny", seed=1)
    model = randomise_(bundle.model, seed=1)
    ip = encode_image_for_explain(model, _photo_tensor())
    text = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    scaled = text * torch.tensor([[0.1], [3.0], [50.0]])
    a = explain_from_pass(model, ip, F.normalize(text, dim=-1))
    b = explain_from_pass(model, ip, scaled)
    torch.testing.assert_close(a.similarities, b.similarities, atol=1e-6, rtol=1e-5)
    for m in METHODS:
        torch.testing.assert_close(a.maps[m], b.maps[m], atol=1e-7, rtol=1e-4)


def test_token_layout_is_read_off_the_transformer():
    class OpenAITransformer(nn.Module):  # OpenAI's clip package: no batch_first attribute, tokens [L, N, D]
        pass

    flagged = OpenAITransformer()
    assert token_layout(OpenAITransformer()) == "length_first"
    flagged.batch_first = True
    assert token_layout(flagged) == "batch_first"
    flagged.batch_first = False
    assert token_layout(flagged) == "length_first"


def test_tokens_of_the_first_image_are_taken_in_either_layout():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # [N=2, L=5, D=3]
    torch.testing.assert_close(tokens_to_ld(tokens, "batch_first", 5), tokens[0])
    torch.testing.assert_close(tokens_to_ld(tokens.transpose(0, 1), "length_first", 5), tokens[0])
    with pytest.raises(ValueError, match=r"^Expected 3-D tokens, got \(5, 3\)$"):
        tokens_to_ld(tokens[0], "batch_first", 5)
    with pytest.raises(ValueError, match=r"reports length_first but the last block's input has shape \(2, 5, 3\) "
                                         r"\(expected 5 tokens\)"):
        tokens_to_ld(tokens, "length_first", 5)


@pytest.fixture(scope="module")
def tiny():
    return build_clip("tiny", seed=1).model


def test_a_resnet_tower_is_refused_with_its_type(tiny):
    class ModifiedResNet(nn.Module):
        pass

    model = nn.Module()
    model.visual = ModifiedResNet()
    with pytest.raises(ValueError, match=r"^Phrase explanations need an open_clip ViT CLIP; got ModifiedResNet "
                                         r"\(ResNet and timm towers are not supported\)\.$"):
        vision_tower(model)
    assert vision_tower(tiny) is tiny.visual and vision_tower(tiny.visual) is tiny.visual


def test_unsupported_blocks_and_pooling_are_refused_with_the_reason(tiny):
    custom = copy.deepcopy(tiny)
    custom.visual.transformer.resblocks[-1].attn = nn.Identity()
    with pytest.raises(ValueError, match=r"^The last vision block must be open_clip's ResidualAttentionBlock with "
                                         r"a packed nn\.MultiheadAttention \(custom/qk-norm blocks are not "
                                         r"supported\)\.$"):
        LastBlock(custom)
    for attr, value in (("pool_type", "avg"), ("attn_pool", nn.Identity())):
        pooled = copy.deepcopy(tiny)
        setattr(pooled.visual, attr, value)
        with pytest.raises(ValueError, match=r"^Only class-token pooling is supported \(no attentional pooler, "
                                             r"pool_type 'tok'\)\.$"):
            LastBlock(pooled)


def test_unknown_variants_and_a_missing_entropy_weight_are_refused(tiny):
    with pytest.raises(ValueError, match=r"^Unknown Grad-CAM variant 'cls'; choose from \('reference', 'patches'\)$"):
        GradCAM("cls")
    for cls in (GradECLIP, MedGradECLIP):
        with pytest.raises(ValueError, match=r"^Unknown eclip_mode 'one'; choose from \('multihead', 'official'\)$"):
            cls("one")
    ip = encode_image_for_explain(tiny, _photo_tensor(), entropy_radius=None)
    assert ip.entropy_weight is None
    ctx = GradContext(LastBlock(tiny), ip, torch.randn(1, 64))
    with pytest.raises(ValueError, match=r"^MedGrad E-CLIP needs the entropy weight: run the image pass with "
                                         r"entropy_radius set\.$"):
        MedGradECLIP()(ctx)
    # the other methods do not need it; their defaults are the reference Grad-CAM and multi-head Grad E-CLIP
    t = F.normalize(ctx.text[0], dim=-1)
    image = ip.image
    torch.testing.assert_close(GradCAM()(ctx)[0].flatten(), naive_gradcam(tiny, image, t), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(GradECLIP()(ctx)[0].flatten(), naive_grad_eclip_multihead(tiny, image, t),
                               atol=1e-6, rtol=1e-4)
