"""Grounding DINO detector: the real groundingdino classes at the tiny profile, CPU, random weights."""

from __future__ import annotations

import runpy
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("groundingdino")

from skinapp.concepts.detector import (  # noqa: E402
    GDINO_CONFIGS,
    boxes_to_pixels,
    build_caption,
    build_detector,
    build_gdino_model,
    select_detections,
)
from skinapp.concepts.text_encoder import tiny_vocabulary, write_tiny_text_encoder  # noqa: E402
from skinapp.concepts.types import DEFAULT_PROMPTS, Detections  # noqa: E402

INPUT_SIZE = 256  # smaller than the tiny profile's 320, to keep the tests fast


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return write_tiny_text_encoder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def detector(bert_dir):
    torch.manual_seed(0)
    return build_detector("tiny", text_encoder=bert_dir, input_size=INPUT_SIZE)


def _raw_outputs(detector, pixels, caption):
    with torch.inference_mode():
        out = detector.model(detector.preprocess(pixels)[None], captions=[caption])
    return out["pred_logits"].clone(), out["pred_boxes"].clone()


# ------------------------------------------------------------------------------------------ text encoder dir


def test_text_encoder_dir_is_idempotent_and_covers_prompts(tmp_path, bert_dir):
    from transformers import AutoTokenizer

    written = write_tiny_text_encoder(tmp_path / "b")
    stamp = (written / "model.safetensors").stat().st_mtime_ns
    assert write_tiny_text_encoder(tmp_path / "b") == written
    assert (written / "model.safetensors").stat().st_mtime_ns == stamp
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    vocab = tiny_vocabulary()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
    caption, _, _ = build_caption([*DEFAULT_PROMPTS, "ulcerated nodule", "Blue-Whitish veil?"])
    ids = tokenizer(caption)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids[1:3]] == ["lesion", "."]


# ------------------------------------------------------------------------------------------------- configs


def test_full_config_is_the_official_swint_ogc():
    import groundingdino

    official = runpy.run_path(str(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"))
    ours = GDINO_CONFIGS["full"]
    memory_only = {"use_checkpoint", "use_transformer_ckpt"}  # gradient checkpointing: training memory only
    not_model = {"batch_size", "modelname", "text_encoder_type", "dn_label_coef", "dn_bbox_coef"}
    for key, value in official.items():
        if key.startswith("__") or key in memory_only | not_model:
            continue
        assert ours[key] == value, key
    assert ours["swin_overrides"] == {} and (ours["input_size"], ours["max_size"]) == (800, 1333)


def test_builder_matches_groundingdino_build_without_overrides(bert_dir):
    from groundingdino.models.GroundingDINO.groundingdino import build_groundingdino

    config = {**GDINO_CONFIGS["tiny"], "swin_overrides": {}}
    ours = build_gdino_model(config, bert_dir).state_dict()
    theirs = build_groundingdino(SimpleNamespace(**config, text_encoder_type=str(bert_dir))).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


# ------------------------------------------------------------------------------------------ caption & boxes


def test_boxes_to_pixels_converts_and_clips():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.95, 0.1, 0.2, 0.4]])
    pixels = boxes_to_pixels(boxes, width=200, height=100)
    torch.testing.assert_close(pixels, torch.tensor([[50.0, 25.0, 150.0, 75.0], [170.0, 0.0, 200.0, 30.0]]))


def test_select_detections_assigns_thresholds_and_suppresses_per_phrase():
    # Tokens: 0 [CLS], 1-2 phrase A ("left leg"), 3 ".", 4 phrase B ("arm"), 5 ".", 6 [SEP].
    phrase_map = torch.zeros(2, 8)
    phrase_map[0, 1:3] = 0.5
    phrase_map[1, 4] = 1.0
    probs = torch.zeros(6, 8)
    probs[0, [1, 2]] = torch.tensor([0.9, 0.7])  # A: mean 0.8, score 0.9
    probs[1, [1, 2, 4]] = torch.tensor([0.6, 0.6, 0.5])  # A (0.6) beats B (0.5), score 0.6
    probs[2, 4] = 0.8  # B, same place as box 0: kept (other phrase)
    probs[3, [1, 2]] = 0.2  # score 0.2 < box threshold
    probs[4, [0, 2]] = torch.tensor([0.95, 0.3])  # score 0.95 but best phrase mean 0.15 < text threshold
    probs[5, 4] = 0.7  # B, overlaps box 2 heavily: suppressed by NMS
    boxes = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80],
                          [0, 0, 10, 11]], dtype=torch.float32)
    keep, phrase_ids, scores = select_detections(probs, boxes, phrase_map, box_threshold=0.3, text_threshold=0.25)
    assert keep.tolist() == [0, 2, 1]
    assert phrase_ids.tolist() == [0, 1, 0]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.6]))
    keep, _, _ = select_detections(probs, boxes, phrase_map, 0.3, 0.25, iou_threshold=0.95)
    assert 5 in keep.tolist()


