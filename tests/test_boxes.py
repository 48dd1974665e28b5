"""Every box the app keeps is a valid box in its image: clipped, degenerate ones dropped or refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinapp.boxes import check_boxes, clip_boxes, sanitize_boxes, valid_boxes
from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.segmenter import build_segmenter
from skinapp.concepts.types import Concepts, Detections
from skinapp.image import load_image
from skinapp.provenance import untrained
from skinapp.review import ConceptReview, ReviewStore

W, H = 64, 48
RAW = np.array([
    [10, 10, 30, 30],          # fine
    [-20, -5, 20, 40],         # partly outside: clipped to [0, 0, 20, 40]
    [50, 40, 200, 90],         # partly outside: clipped to [50, 40, 64, 48]
    [70, 10, 90, 20],          # entirely right of the image: nothing left after clipping
    [30, 30, 20, 40],          # inverted
    [5, 5, 5.5, 30],           # thinner than a pixel
    [np.nan, 0, 10, 10],       # not finite
], np.float32)
KEPT = [0, 1, 2]


def test_sanitize_clips_and_marks_degenerate_boxes():
    clipped, keep = sanitize_boxes(RAW, W, H)
    assert np.flatnonzero(keep).tolist() == KEPT
    np.testing.assert_array_equal(clipped[KEPT], [[10, 10, 30, 30], [0, 0, 20, 40], [50, 40, 64, 48]])
    assert valid_boxes(clipped[KEPT], W, H).all()
    np.testing.assert_array_equal(clip_boxes(RAW[:1], W, H), RAW[:1])
    with pytest.raises(ValueError, match=r"box 3 .* not a valid box in the 64x48 image \(4 invalid\)"):
        check_boxes(clipped, W, H)


class FixedDetector:
    """TEST DOUBLE: returns RAW (scores in order) for any prompt."""

    weights = untrained("fixed_detector", "test double")

    def detect(self, pixels, prompts, box_threshold=None, text_threshold=None):
        n = len(RAW)
        return Detections(RAW.copy(), ["lesion"] * n, np.linspace(0.9, 0.3, n).astype(np.float32))


def test_grounded_extractor_keeps_only_valid_boxes_whatever_the_detector_returns():
    pixels = np.full((H, W, 3), 180, np.uint8)
    concepts = GroundedSamExtractor(FixedDetector(), build_segmenter("tiny")).extract(load_image(pixels), "lesion")
    assert len(concepts) == len(KEPT) and concepts.masks.shape == (len(KEPT), H, W)
    np.testing.assert_array_equal(concepts.boxes, sanitize_boxes(RAW, W, H)[0][KEPT])
    np.testing.assert_allclose(concepts.scores, np.linspace(0.9, 0.3, len(RAW))[KEPT], rtol=1e-6)


def test_concepts_refuse_invalid_boxes_from_any_extractor():
    def make(boxes):
        n = len(boxes)
        return Concepts(np.asarray(boxes, np.float32), ["lesion"] * n, np.ones(n, np.float32),
                        np.zeros((n, H, W), bool), np.ones(n, np.float32), torch.zeros(n, 256), "test")

    assert len(make([[0, 0, W, H]])) == 1
    with pytest.raises(ValueError, match="not a valid box"):
        make([[0, 0, W + 1, H]])
    with pytest.raises(ValueError, match="mismatched arrays"):
        Concepts(np.zeros((1, 4), np.float32), [], np.ones(1, np.float32), np.zeros((1, H, W), bool),
                 np.ones(1, np.float32), torch.zeros(1, 256), "test")


def test_review_store_clips_user_boxes_and_refuses_empty_ones(tmp_path):
    store = ReviewStore(tmp_path)
    pixels, masks = np.zeros((H, W, 3), np.uint8), np.zeros((2, H, W), bool)
    key = "ab" * 8
    saved = store.save(key, pixels, masks, [ConceptReview(0, "lesion", 0.5, (-4, 2, 80, 30), "accept")])
    assert saved.concepts[0].box == (0.0, 2.0, float(W), 30.0)
    with pytest.raises(ValueError, match=r"Concept 1 \('leg'\): its box .* no area inside the 64x48 photo"):
        store.save(key, pixels, masks, [ConceptReview(1, "leg", 0.5, (70, 0, 90, 10), "accept")])
    assert store.load(key).revision == 1
