"""Grounded SAM extractor: one detector pass, one SAM embedding, one batched decode per image; caching."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from skinapp.cache import LRUCache
from skinapp.concepts.extractor import Detector, GroundedSamExtractor
from skinapp.concepts.segmenter import SamSegmenter, build_segmenter
from skinapp.concepts.types import FEATURE_DIM, Detections
from skinapp.image import load_image
from skinapp.provenance import WeightsInfo, untrained
from skinapp.synthetic import make_skin_photo


class ScriptedDetector:
    """TEST DOUBLE for the detector (unit tests only): fixed boxes per prompt, counts its calls.

    Lets the unit tests fix how many boxes come back and with which scores (cap ordering, ties,
    empty path). The end-to-end tests at the end of this file use the real tiny Grounding DINO.
    """

    def __init__(self, boxes_per_prompt: dict[str, list[tuple[list[float], float]]]) -> None:
        self.boxes_per_prompt = boxes_per_prompt
        self.weights = untrained("scripted_detector", "test double")
        self.n_forward = 0
        self.calls: list[tuple[tuple[str, ...], float | None, float | None]] = []

    def detect(self, pixels, prompts, box_threshold=None, text_threshold=None) -> Detections:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3
        self.n_forward += 1
        self.calls.append((tuple(prompts), box_threshold, text_threshold))
        rows = [(box, score, p) for p in prompts for box, score in self.boxes_per_prompt.get(p, [])]
        if box_threshold is not None:
            rows = [r for r in rows if r[1] >= box_threshold]
        if not rows:
            return Detections.empty()
        return Detections(boxes=np.array([r[0] for r in rows], np.float32), phrases=[r[2] for r in rows],
                          scores=np.array([r[1] for r in rows], np.float32))


SCRIPT = {
    "lesion": [([200, 150, 260, 210], 0.55), ([20, 20, 60, 60], 0.31)],
    "leg": [([0, 80, 512, 330], 0.81)],
    "arm": [([10, 100, 500, 300], 0.42), ([300, 40, 340, 90], 0.37)],
}


@pytest.fixture(scope="module")
def segmenter() -> SamSegmenter:
    torch.manual_seed(0)
    return build_segmenter("tiny")


@pytest.fixture(scope="module")
def photo():
    return make_skin_photo(seed=3, lesion_colour="dark_brown")


@pytest.fixture
def image(photo):
    return load_image(photo.pixels)


def test_scripted_detector_satisfies_the_protocol():
    assert isinstance(ScriptedDetector(SCRIPT), Detector)


def test_extract_shapes_order_and_provenance(segmenter, image):
    detector = ScriptedDetector(SCRIPT)
    extractor = GroundedSamExtractor(detector, segmenter)
    concepts = extractor.extract(image, ["lesion", "leg", "arm"])
    n = 5
    assert len(concepts) == n and concepts.source == "grounded_sam" and concepts.image_key == image.key
    assert concepts.boxes.shape == (n, 4) and concepts.boxes.dtype == np.float32
    assert concepts.masks.shape == (n, *image.size) and concepts.masks.dtype == bool
    assert concepts.mask_scores.shape == (n,) and concepts.mask_scores.dtype == np.float32
    assert concepts.features.shape == (n, FEATURE_DIM) and concepts.features.dtype == torch.float32
    np.testing.assert_allclose(concepts.scores, [0.81, 0.55, 0.42, 0.37, 0.31], rtol=1e-6)  # best first
    assert concepts.phrases == ["leg", "lesion", "arm", "arm", "lesion"]
    np.testing.assert_array_equal(concepts.boxes[0], [0, 80, 512, 330])
    assert concepts.weights == (detector.weights, segmenter.weights) and not concepts.trained
    # The features are the segmenter's own pooling of this image's embedding under these masks.
    emb = extractor.embedding(image)
    expected = segmenter.pool_features(emb, concepts.masks, concepts.boxes)
    torch.testing.assert_close(concepts.features, expected)
    with pytest.raises(ValueError, match="read-only"):
        concepts.masks[0, 0, 0] = True  # the cached result is shared: read-only


def test_one_detector_pass_one_embedding_one_decode_then_cache_hits(segmenter, image):
    detector = ScriptedDetector(SCRIPT)
    extractor = GroundedSamExtractor(detector, segmenter)
    n_embed, n_decode = segmenter.n_embed, segmenter.n_decode
    first = extractor.extract(image, ["lesion", "leg"], box_threshold=0.3)
    assert detector.n_forward == 1 and detector.calls == [(("lesion", "leg"), 0.3, None)]
    assert (segmenter.n_embed - n_embed, segmenter.n_decode - n_decode) == (1, 1)
    again = extractor.extract(load_image(photo_copy(image)), ["Lesion ", "leg", "lesion"], box_threshold=0.3)
    assert again is first and extractor.results.hits == 1
    assert detector.n_forward == 1 and (segmenter.n_embed - n_embed, segmenter.n_decode - n_decode) == (1, 1)
    assert extractor.embedding(image) is extractor.embedding(image)
    assert segmenter.n_embed - n_embed == 1


def photo_copy(image):
    """The same pixels in a new array (a re-upload): same content key."""
    return np.array(image.pixels, copy=True)


def test_other_prompts_or_thresholds_rerun_detector_not_sam_encoder(segmenter, image):
    detector = ScriptedDetector(SCRIPT)
    extractor = GroundedSamExtractor(detector, segmenter)
    n_embed = segmenter.n_embed
    a = extractor.extract(image, ["lesion"])
    b = extractor.extract(image, ["arm", "leg"])
    c = extractor.extract(image, ["lesion"], box_threshold=0.5)
    assert detector.n_forward == 3 and segmenter.n_embed - n_embed == 1
    assert a.phrases == ["lesion", "lesion"] and b.phrases == ["leg", "arm", "arm"] and c.phrases == ["lesion"]
    other = load_image(make_skin_photo(seed=4).pixels)
    extractor.extract(other, ["lesion"])
    assert detector.n_forward == 4 and segmenter.n_embed - n_embed == 2


def test_max_concepts_keeps_the_top_scores(segmenter, image):
    detector = ScriptedDetector(SCRIPT)
    extractor = GroundedSamExtractor(detector, segmenter, max_concepts=2)
    concepts = extractor.extract(image, ["lesion", "leg", "arm"])
    assert concepts.phrases == ["leg", "lesion"] and concepts.masks.shape[0] == 2
    np.testing.assert_allclose(concepts.scores, [0.81, 0.55], rtol=1e-6)
    assert concepts.features.shape == (2, FEATURE_DIM)


def test_no_detections_gives_empty_concepts_without_sam(segmenter, image):
    detector = ScriptedDetector(SCRIPT)
    extractor = GroundedSamExtractor(detector, segmenter)
    n_embed, n_decode = segmenter.n_embed, segmenter.n_decode
    concepts = extractor.extract(image, ["toe"])
    assert len(concepts) == 0 and concepts.features.shape == (0, FEATURE_DIM)
    assert concepts.masks.shape == (0, *image.size) and concepts.source == "grounded_sam"
    assert concepts.weights == (detector.weights, segmenter.weights) and concepts.image_key == image.key
    assert detector.n_forward == 1 and (segmenter.n_embed, segmenter.n_decode) == (n_embed, n_decode)


def test_bad_arguments(segmenter, image):
    extractor = GroundedSamExtractor(ScriptedDetector(SCRIPT), segmenter)
    with pytest.raises(ValueError, match="No prompt"):
        extractor.extract(image, [" ", ""])
    with pytest.raises(ValueError, match="box_threshold"):
        extractor.extract(image, ["lesion"], box_threshold=1.5)
    with pytest.raises(ValueError, match="max_concepts"):
        GroundedSamExtractor(ScriptedDetector(SCRIPT), segmenter, max_concepts=0)
    with pytest.raises(ValueError, match=r"too small \(4x4\)"):
        extractor.extract(np.zeros((4, 4, 3), np.uint8), ["lesion"])  # too small to be a photo


def test_lru_cache_bounds_counts_and_threads():
    cache: LRUCache[int] = LRUCache(2)
    assert cache.get_or_compute("a", lambda: 1) == 1 and cache.get_or_compute("a", lambda: 2) == 1
    cache.put("b", 2)
    cache.get("a")  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert (cache.hits, cache.misses) == (4, 1)
    assert cache.get("b") is None and cache.misses == 2
    cache.clear()
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)
    calls = []
    barrier = threading.Barrier(4)

    def compute():
        calls.append(1)
        time.sleep(0.05)  # a slow model pass: the other threads arrive while it runs
        return object()

    results = []

    def worker():
        barrier.wait()
        results.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and len({id(r) for r in results}) == 1
    assert cache._inflight == {}

    def fail():
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        cache.get_or_compute("bad", fail)
    assert "bad" not in cache and cache._inflight == {} and cache.get_or_compute("bad", lambda: 7) == 7
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        LRUCache(0)


def test_weights_info_is_carried(segmenter, image, tmp_path):
    """A trained segmenter and an untrained detector still make untrained concepts."""
    path = tmp_path / "sam.pth"
    torch.save(segmenter.sam.state_dict(), path)
    trained_seg = build_segmenter("tiny", checkpoint=path)
    concepts = GroundedSamExtractor(ScriptedDetector(SCRIPT), trained_seg).extract(image, ["leg"])
    assert concepts.weights[1] == WeightsInfo("sam_tiny", True, str(path)) and not concepts.trained


# ------------------------------------------------------------------ end to end with the real tiny Grounding DINO

PROMPTS = ["lesion", "leg", "arm"]


@pytest.fixture(scope="module")
def gdino(tmp_path_factory):
    pytest.importorskip("groundingdino")
    from skinapp.concepts.detector import GroundingDinoDetector, build_detector
    from skinapp.concepts.text_encoder import write_tiny_text_encoder

    torch.manual_seed(0)
    detector = build_detector("tiny", text_encoder=write_tiny_text_encoder(tmp_path_factory.mktemp("bert")),
                              input_size=256)
    assert isinstance(detector, GroundingDinoDetector) and isinstance(detector, Detector)
    return detector


def test_end_to_end_with_grounding_dino_and_sam(gdino, segmenter, photo):
    image = load_image(photo.pixels)
    extractor = GroundedSamExtractor(gdino, segmenter, max_concepts=30)
    n_forward, n_embed, n_decode = gdino.n_forward, segmenter.n_embed, segmenter.n_decode
    concepts = extractor.extract(image, PROMPTS, box_threshold=0.0, text_threshold=0.0)
    assert (gdino.n_forward - n_forward, segmenter.n_embed - n_embed, segmenter.n_decode - n_decode) == (1, 1, 1)
    n = len(concepts)
    assert 0 < n <= 30 and set(concepts.phrases) <= set(PROMPTS)
    assert concepts.boxes.shape == (n, 4) and concepts.masks.shape == (n, 384, 512) and concepts.masks.dtype == bool
    assert concepts.features.shape == (n, FEATURE_DIM) and torch.isfinite(concepts.features).all()
    assert concepts.mask_scores.shape == (n,) and np.all(np.diff(concepts.scores) <= 0)
    assert concepts.weights == (gdino.weights, segmenter.weights) and concepts.weights[0].name == "grounding_dino_tiny"
    # The concepts are the detector's top boxes (it is deterministic; this direct call is one more forward).
    direct = gdino.detect(image.pixels, PROMPTS, box_threshold=0.0, text_threshold=0.0)
    np.testing.assert_array_equal(concepts.boxes, direct.boxes[:n])
    assert concepts.phrases == direct.phrases[:n]
    n_forward = gdino.n_forward

    assert extractor.extract(image, PROMPTS, box_threshold=0.0, text_threshold=0.0) is concepts
    assert (gdino.n_forward, segmenter.n_embed - n_embed, segmenter.n_decode - n_decode) == (n_forward, 1, 1)

    lesion_only = extractor.extract(image, ["lesion"], box_threshold=0.0, text_threshold=0.0)
    assert set(lesion_only.phrases) <= {"lesion"}
    assert gdino.n_forward == n_forward + 1 and segmenter.n_embed - n_embed == 1  # detector again, SAM encoder not


def test_real_detector_cap_and_empty_path(gdino, segmenter, photo):
    image = load_image(photo.pixels)
    found = len(gdino.detect(image.pixels, PROMPTS, box_threshold=0.0, text_threshold=0.0))
    assert found > 3
    capped = GroundedSamExtractor(gdino, segmenter, max_concepts=3).extract(image, PROMPTS, 0.0, 0.0)
    assert len(capped) == 3 and capped.features.shape == (3, FEATURE_DIM) and capped.masks.shape[0] == 3
    n_embed = segmenter.n_embed
    empty = GroundedSamExtractor(gdino, segmenter).extract(image, PROMPTS, box_threshold=1.0)  # sigmoid < 1
    assert len(empty) == 0 and empty.features.shape == (0, FEATURE_DIM) and empty.masks.shape == (0, 384, 512)
    assert segmenter.n_embed == n_embed