def test_phrase_map_follows_token_spans(detector):
    caption, phrases, spans = build_caption(["lesion", "left leg"])
    phrase_map = detector.phrase_map(caption, spans)
    encoding = detector.tokenizer(caption, return_offsets_mapping=True)
    for row, (start, end) in zip(phrase_map, spans):
        inside = [i for i, (s, e) in enumerate(encoding["offset_mapping"]) if e > s and s >= start and e <= end]
        assert torch.nonzero(row).flatten().tolist() == inside
        torch.testing.assert_close(row.sum(), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_too_long_caption_is_refused_before_the_model(detector, skin_photo):
    pairs = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    prompts = [" ".join(pairs[5 * i:5 * i + 5]) for i in range(30)]  # 30 prompts of ~11 tokens each
    before = detector.n_forward
    with pytest.raises(ValueError, match="256"):
        detector.detect(skin_photo.pixels, prompts)
    assert detector.n_forward == before


# --------------------------------------------------------------------------------------------------- detect


def test_detect_on_synthetic_photo(detector, skin_photo):
    pixels = skin_photo.pixels
    height, width = pixels.shape[:2]
    prompts = ["lesion", "leg", "arm"]
    found = detector.detect(pixels, prompts, box_threshold=0.0, text_threshold=0.0)
    assert isinstance(found, Detections)
    n = len(found)
    assert 0 < n <= GDINO_CONFIGS["tiny"]["num_queries"]
    assert found.boxes.dtype == np.float32 and found.boxes.shape == (n, 4)
    assert found.scores.dtype == np.float32 and found.scores.shape == (n,)
    assert set(found.phrases) <= set(prompts)
    assert np.all((found.scores >= 0) & (found.scores <= 1)) and np.all(np.diff(found.scores) <= 0)
    assert np.all(found.boxes[:, [0, 2]] >= 0) and np.all(found.boxes[:, [0, 2]] <= width)
    assert np.all(found.boxes[:, [1, 3]] >= 0) and np.all(found.boxes[:, [1, 3]] <= height)
    assert np.all(found.boxes[:, 2:] >= found.boxes[:, :2])
    assert detector.weights.trained is False
    assert len(detector.detect(pixels, prompts, box_threshold=1.0)) == 0  # sigmoid never exceeds 1


def test_one_forward_per_detect_whatever_the_number_of_prompts(detector, skin_photo):
    start = detector.n_forward
    detector.detect(skin_photo.pixels, ["lesion"])
    assert detector.n_forward == start + 1
    detector.detect(skin_photo.pixels, list(DEFAULT_PROMPTS))
    assert detector.n_forward == start + 2
    with pytest.raises(ValueError, match="No prompt phrases"):
        detector.detect(skin_photo.pixels, ["", "  ", "."])
    empty = detector.detect(skin_photo.pixels, [])
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    assert detector.n_forward == start + 2


def test_bad_pixels_are_refused(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((32, 32, 3), np.float32), ["lesion"])
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((32, 32), np.uint8), ["lesion"])


def test_full_profile_needs_a_text_encoder():
    with pytest.raises(ValueError, match="bert-base-uncased"):
        build_detector("full")
    with pytest.raises(ValueError, match="profile"):
        build_detector("huge")


# ---------------------------------------------------------------------------------------------- checkpoints


def _save_official(state: dict, path: Path, extra: dict | None = None) -> Path:
    model = {"module." + k: v for k, v in state.items()}
    torch.save({"model": {**model, **(extra or {})}, "epoch": 0}, path)
    return path


def test_official_checkpoint_round_trip(detector, bert_dir, skin_photo, tmp_path):
    extra = {"module.label_enc.weight": torch.zeros(3, 256)}  # the official file carries this unused key
    path = _save_official(detector.model.state_dict(), tmp_path / "gdino.pth", extra)
    caption = "lesion . leg ."
    expected = _raw_outputs(detector, skin_photo.pixels, caption)

    torch.manual_seed(123)
    fresh = build_detector("tiny", text_encoder=bert_dir, input_size=INPUT_SIZE)
    assert not torch.allclose(_raw_outputs(fresh, skin_photo.pixels, caption)[1], expected[1])

    torch.manual_seed(123)
    loaded = build_detector("tiny", checkpoint=path, text_encoder=bert_dir, input_size=INPUT_SIZE)
    for ours, theirs in zip(_raw_outputs(loaded, skin_photo.pixels, caption), expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert loaded.weights.trained is True and str(path) in loaded.weights.source
    assert "1 unused" in loaded.weights.source
    found = loaded.detect(skin_photo.pixels, ["lesion", "leg"], box_threshold=0.0, text_threshold=0.0)
    reference = detector.detect(skin_photo.pixels, ["lesion", "leg"], box_threshold=0.0, text_threshold=0.0)
    np.testing.assert_array_equal(found.boxes, reference.boxes)
    assert found.phrases == reference.phrases


def test_bad_checkpoints_are_refused_clearly(detector, bert_dir, tmp_path):
    state = dict(detector.model.state_dict())
    key = "feat_map.weight"
    wrong = _save_official({**state, key: torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*feat_map\.weight"):
        build_detector("tiny", checkpoint=wrong, text_encoder=bert_dir, input_size=INPUT_SIZE)
    partial = _save_official({k: v for k, v in state.items() if k != key}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lacks 1"):
        build_detector("tiny", checkpoint=partial, text_encoder=bert_dir, input_size=INPUT_SIZE)
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="'model'"):
        build_detector("tiny", checkpoint=tmp_path / "bare.pth", text_encoder=bert_dir, input_size=INPUT_SIZE)
