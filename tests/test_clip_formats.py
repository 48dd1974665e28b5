"""Dermatology CLIP checkpoints in their published formats, written here at tiny size (no downloads):

* MONET's: a transformers ``CLIPModel`` directory (``save_pretrained``) with its own
  ``preprocessor_config.json`` and CLIP BPE tokenizer files. The converted open_clip model must give the
  transformers model's image and text features within 1e-5.
* DermLIP's: open_clip's hf-hub directory (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``).

Tokenizer: the test writes ``vocab.json`` / ``merges.txt`` from open_clip's own BPE file (the file OpenAI's
CLIP tokenizer is made of) and checks that transformers' ``CLIPTokenizer`` reading them gives the same
token ids as open_clip's tokenizer on the test phrases; the text features are then compared on those ids.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from PIL import Image
from safetensors.torch import save_file

from skinapp.clip.convert_hf import convert_state_dict, load_hf_clip, open_clip_config
from skinapp.clip.model import CLIP_CONFIGS, build_clip
from skinapp.clip.open_clip_hub import load_open_clip_hub
from skinapp.explain import encode_image_for_explain, explain_from_pass
from skinapp.synthetic import make_skin_photo

transformers = pytest.importorskip("transformers")

PHRASES = ["blue-whitish veil", "erythema", "irregular dots and globules", "a crusted ulcer on the shin"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_clip_bpe(directory) -> None:
    """vocab.json + merges.txt equivalent to open_clip's bundled BPE (as OpenAI's CLIP tokenizer is built)."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def tiny_hf_config(hidden_act: str = "quick_gelu") -> transformers.CLIPConfig:
    """ViT-L/14-shaped (14 px patches, 16x16 grid, 16 heads) at a tiny width and depth."""
    return transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=49408, max_position_embeddings=77, hidden_act=hidden_act),
        vision_config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act=hidden_act),
        projection_dim=24)


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial LayerNorms and biases, so a swapped or dropped parameter cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name or "layrnorm" in name or "ln_" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def monet_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("monet")
    torch.manual_seed(0)
    hf = randomise_(transformers.CLIPModel(tiny_hf_config()), seed=0)
    hf.save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "resample": 3, "size": 224}))
    write_clip_bpe(directory)
    return directory, hf


