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
