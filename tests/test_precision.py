"""bf16 only where the hardware has it; the SAM encoder's bf16 path agrees with fp32 on the same boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinapp import precision
from skinapp.concepts.segmenter import build_segmenter
from skinapp.synthetic import make_skin_photo


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert precision.cpu_has_native_bf16(str(with_bf16)) is True
    assert precision.cpu_has_native_bf16(str(without)) is False
    assert precision.cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_setting_decides_per_device(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.bf16_enabled("cpu", "auto") is False  # never emulated bf16 on a CPU without it
    assert precision.bf16_enabled("cuda", "auto") is True
    assert precision.bf16_enabled("cpu", "on") is True and precision.bf16_enabled("cuda", "off") is False
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.bf16_enabled("cpu", "auto") is True
    monkeypatch.setenv(precision.ENV, "off")
    assert precision.bf16_enabled("cpu") is False
    with pytest.raises(ValueError, match="SKINAPP_BF16 must be auto, on or off"):
        precision.bf16_enabled("cpu", "fast")


def test_sam_encoder_bf16_switch_changes_the_arithmetic_but_not_the_masks():
    photo = make_skin_photo(seed=3, lesion_colour="dark_brown").pixels
    torch.manual_seed(0)
    segmenter = build_segmenter("tiny", encoder_bf16=False)
    fp32 = segmenter.embed(photo)
    segmenter.encoder_bf16 = True
    bf16 = segmenter.embed(photo)
    assert fp32.embedding.dtype == bf16.embedding.dtype == torch.float32
    assert not torch.equal(fp32.embedding, bf16.embedding), "the switch did not change the precision"
    cosine = torch.nn.functional.cosine_similarity(fp32.embedding.flatten(), bf16.embedding.flatten(), dim=0)
    assert cosine > 0.999
    boxes = np.array([[150, 100, 300, 250], [20, 30, 480, 350], [200, 150, 260, 210]], np.float32)
    m32, _ = segmenter.decode(fp32, boxes)
    m16, _ = segmenter.decode(bf16, boxes)
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(m32, m16)]
    assert min(ious) >= 0.98, ious


# ------------------------------------------------------------------------------ SAM attention through SDPA


def _tiny_sam_with_position_bias():
    from skinapp.bench.models import randomise_rel_pos

    torch.manual_seed(0)
    segmenter = build_segmenter("tiny", encoder_bf16=False, sdpa=False)
    randomise_rel_pos(segmenter.sam.image_encoder)  # random init leaves the tables zero: the bias would not count
    return segmenter


def test_sam_sdpa_equals_the_original_attention_with_its_position_bias():
    from skinapp.concepts.sam_sdpa import sdpa_enabled, use_sdpa

    photo = make_skin_photo(seed=3, lesion_colour="dark_brown").pixels
    segmenter = _tiny_sam_with_position_bias()
    encoder = segmenter.sam.image_encoder
    reference = segmenter.embed(photo).embedding
    assert not sdpa_enabled(encoder)
    assert use_sdpa(encoder, True) == len(encoder.blocks) and sdpa_enabled(encoder)
    fused = segmenter.embed(photo).embedding
    assert (fused - reference).abs().max() < 1e-4, "SDPA must compute the same attention, bias included"
    use_sdpa(encoder, False)
    assert not sdpa_enabled(encoder) and torch.equal(segmenter.embed(photo).embedding, reference)
    # The bias matters here: without it the embedding moves far more than the tolerance above.
    for block in encoder.blocks:
        block.attn.use_rel_pos = False
    assert (segmenter.embed(photo).embedding - reference).abs().max() > 1e-2


def test_sam_sdpa_under_bf16_keeps_masks():
    from skinapp.concepts.sam_sdpa import use_sdpa

    photo = make_skin_photo(seed=3, lesion_colour="dark_brown").pixels
    segmenter = _tiny_sam_with_position_bias()
    fp32 = segmenter.embed(photo)
    segmenter.encoder_bf16 = True
    use_sdpa(segmenter.sam.image_encoder, True)
    low = segmenter.embed(photo)
    cosine = torch.nn.functional.cosine_similarity(fp32.embedding.flatten(), low.embedding.flatten(), dim=0)
    assert cosine > 0.999
    boxes = np.array([[150, 100, 300, 250], [20, 30, 480, 350], [200, 150, 260, 210]], np.float32)
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(segmenter.decode(fp32, boxes)[0],
                                                                   segmenter.decode(low, boxes)[0])]
    assert min(ious) >= 0.98, ious


# ------------------------------------------------------------------------------ Grounding DINO bf16 scopes


@pytest.fixture(scope="module")
def tiny_detector():
    from skinapp.concepts.detector import build_detector

    torch.manual_seed(0)
    return build_detector("tiny", bf16_scope="off")


def test_sam_sdpa_setting(monkeypatch):
    from skinapp.concepts.sam_sdpa import ENV, sdpa_default, sdpa_enabled

    assert sdpa_default() is True and sdpa_default("off") is False and sdpa_default(False) is False
    monkeypatch.setenv(ENV, "off")
    assert sdpa_default() is False and not sdpa_enabled(build_segmenter("tiny").sam.image_encoder)
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match="SKINAPP_SAM_SDPA must be auto, on or off"):
        sdpa_default()


def test_gdino_scope_setting(monkeypatch):
    from skinapp.concepts import gdino_speed

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert gdino_speed.resolve_scope("cpu", "auto") == "off"  # measured: no scope kept the boxes (README)
    assert gdino_speed.resolve_scope("cpu", "transformer") == "transformer"
    monkeypatch.setenv(gdino_speed.ENV, "backbone")
    assert gdino_speed.resolve_scope("cpu") == "backbone"
    with pytest.raises(ValueError, match="SKINAPP_GDINO_BF16 must be"):
        gdino_speed.resolve_scope("cpu", "all")


def _dtypes_seen(detector, caption, modules):
    """dtype of each module's first output and whether autocast was on inside it, for one forward."""
    seen, handles = {}, []
    for name, module in modules.items():
        def hook(mod, args, out, name=name):
            first = out[0] if isinstance(out, tuple) else out
            seen[name] = (first.dtype, torch.is_autocast_enabled("cpu"))
        handles.append(module.register_forward_hook(hook))
    try:
        probs, _ = detector.query_outputs(make_skin_photo(seed=1).pixels, caption)
    finally:
        for h in handles:
            h.remove()
    return seen, probs


