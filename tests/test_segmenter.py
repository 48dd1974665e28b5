"""SAM stage: real segment_anything modules at the tiny profile (random weights, nothing downloaded)."""

from __future__ import annotations

import argparse
import dataclasses
import threading

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from skinapp.concepts.segmenter import (
    SAM_CONFIGS,
    SamEmbedding,
    SamSegmenter,
    build_sam,
    build_segmenter,
    load_sam_checkpoint,
)

BOXES = np.array([[10, 20, 200, 300], [100, 100, 150, 160], [0, 0, 512, 384], [300, 50, 480, 200]], np.float32)


@pytest.fixture(scope="module")
def segmenter() -> SamSegmenter:
    torch.manual_seed(0)
    return build_segmenter("tiny")


@pytest.fixture(scope="module")
def photo_pixels() -> np.ndarray:
    from skinapp.synthetic import make_skin_photo

    return make_skin_photo(seed=3, lesion_colour="dark_brown").pixels  # 384 x 512


def crafted(segmenter: SamSegmenter, size: tuple[int, int], seed: int = 0) -> SamEmbedding:
    """A random embedding with the geometry the segmenter itself gives an image of ``size``."""
    real = segmenter.embed(np.zeros((*size, 3), np.uint8))
    g = segmenter.grid_size
    grid = torch.randn(1, 256, g, g, generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(real, embedding=grid)


def test_tiny_profile_uses_segment_anything_classes(segmenter):
    sam = segmenter.sam
    assert isinstance(sam, Sam)
    assert isinstance(sam.image_encoder, ImageEncoderViT)
    assert isinstance(sam.prompt_encoder, PromptEncoder)
    assert isinstance(sam.mask_decoder, MaskDecoder)
    assert isinstance(sam.mask_decoder.transformer, TwoWayTransformer)
    assert segmenter.img_size == 256 and segmenter.grid_size == 16
    assert segmenter.weights.name == "sam_tiny" and not segmenter.weights.trained


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_full_configs_match_official_builds(variant):
    """Our configs give exactly the parameter names and shapes of segment_anything's own builders."""
    with torch.device("meta"):
        ours = build_sam(SAM_CONFIGS[variant]).state_dict()
        official = sam_model_registry[variant]().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_embed_decode_pool_shapes(segmenter, photo_pixels):
    n_embed, n_decode = segmenter.n_embed, segmenter.n_decode
    emb = segmenter.embed(photo_pixels)
    assert emb.embedding.shape == (1, 256, 16, 16) and emb.embedding.dtype == torch.float32
    assert emb.input_size == (192, 256) and emb.original_size == (384, 512)
    masks, scores = segmenter.decode(emb, BOXES)
    assert masks.shape == (4, 384, 512) and masks.dtype == bool
    assert scores.shape == (4,) and scores.dtype == np.float32
    feats = segmenter.pool_features(emb, masks, BOXES)
    assert feats.shape == (4, 256) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert (segmenter.n_embed, segmenter.n_decode) == (n_embed + 1, n_decode + 1)


def test_batched_decode_equals_per_box_decode(segmenter, photo_pixels):
    emb = segmenter.embed(photo_pixels)
    before = segmenter.n_decode
    logits, scores = segmenter.decode_logits(emb, BOXES)
    masks, _ = segmenter.decode(emb, BOXES)
    assert segmenter.n_decode == before + 2
    for i, box in enumerate(BOXES):
        one_logits, one_score = segmenter.decode_logits(emb, box[None])
        torch.testing.assert_close(one_logits[0], logits[i], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(one_score[0], scores[i], atol=1e-5)
        one_mask, _ = segmenter.decode(emb, box[None])
        decided = logits[i].abs().numpy() > 1e-3  # pixels not on the threshold's float-noise edge
        np.testing.assert_array_equal(one_mask[0][decided], masks[i][decided])
    assert segmenter.n_decode == before + 2 + 2 * len(BOXES)


def test_decode_no_boxes(segmenter, photo_pixels):
    emb = segmenter.embed(photo_pixels)
    masks, scores = segmenter.decode(emb, np.zeros((0, 4), np.float32))
    assert masks.shape == (0, 384, 512) and masks.dtype == bool and scores.shape == (0,)
    assert segmenter.pool_features(emb, masks).shape == (0, 256)


def test_pooled_features_equal_hand_computed_average(segmenter):
    emb = crafted(segmenter, (256, 256))  # scale 1: pixel == input coordinate, 16 px per cell
    grid = emb.embedding[0]
    masks = np.zeros((2, 256, 256), bool)
    masks[0, 0:32, 16:48] = True  # cells (0..1, 1..2), fully covered
    masks[1, 0:8, 0:16] = True  # half of cell (0, 0)
    masks[1, 0:16, 16:32] = True  # all of cell (0, 1)
    feats = segmenter.pool_features(emb, masks)
    torch.testing.assert_close(feats[0], grid[:, 0:2, 1:3].mean(dim=(1, 2)))
    torch.testing.assert_close(feats[1], (0.5 * grid[:, 0, 0] + grid[:, 0, 1]) / 1.5)


def test_pooling_accounts_for_padding_on_a_non_square_image(segmenter):
    emb = crafted(segmenter, (96, 192))  # resized to 128 x 256 inside the padded 256 x 256 input
    assert emb.input_size == (128, 256)
    grid = emb.embedding[0]
    mask = np.zeros((1, 96, 192), bool)
    mask[0, 84:96, 168:192] = True  # the image's bottom-right corner -> input rows 112..128, cols 224..256
    weights = segmenter.cell_weights(emb, mask)[0]
    expected = torch.zeros(16, 16)
    expected[7, 14:16] = 1.0  # grid row 7 is the image's last; rows 8..15 are padding
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(segmenter.pool_features(emb, mask)[0], grid[:, 7, 14:16].mean(dim=1))


def test_empty_mask_falls_back_to_box_then_image_mean(segmenter):
    emb = crafted(segmenter, (96, 192))
    grid = emb.embedding[0]
    empty = np.zeros((1, 96, 192), bool)
    box = np.array([[0, 0, 24, 12]], np.float32)  # input 0..32 x 0..16 -> cells (0, 0..1)
    torch.testing.assert_close(segmenter.pool_features(emb, empty, box)[0], grid[:, 0, 0:2].mean(dim=1))
    image_mean = grid[:, 0:8, :].mean(dim=(1, 2))  # the 8 x 16 cells the image covers, no padding
    torch.testing.assert_close(segmenter.pool_features(emb, empty)[0], image_mean)
    degenerate = np.array([[50, 50, 50, 50]], np.float32)
    torch.testing.assert_close(segmenter.pool_features(emb, empty, degenerate)[0], image_mean)


def test_official_checkpoint_format_round_trip(segmenter, photo_pixels, tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save(segmenter.sam.state_dict(), path)  # the official files are plain state dicts
    torch.manual_seed(123)
    fresh = build_segmenter("tiny")
    loaded = build_segmenter("tiny", checkpoint=path)
    assert loaded.weights.trained and loaded.weights.source == str(path)
    emb, emb_loaded = segmenter.embed(photo_pixels), loaded.embed(photo_pixels)
    assert not torch.allclose(fresh.embed(photo_pixels).embedding, emb.embedding)  # loading changed something
    torch.testing.assert_close(emb_loaded.embedding, emb.embedding)
    masks, scores = segmenter.decode(emb, BOXES)
    masks_loaded, scores_loaded = loaded.decode(emb_loaded, BOXES)
    np.testing.assert_array_equal(masks_loaded, masks)
    np.testing.assert_allclose(scores_loaded, scores, atol=1e-6)


def test_mismatching_checkpoints_are_refused_clearly(segmenter, tmp_path):
    state = segmenter.sam.state_dict()
    tiny_path = tmp_path / "sam_tiny.pth"
    torch.save(state, tiny_path)
    with torch.device("meta"):
        vit_b = build_sam(SAM_CONFIGS["vit_b"])
    with pytest.raises(ValueError, match="looks like a SAM tiny checkpoint"):
        load_sam_checkpoint(vit_b, tiny_path, "vit_b")
    partial = dict(state)
    partial.pop("mask_decoder.iou_token.weight")
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="1 missing"):
        build_segmenter("tiny", checkpoint=tmp_path / "partial.pth")
    torch.save({"not": "a state dict"}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        build_segmenter("tiny", checkpoint=tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(1), "obj": argparse.Namespace(a=1)}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only"):
        build_segmenter("tiny", checkpoint=tmp_path / "pickle.pth")
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found: .*missing.pth"):
        build_segmenter("tiny", checkpoint=tmp_path / "missing.pth")


def test_bad_inputs_raise_value_errors(segmenter, photo_pixels):
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.embed(photo_pixels.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.embed(photo_pixels[..., 0])
    emb = segmenter.embed(photo_pixels)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        segmenter.decode(emb, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        segmenter.decode(emb, np.array([[0, 0, np.nan, 5]]))
    with pytest.raises(ValueError, match="x1 >= x0"):
        segmenter.decode(emb, np.array([[10, 0, 5, 5]]))
    with pytest.raises(ValueError, match="masks must be"):
        segmenter.pool_features(emb, np.zeros((1, 10, 10), bool))
    with pytest.raises(ValueError, match="profile"):
        build_segmenter("huge")
    with pytest.raises(ValueError, match="variant"):
        build_segmenter("full", variant="vit_x")


def test_two_users_at_once_get_their_own_results(segmenter, photo_pixels):
    """No per-image state on the segmenter: concurrent embed/decode equal the serial results."""
    images = [photo_pixels, np.ascontiguousarray(photo_pixels[::-1, ::-1])]
    serial = [segmenter.decode(segmenter.embed(px), BOXES) for px in images]
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(2)

    def user(i):
        barrier.wait()
        for _ in range(3):
            results[i] = segmenter.decode(segmenter.embed(images[i]), BOXES)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_array_equal(results[i][0], serial[i][0])
        np.testing.assert_allclose(results[i][1], serial[i][1], atol=1e-6)
    assert not np.array_equal(serial[0][0], serial[1][0])


def test_chunked_decode_equals_one_batch():
    """CPU decoding in chunks (a memory-bound speed choice) gives the same masks as one batch."""
    from skinapp.concepts.segmenter import build_segmenter

    one = build_segmenter("tiny", decode_chunk=1000)
    chunked = build_segmenter("tiny", decode_chunk=3)
    chunked.sam.load_state_dict(one.sam.state_dict())
    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    emb = one.embed(pixels)
    boxes = np.array([[0, 0, 40, 40], [10, 20, 100, 90], [50, 5, 120, 60], [5, 50, 60, 95], [30, 30, 70, 70]],
                     np.float32)
    (l1, s1), (l2, s2) = one.decode_logits(emb, boxes), chunked.decode_logits(emb, boxes)
    assert torch.allclose(l1, l2, atol=1e-4) and np.allclose(s1, s2, atol=1e-5)
    assert chunked.n_decode == 1  # one decode request, however it is batched inside
    with pytest.raises(ValueError, match="decode_chunk"):
        build_segmenter("tiny", decode_chunk=0)
