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

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_writers import (
    DERMLIP_MEAN,
    DERMLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    tiny_hf_config,
    write_tiny_dermlip,
    write_tiny_monet,
)
from PIL import Image

from skinapp.clip.convert_hf import convert_state_dict, load_hf_clip, open_clip_config
from skinapp.clip.model import build_clip
from skinapp.clip.open_clip_hub import load_open_clip_hub
from skinapp.explain import encode_image_for_explain, explain_from_pass
from skinapp.synthetic import make_skin_photo

transformers = pytest.importorskip("transformers")

PHRASES = ["blue-whitish veil", "erythema", "irregular dots and globules", "a crusted ulcer on the shin"]


@pytest.fixture(scope="module")
def monet_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("monet")
    return directory, write_tiny_monet(directory)


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
    with pytest.raises(KeyError, match="post_layernorm"):
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


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_dermlip_format_loads_as_open_clip_would(tmp_path, weights):
    reference = write_tiny_dermlip(tmp_path / "dermlip", weights)
    bundle = load_open_clip_hub(tmp_path / "dermlip", licence="not verified")
    assert (bundle.mean, bundle.std) == (DERMLIP_MEAN, DERMLIP_STD)
    # quick_gelu absent from model_cfg: open_clip's format default (GELU) is used, as create_model would
    assert not isinstance(bundle.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert "quick_gelu=False" in bundle.weights.source
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    tokens = bundle.tokenizer(PHRASES)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.encode_image(x), reference.encode_image(x))
        torch.testing.assert_close(bundle.model.encode_text(tokens), reference.encode_text(tokens))


def test_dermlip_refuses_weights_that_do_not_fit(tmp_path):
    write_tiny_dermlip(tmp_path / "d", quick_gelu=True)
    cfg = json.loads((tmp_path / "d" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["width"] = 128
    (tmp_path / "d" / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vision_cfg.width"):
        load_open_clip_hub(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_open_clip_hub(tmp_path / "absent")


def test_both_formats_explain_on_their_own_grid(monet_dir, tmp_path):
    directory, _ = monet_dir
    write_tiny_dermlip(tmp_path / "dermlip")
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


def test_a_weight_file_missing_a_tensor_is_refused_naming_it(tmp_path):
    """The DermLIP loader (and the MONET converter and our own CLIP files, through one strict load) refuse weights
    that miss a tensor of the config, naming the file and the tensor."""
    from safetensors.torch import load_file, save_file

    write_tiny_dermlip(tmp_path / "d", "safetensors")
    path = next((tmp_path / "d").glob("*.safetensors"))
    state = load_file(path)
    del state["ln_final.weight"]
    save_file(state, path)
    expected = r"d/.*\.safetensors does not fit its CLIP config: missing \['ln_final\.weight'"
    with pytest.raises(ValueError, match=expected):
        load_open_clip_hub(tmp_path / "d")
