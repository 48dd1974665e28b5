"""Concept scores (issue 12, section 3): from the cached CLIP image pass and ONE batched text pass, sorted,
equal to an independent full-forward reference, named after the model that produced them; the UI handlers
return the chart and a concept picker whose choice is explained with the three methods. Also: CLIP runs on
the analyzer's device (section 2).
"""

from __future__ import annotations

import time

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from skinapp.clip.text import TEXT_CACHE
from skinapp.concept_scores import DEFAULT_CONCEPTS, MAX_CONCEPTS, parse_concepts
from skinapp.explain.base import GradContext, LastBlock
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.review import ReviewStore
from skinapp.synthetic import make_skin_photo
from skinapp.ui import Handlers


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return make_skin_photo(seed=21, size=(200, 280), lesion_colour="dark_brown").pixels


def _count_calls(module: torch.nn.Module, calls: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda *a: calls.append(1))


def test_scores_equal_a_full_forward_reference_and_are_sorted(analyzer, photo):
    result = analyzer.concept_scores(photo)
    bundle = analyzer.clips[result.clip_label]
    assert sorted(result.concepts) == sorted(DEFAULT_CONCEPTS)
    assert np.all(np.diff(result.scores) <= 0), "highest first"
    with torch.no_grad():  # independent: the whole model on the same whole-photo view
        from PIL import Image
        image = F.normalize(bundle.model.encode_image(bundle.whole_photo_preprocess()(Image.fromarray(photo))[None]),
                            dim=-1)[0]
        text = F.normalize(bundle.model.encode_text(bundle.tokenizer(result.concepts)), dim=-1)
    reference = (text @ image).numpy()
    np.testing.assert_allclose(result.scores, reference, atol=1e-5)
    assert np.ptp(reference) > 1e-4, "scores must differ, or sorting is untested"


def test_one_batched_text_pass_and_no_image_tower_when_cached(analyzer, photo):
    bundle = analyzer.clips[analyzer.clip_choices[0]]
    analyzer.explain(photo, ["lesion"])  # caches the photo's CLIP image pass
    TEXT_CACHE.clear()
    text_calls, image_calls = [], []
    handles = [_count_calls(bundle.model.token_embedding, text_calls), _count_calls(bundle.model.visual.conv1,
                                                                                     image_calls)]
    try:
        first = analyzer.concept_scores(photo, list(DEFAULT_CONCEPTS))
        assert (len(text_calls), len(image_calls)) == (1, 0), "one text batch for 21 concepts, no image pass"
        assert first.timings["image_pass"] == 0.0
        again = analyzer.concept_scores(photo, "\n".join(reversed(DEFAULT_CONCEPTS)))
        assert (len(text_calls), len(image_calls)) == (1, 0), "cached per phrase the second time"
    finally:
        for h in handles:
            h.remove()
    assert again.concepts == first.concepts
    np.testing.assert_allclose(again.scores, first.scores, atol=1e-6)


def test_scores_name_their_model_and_carry_the_untrained_banner(analyzer, photo):
    result = analyzer.concept_scores(photo, "erythema\nscale, crust")
    assert result.concepts and set(result.concepts) == {"erythema", "scale", "crust"}
    assert result.clip_label in result.producer and result.producer.startswith("Scores from CLIP weights")
    # tiny demo CLIP: the warning, which model is untrained, and why (the reason load_models gave for CLIP)
    assert result.banner == (f"{UNTRAINED_WARNING}\nUntrained: clip_tiny: untrained (random init (tiny profile)).\n"
                             "Phrase heatmaps come from an untrained demo CLIP model (tiny profile).")
    assert [v for _, v in result.choices()] == result.concepts


def test_timings_are_the_seconds_each_stage_took(analyzer, photo):
    t0 = time.perf_counter()
    result = analyzer.concept_scores(photo, "erythema\nulcer")
    elapsed = time.perf_counter() - t0
    assert set(result.timings) == {"image_pass", "text", "total"}
    assert 0 <= result.timings["image_pass"] <= result.timings["total"] <= elapsed
    assert 0 < result.timings["text"] <= result.timings["total"] - result.timings["image_pass"]