def test_gdino_bf16_scopes_cover_what_they_name(tiny_detector):
    from skinapp.concepts import gdino_speed

    model = tiny_detector.model
    layer = model.transformer.encoder.layers[0]
    watch = {"swin_block": model.backbone[0].layers[0].blocks[0].attn.qkv, "ffn": layer.linear1,
             "deformable": layer.self_attn, "deformable_proj": layer.self_attn.value_proj,
             "head": model.transformer.decoder.bbox_embed[0].layers[0] if model.transformer.decoder.bbox_embed
             else model.bbox_embed[0].layers[0]}
    caption = "lesion . arm ."
    try:
        gdino_speed.set_bf16_scope(model, "off", "cpu")
        off, p_off = _dtypes_seen(tiny_detector, caption, watch)
        assert all(dtype == torch.float32 for dtype, _ in off.values())
        gdino_speed.set_bf16_scope(model, "backbone", "cpu")
        bb, p_bb = _dtypes_seen(tiny_detector, caption, watch)
        assert bb["swin_block"][0] == torch.bfloat16 and bb["ffn"][0] == torch.float32
        assert p_bb.dtype == torch.float32 and not torch.equal(p_bb, p_off)
        gdino_speed.set_bf16_scope(model, "transformer", "cpu")
        tr, _ = _dtypes_seen(tiny_detector, caption, watch)
        assert tr["swin_block"][0] == torch.bfloat16 and tr["ffn"][0] == torch.bfloat16
        # Deformable attention stays float32 (autocast off inside), and so do the heads.
        assert tr["deformable"][0] == torch.float32 and tr["deformable_proj"] == (torch.float32, False)
        assert tr["head"][0] == torch.float32
        gdino_speed.set_bf16_scope(model, "off", "cpu")
        again, p_again = _dtypes_seen(tiny_detector, caption, watch)
        assert torch.equal(p_again, p_off), "switching back must restore the float32 forward exactly"
    finally:
        gdino_speed.set_bf16_scope(model, "off", "cpu")


def test_to_float32_keeps_structures():
    from transformers.modeling_outputs import BaseModelOutput

    x = torch.ones(2, dtype=torch.bfloat16)
    out = precision.to_float32({"a": (x, [x]), "b": BaseModelOutput(last_hidden_state=x), "n": 3,
                                "i": torch.ones(2, dtype=torch.long)})
    assert out["a"][0].dtype == out["a"][1][0].dtype == out["b"].last_hidden_state.dtype == torch.float32
    assert isinstance(out["b"], BaseModelOutput) and out["n"] == 3 and out["i"].dtype == torch.long
