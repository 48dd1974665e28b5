"""skinapp.pipeline.Analyzer in demo mode (tiny random models, weight-free concepts): real classes, no downloads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from skinapp import models, pipeline
from skinapp.checkpoints import CheckpointMissing
from skinapp.image import InvalidImageError
from skinapp.phrases import parse_phrases
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.results import AnalysisResult, ExplainResult
from skinapp.synthetic import make_skin_photo

PHRASES = ["irregular streaks", "blue-whitish veil", "ulcer with undermined edges", "atypical pigment network",
           "dots and globules"]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=True, cache_size=3)


def _photo(seed: int, colour: str = "dark_brown") -> np.ndarray:
    return make_skin_photo(seed=seed, size=(192, 256), lesion_colour=colour).pixels


def test_demo_mode_and_provenance(analyzer):
    assert analyzer.mode == "demo"
    assert analyzer.device.type == "cpu"
    assert "untrained" in analyzer.describe()
    assert analyzer.reasons["analysis"], "demo mode must say why"
    assert len(analyzer.states) == 0, "warm-up must not leave a photo behind"


def test_analyze_outputs_and_banner(analyzer):
    photo = make_skin_photo(seed=5, size=(192, 256), lesion_colour="dark_brown")
    result = analyzer.analyze(photo.pixels, prompts="lesion . arm")
    assert isinstance(result, AnalysisResult)
    assert result.banner.startswith(UNTRAINED_WARNING)
    assert not result.trained and all(not w.trained for w in result.weights if w.name == "fusion")
    assert UNTRAINED_WARNING in result.decisive_text
    h, w = result.image.height, result.image.width
    n = len(result.concepts)
    assert n >= 1 and result.concepts.masks.shape == (n, h, w)
    assert len(result.annotations) == n and result.annotations[0][0].shape == (h, w)
    probs = result.class_probabilities()
    assert set(probs) == set(models.DEMO_CLASS_NAMES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert result.prediction.cam.shape[1] == len(models.DEMO_CLASS_NAMES)
    assert len(result.cam_rows) == result.prediction.cam.shape[0]
    # the red banner strip is added above the decisive-concept image: every photo row stays visible
    strip = result.decisive_image.shape[0] - h
    assert strip > 0 and result.decisive_image.shape[1:] == (w, 3)
    assert np.all(result.decisive_image[0, :, 0] == 200) and np.all(result.decisive_image[0, :, 1] == 0)
    # the fallback finds the planted lesion: the first-ranked lesion mask covers it (IoU > 0.5, not one pixel)
    lesion = [i for i, p in enumerate(result.concepts.phrases) if p == "lesion"]
    assert lesion, "no lesion concept"
    top = result.concepts.masks[lesion[0]]
    assert (top & photo.lesion_mask).sum() / (top | photo.lesion_mask).sum() > 0.5


def test_image_pass_runs_once_per_photo(analyzer, monkeypatch):
    calls = {"tokens": 0, "clip": 0}
    tokens, encode = analyzer.global_encoder.tokens, pipeline.encode_image_for_explain

    def count_tokens(*a, **k):
        calls["tokens"] += 1
        return tokens(*a, **k)

    def count_clip(*a, **k):
        calls["clip"] += 1
        return encode(*a, **k)

    monkeypatch.setattr(analyzer.global_encoder, "tokens", count_tokens)
    monkeypatch.setattr(pipeline, "encode_image_for_explain", count_clip)
    pixels = _photo(11, "red")
    first = analyzer.analyze(pixels, prompts="lesion")
    second = analyzer.analyze(pixels, prompts="lesion . leg")  # new prompts: concepts again, ViT tokens cached
    assert analyzer.analyze(pixels, prompts="lesion") is first
    assert second.ref != first.ref and calls["tokens"] == 1
    e1 = analyzer.explain(first.image_key, ["irregular streaks"])
    e2 = analyzer.explain(first.image_key, ["blue-whitish veil", "streaks"])
    assert calls["clip"] == 1
    assert e1.timings["image_pass"] > 0 and e2.timings["image_pass"] == 0.0
    assert analyzer.latest_analysis(first.image_key) is first


def test_explain_five_phrases(analyzer):
    result = analyzer.analyze(_photo(21, "blue_grey"))
    expl = analyzer.explain(result.image_key, "\n".join(PHRASES) + "\n\n" + PHRASES[0])  # blank and repeat dropped
    assert isinstance(expl, ExplainResult)
    assert expl.phrases == PHRASES
    assert expl.similarities.shape == (5,) and np.all(np.abs(expl.similarities) <= 1.0)
    assert len(expl.overlays) == 5 and all(len(row) == 1 + len(pipeline.EXPLAIN_METHODS) for row in expl.overlays)
    for m in pipeline.EXPLAIN_METHODS:
        assert expl.maps[m].shape[0] == 5 and expl.maps[m].min() >= 0 and expl.maps[m].max() <= 1
    assert expl.banner.startswith(UNTRAINED_WARNING)
    assert len(expl.gallery()) == 5 * 4 and expl.gallery()[1][1].startswith("Grad-CAM \u00b7 sim ")
    # heatmaps differ between phrases (they depend on the text)
    assert not np.allclose(expl.maps["grad_eclip"][0], expl.maps["grad_eclip"][1])


def test_explain_from_file_without_analysis(analyzer, tmp_path):
    from PIL import Image

    path = tmp_path / "p.png"
    Image.fromarray(_photo(31)).save(path)
    expl = analyzer.explain(str(path), ["lesion"])
    assert expl.image_key and len(expl.overlays) == 1


def test_per_image_cache_is_bounded(analyzer):
    keys = [analyzer.analyze(_photo(100 + i)).image_key for i in range(4)]  # cache_size=3
    assert len(set(keys)) == 4 and len(analyzer.states) == 3
    with pytest.raises(ValueError, match="no longer in the app's memory"):
        analyzer.explain(keys[0], ["lesion"])
    assert analyzer.latest_analysis(keys[0]) is None


@pytest.mark.parametrize("source, match", [
    (None, "Upload a photo"),
    (b"this is not an image", "image"),
    (np.zeros((8, 8, 3), np.uint8), "small"),
])
def test_bad_photos_give_readable_errors(analyzer, source, match):
    with pytest.raises(InvalidImageError, match=match):
        analyzer.analyze(io.BytesIO(source) if isinstance(source, bytes) else source)


def test_text_file_is_rejected(analyzer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not an image we can read"):
        analyzer.analyze(str(path))


@pytest.mark.parametrize("kwargs, match", [
    ({"prompts": " . , "}, "prompt"),
    ({"prompts": "!!! . ???"}, "No prompt phrases"),
    ({"prompts": "lesion . 42"}, "not a prompt"),
    ({"prompts": " . ".join(f"p{i}x" for i in range(40))}, "Too many prompts"),
    ({"box_threshold": 1.5}, "between 0 and 1"),
    ({"text_threshold": "abc"}, "number"),
    ({"box_threshold": float("nan")}, "between 0 and 1"),
])
def test_bad_analyse_parameters(analyzer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        analyzer.analyze(_photo(1), **kwargs)


@pytest.mark.parametrize("phrases, match", [
    ("", "at least one phrase"),
    ("\n  \n", "at least one phrase"),
    ("12345\n%%%", "not a phrase"),
    ("x" * 500, "too long"),
    ("\n".join(f"phrase {chr(97 + i)}" for i in range(20)), "Too many phrases"),
])
def test_bad_phrases(analyzer, phrases, match):
    key = analyzer.analyze(_photo(2)).image_key
    with pytest.raises(ValueError, match=match):
        analyzer.explain(key, phrases)


def test_unknown_clip_choice(analyzer):
    with pytest.raises(ValueError, match="Unknown CLIP weights"):
        analyzer.explain(_photo(2), ["lesion"], clip_choice="nonsense")


def test_parse_phrases_cleans():
    assert parse_phrases("  blue   veil \n\nblue veil\nstreaks ") == ["blue veil", "streaks"]


def test_without_a_device_the_models_go_to_cuda_when_there_is_one_else_cpu():
    """`python app.py` without --device / SKINAPP_DEVICE passes device=None: it must pick a device, not fail."""
    loaded = models.load_models("tiny", device=None)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loaded.device.type == expected
    assert {p.device.type for p in loaded.fusion.parameters()} == {expected}


def test_auto_profile_without_checkpoints_is_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    auto = Analyzer.create(profile="auto", device="cpu", warmup=False)
    assert auto.mode == "demo"
    reasons = "\n".join(auto.reasons["analysis"] + auto.reasons["clip"])
    assert "groundingdino_swint_ogc" in reasons and "fusion_classifier" in reasons and "get it" in reasons
    result = auto.analyze(_photo(4))
    assert "groundingdino_swint_ogc" in result.banner
    with pytest.raises(CheckpointMissing, match=r"Checkpoint '\w+' \(.*\) is missing"):
        Analyzer.create(profile="full", device="cpu", warmup=False)
    with pytest.raises(ValueError, match="profile"):
        Analyzer.create(profile="huge")


def test_trained_clip_checkpoint_is_used_and_named(tmp_path, monkeypatch):
    """auto: a fine-tuned CLIP checkpoint (official safetensors + sidecar format) is used; its results carry
    no banner, while the analysis (no concept/fusion checkpoints) stays in demo mode and says so."""
    from skinapp.clip.model import CLIP_CONFIGS, build_clip, save_clip_checkpoint

    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    tuned = build_clip("tiny", seed=7)
    path = save_clip_checkpoint(tuned.model, tmp_path / "clip_finetuned", CLIP_CONFIGS["tiny"])
    auto = Analyzer.create(profile="auto", device="cpu", warmup=False, checkpoints={"clip_finetuned": path})
    assert auto.clip_choices == ["fine-tuned: fine-tuned"] and auto.mode == "demo"
    expl = auto.explain(_photo(6), ["irregular streaks"])
    assert expl.banner == "" and expl.weights[0].trained and str(path) in expl.weights[0].source
    assert not any(np.all(im[0, :, 0] == 200) and np.all(im[0, :, 1] == 0) for im in expl.overlays[0])
    assert auto.analyze(_photo(6)).banner.startswith(UNTRAINED_WARNING)


def test_concurrent_requests_do_not_mix_photos(analyzer):
    """Threads analysing different photos (and the same photo twice) each get their own photo's result."""
    from concurrent.futures import ThreadPoolExecutor

    pixels = [_photo(300 + i) for i in range(3)]
    jobs = [pixels[0], pixels[1], pixels[2], pixels[0]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: analyzer.analyze(p, prompts="lesion"), jobs))
    for job, result in zip(jobs, results):
        assert np.array_equal(result.image.pixels, job)
    assert results[0] is results[3] and len({r.image_key for r in results}) == 3


def test_explain_result_flags_phrases_cut_to_the_clip_context(analyzer):
    """Issue 9: a phrase over CLIP's 77 tokens is flagged in the result (and so in the Explain screen)."""
    long_phrase = " ".join("abcdefghij"[i % 10] for i in range(90))  # 90 single-letter tokens
    result = analyzer.explain(_photo(31), ["blue-whitish veil", long_phrase])
    assert result.truncated == [False, True] and result.context_length == 77
    assert result.truncation_note(1) == "(cut to 77 tokens)" and result.truncation_note(0) == ""
    assert "(cut to 77 tokens)" in result.gallery()[4][1] and "cut to" not in result.gallery()[0][1]