def test_bad_input_is_refused_with_a_message(analyzer, photo):
    for cleared in (" \n , ", ""):  # a cleared box is refused, not silently replaced by the default list
        with pytest.raises(ValueError, match="Type at least one concept"):
            analyzer.concept_scores(photo, cleared)
    assert len(analyzer.concept_scores(photo).concepts) == len(DEFAULT_CONCEPTS), "None (API default): the defaults"
    with pytest.raises(ValueError, match="Too many concepts"):
        analyzer.concept_scores(photo, [f"concept {i}" for i in range(MAX_CONCEPTS + 1)])
    with pytest.raises(ValueError, match="not a concept"):
        parse_concepts(["123"])
    with pytest.raises(ValueError, match="Unknown CLIP weights"):
        analyzer.concept_scores(photo, "erythema", clip_choice="nope")
    with pytest.raises(ValueError, match="Upload a photo"):
        analyzer.concept_scores(None, "erythema")


def test_handlers_chart_picker_and_explaining_a_picked_concept(analyzer, photo, tmp_path):
    h = Handlers(analyzer, ReviewStore(tmp_path / "data"))
    fig, picker, status = h.concept_scores(photo, "erythema\nulcer\nplaque", analyzer.clip_choices[0])
    assert isinstance(fig, Figure) and UNTRAINED_WARNING in fig.axes[0].get_title()
    assert analyzer.clip_choices[0] in fig.axes[0].get_title()
    assert isinstance(picker, gr.Radio) and len(picker.choices) == 3
    assert "Scored 3 concepts" in status and analyzer.clip_choices[0] in status
    concept = picker.choices[0][1]
    gallery, sims, _, status = h.explain_concept(photo, concept, analyzer.clip_choices[0])
    assert len(gallery.value) == 4  # photo + Grad-CAM + Grad E-CLIP + MedGrad E-CLIP
    assert list(sims["phrase"]) == [concept] and "Explained 1 phrase for photo" in status
    with pytest.raises(gr.Error, match="Choose a concept first"):
        h.explain_concept(photo, None, analyzer.clip_choices[0])
    with pytest.raises(gr.Error, match="Upload a photo on the Analyse tab first"):
        h.concept_scores(None, "erythema", None)


def test_clip_runs_on_the_analyzers_device(analyzer, photo):
    """Every CLIP parameter and the explainers' working tensors are on the analyzer's device (CPU here)."""
    for bundle in analyzer.clips.values():
        assert {p.device for p in bundle.model.parameters()} == {analyzer.device}
    bundle = analyzer.clips[analyzer.clip_choices[0]]
    image_pass = analyzer._clip_pass(analyzer.state_for(photo), analyzer.clip_choices[0])
    ctx = GradContext(LastBlock(bundle.model), image_pass, torch.randn(2, image_pass.image_features.shape[0]))
    assert ctx.device == bundle.device == analyzer.device
    assert ctx.x_in.device == ctx.S.device == ctx.text.device == analyzer.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the device path; CPU-only machines skip)")
def test_cuda_analyzer_explains_and_scores_like_the_cpu_one(photo):
    cpu = Analyzer.create(profile="tiny", device="cpu", warmup=False)
    gpu = Analyzer.create(profile="tiny", device="cuda", warmup=False)
    choice = cpu.clip_choices[0]
    assert gpu.clips[choice].device.type == "cuda"
    a, b = cpu.explain(photo, ["erythema", "ulcer"], choice), gpu.explain(photo, ["erythema", "ulcer"], choice)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-4)
    for m in a.maps:
        np.testing.assert_allclose(a.maps[m], b.maps[m], atol=1e-3)
    sa, sb = cpu.concept_scores(photo, None, choice), gpu.concept_scores(photo, None, choice)
    np.testing.assert_allclose(sorted(sa.scores), sorted(sb.scores), atol=1e-4)