def _features(out):
    """transformers 4 returns the projected tensor, 5 may return an output object holding it."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_monet_format_converts_to_open_clip_with_equal_embeddings(monet_dir):
    directory, hf = monet_dir
    bundle = load_hf_clip(directory, label="MONET", licence="MIT")
    visual = bundle.model.visual
    assert tuple(visual.grid_size) == (16, 16) and visual.patch_size == (14, 14)
    assert visual.transformer.resblocks[-1].attn.num_heads == 16
    assert (bundle.mean, bundle.std) == (IMAGENET_MEAN, IMAGENET_STD), "its own normalisation, not OpenAI's"
    assert bundle.weights.trained and bundle.licence == "MIT"

    hf_tok = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    hf_ids = hf_tok(PHRASES, padding="max_length", max_length=77, return_tensors="pt").input_ids
    oc_ids = bundle.tokenizer(PHRASES)
    eot = hf_tok.eos_token_id
    for a, b in zip(hf_ids, oc_ids):  # same tokens up to and including EOT (padding differs: 49407 vs 0)
        n = int((b == eot).nonzero()[0]) + 1
        assert torch.equal(a[:n], b[:n])

    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_img = _features(hf.get_image_features(pixel_values=pixels))
        ref_txt = _features(hf.get_text_features(input_ids=hf_ids))
        img = bundle.model.encode_image(pixels)
        txt = bundle.model.encode_text(oc_ids)
    assert ref_img.abs().max() > 1e-3 and ref_txt.abs().max() > 1e-3
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bundle.model.logit_scale, hf.logit_scale)


def test_monet_preprocessing_reads_its_file(monet_dir):
    directory, _ = monet_dir
    bundle = load_hf_clip(directory)
    photo = Image.fromarray(make_skin_photo(seed=2).pixels)
    x = bundle.whole_photo_preprocess()(photo)
    normalize = [t for t in bundle.whole_photo_preprocess().transforms if type(t).__name__ == "Normalize"][0]
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD
    assert x.shape == (3, 224, 224)


def test_gelu_monet_variant_and_bad_configs(monet_dir, tmp_path):
    assert open_clip_config(tiny_hf_config("gelu").to_dict())["quick_gelu"] is False
    bad = tiny_hf_config().to_dict()
    bad["vision_config"]["hidden_act"] = "silu"
    with pytest.raises(ValueError, match="activation"):
        open_clip_config(bad)
    directory, hf = monet_dir
    config = open_clip_config(json.loads((directory / "config.json").read_text()))
    state = {k: v for k, v in hf.state_dict().items() if "post_layernorm" not in k}
    with pytest.raises(KeyError):
        convert_state_dict(state, config)
    # a tokenizer that is not CLIP's BPE is refused, not silently replaced by open_clip's
    other = tmp_path / "monet-other-vocab"
    other.mkdir()
    for f in directory.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["erythema</w>"] = 7
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="not CLIP's BPE"):
        load_hf_clip(other)


def _write_dermlip(directory, weights: str = "safetensors", quick_gelu: bool | None = None, seed: int = 5):
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = {k: v for k, v in CLIP_CONFIGS["tiny"].items() if k != "quick_gelu"}
    if quick_gelu is not None:
        model_cfg["quick_gelu"] = quick_gelu
    torch.manual_seed(seed)
    model = randomise_(open_clip.CLIP(**model_cfg), seed=seed)
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(directory / "open_clip_model.safetensors"))
    else:
        torch.save(state, directory / "open_clip_pytorch_model.bin")
    return model


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_dermlip_format_loads_as_open_clip_would(tmp_path, weights):
    reference = _write_dermlip(tmp_path / "dermlip", weights)
    bundle = load_open_clip_hub(tmp_path / "dermlip", licence="not verified")
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    # quick_gelu absent from model_cfg: open_clip's format default (GELU) is used, as create_model would
    assert not isinstance(bundle.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert "quick_gelu=False" in bundle.weights.source
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    tokens = bundle.tokenizer(PHRASES)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.encode_image(x), reference.encode_image(x))
        torch.testing.assert_close(bundle.model.encode_text(tokens), reference.encode_text(tokens))


def test_dermlip_refuses_weights_that_do_not_fit(tmp_path):
    _write_dermlip(tmp_path / "d", quick_gelu=True)
    cfg = json.loads((tmp_path / "d" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["width"] = 128
    (tmp_path / "d" / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vision_cfg.width"):
        load_open_clip_hub(tmp_path / "d")
    with pytest.raises(FileNotFoundError):
        load_open_clip_hub(tmp_path / "absent")


def test_both_formats_explain_on_their_own_grid(monet_dir, tmp_path):
    directory, _ = monet_dir
    _write_dermlip(tmp_path / "dermlip")
    photo = make_skin_photo(seed=4).pixels
    for bundle, grid in ((load_hf_clip(directory), (16, 16)), (load_open_clip_hub(tmp_path / "dermlip"), (14, 14))):
        ip = encode_image_for_explain(bundle.model, photo, preprocess=bundle.whole_photo_preprocess())
        expl = explain_from_pass(bundle.model, ip, PHRASES[:2], tokenizer=bundle.tokenizer)
        for m in ("gradcam", "grad_eclip", "medgrad_eclip"):
            assert expl.maps[m].shape == (2, *grid) and np.isfinite(expl.maps[m].numpy()).all()


def test_build_clip_l14_profiles_have_the_l14_grid():
    b = build_clip("tiny_l14")
    assert tuple(b.model.visual.grid_size) == (16, 16)
    assert b.model.visual.transformer.resblocks[0].attn.num_heads == 16
    f = F.normalize(b.model.encode_image(torch.zeros(1, 3, 224, 224)), dim=-1)
    assert f.shape == (1, 32)
