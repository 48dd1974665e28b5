"""Our fast paths against references that are not our own code, and what the user reads against the model.

* ``SamSegmenter.decode`` vs ``segment_anything.SamPredictor.predict_torch`` (the library's own prompt path)
  on the same image and boxes: catches box coordinates handed to the prompt encoder in the wrong order
  or frame.
* Explaining more phrases than one gradient chunk holds, against one run per phrase.
* The decisive concept the Analyse screen shows (index, CAM row, text, image) is the model's
  ``prediction.top_concept``, recomputed here from the CAM.
* The Explain heatmaps line up with the displayed view: a marker at the edge of a landscape photo is
  where the model input has it, and a heatmap that points at the marker lights the marker in the overlay.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from segment_anything import SamPredictor

from skinapp import pipeline
from skinapp.clip.model import build_clip
from skinapp.concepts.segmenter import build_segmenter
from skinapp.drawing import draw_concept, stamp_banner
from skinapp.explain import encode_image_for_explain, explain_from_pass
from skinapp.explain.entropy import denormalise_to_uint8
from skinapp.explain.pipeline import GRAD_CHUNK
from skinapp.explain.render import COLORMAP
from skinapp.pipeline import Analyzer
from skinapp.synthetic import make_skin_photo

# ------------------------------------------------------------------------------------------------ SAM


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return build_segmenter("tiny", decode_chunk=3, encoder_bf16=False)  # SamPredictor's encoder runs in fp32


def test_decode_matches_segment_anything_predictor(segmenter):
    pixels = make_skin_photo(seed=7, size=(150, 230)).pixels  # not square: x and y scale differently
    boxes = np.array([[10, 20, 90, 60], [120, 5, 220, 140], [30, 70, 60, 145], [0, 0, 229, 149],
                      [150, 100, 200, 120]], np.float32)  # wide, tall and thin boxes: a swap changes them all

    emb = segmenter.embed(pixels)
    logits, scores = segmenter.decode_logits(emb, boxes)

    predictor = SamPredictor(segmenter.sam)
    predictor.set_image(pixels)
    torch.testing.assert_close(emb.embedding, predictor.features, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        ref_logits, ref_iou, _ = predictor.predict_torch(
            point_coords=None, point_labels=None,
            boxes=predictor.transform.apply_boxes_torch(torch.from_numpy(boxes), pixels.shape[:2]),
            multimask_output=False, return_logits=True)
    assert ref_logits.shape == (5, 1, 150, 230)
    torch.testing.assert_close(logits, ref_logits[:, 0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scores, ref_iou[:, 0].numpy(), atol=1e-5)
    masks, _ = segmenter.decode(emb, boxes)
    decided = (ref_logits[:, 0] - segmenter.sam.mask_threshold).abs().numpy() > 1e-3  # not on the float edge
    np.testing.assert_array_equal(masks[decided], (ref_logits[:, 0] > segmenter.sam.mask_threshold).numpy()[decided])
    # control: the boxes with x and y swapped give other logits, so the comparison can tell
    swapped = np.clip(boxes[:, [1, 0, 3, 2]], 0, [149, 229, 149, 229]).astype(np.float32)
    other, _ = segmenter.decode_logits(emb, swapped)
    assert (other - ref_logits[:, 0]).abs().max() > 1e-2


# -------------------------------------------------------------------------------------------- explain

PHRASES_18 = ["irregular streaks", "blue-whitish veil", "atypical pigment network", "dots and globules",
              "regression structures", "ulcer with undermined edges", "raspberry-like papilloma",
              "burrows and excoriated papules", "hypopigmented anaesthetic patch", "plaque with raised borders",
              "swelling with draining sinuses", "asymmetric lesion", "typical pigment network", "streaks",
              "regression areas", "dark brown and black colours", "atypical vascular pattern", "a mole on the arm"]


def test_more_phrases_than_one_gradient_chunk_equal_one_run_per_phrase():
    assert len(PHRASES_18) > GRAD_CHUNK
    bundle = build_clip("tiny", seed=2)
    image_pass = encode_image_for_explain(bundle.model, make_skin_photo(seed=4).pixels)
    together = explain_from_pass(bundle.model, image_pass, PHRASES_18, tokenizer=bundle.tokenizer)
    for method, maps in together.maps.items():
        assert maps.shape == (len(PHRASES_18), 14, 14), method
    for t, phrase in enumerate(PHRASES_18):
        alone = explain_from_pass(bundle.model, image_pass, [phrase], tokenizer=bundle.tokenizer)
        assert together.similarities[t] == pytest.approx(float(alone.similarities[0]), abs=1e-6), phrase
        for method, maps in together.maps.items():
            torch.testing.assert_close(maps[t], alone.maps[method][0], atol=1e-6, rtol=1e-5,
                                       msg=lambda m, t=t, method=method: f"{method} phrase {t}: {m}")
    # the phrases do get different maps (the comparison is not between constants)
    assert (together.maps["grad_eclip"][0] - together.maps["grad_eclip"][-1]).abs().max() > 1e-6


# -------------------------------------------------------------------------------------- the app's reading

@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.create(profile="tiny", device="cpu", warmup=False, cache_size=4)


@pytest.mark.parametrize("seed", [5, 8, 13])
def test_decisive_concept_shown_is_the_models_top_concept(analyzer, seed):
    photo = make_skin_photo(seed=seed, size=(192, 256), lesion_colour="dark_brown")
    result = analyzer.analyze(photo.pixels, prompts="lesion . arm . leg")
    pred = result.prediction
    assert len(result.concepts) >= 2, "needs a choice between concepts to mean anything"
    # recompute from the CAM: the concept row with the highest score for the predicted class
    assert pred.predicted_index == int(np.argmax(pred.probs))
    assert pred.predicted == pred.class_names[pred.predicted_index]
    concept_rows = [r for r, i in enumerate(pred.cam_concepts) if i is not None]
    best_row = max(concept_rows, key=lambda r: pred.cam[r, pred.predicted_index])
    top = pred.cam_concepts[best_row]

    assert pred.top_concept == top
    assert result.decisive_index == top and result.decisive_row == best_row
    assert result.cam_rows[best_row] == f"#{top} {result.concepts.phrases[top]}"
    assert f"#{top} '{result.concepts.phrases[top]}'" in result.decisive_text
    assert f"'{pred.predicted}'" in result.decisive_text
    assert f"CAM score {pred.cam[best_row, pred.predicted_index]:.3f}" in result.decisive_text
    label = f"{result.concepts.phrases[top]} {result.concepts.scores[top]:.2f}"
    expected = draw_concept(result.image.pixels, result.concepts.masks[top], result.concepts.boxes[top], label)
    np.testing.assert_array_equal(result.decisive_image, stamp_banner(expected) if result.banner else expected)


MARKER = (0, 0, 255)


def _marker_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) inclusive of the pure-blue marker pixels."""
    hit = (rgb[..., 2].astype(int) > 200) & (rgb[..., 0].astype(int) < 60) & (rgb[..., 1].astype(int) < 60)
    ys, xs = np.nonzero(hit)
    assert len(ys) > 0, "marker not visible"
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def _heat_from_overlay(overlay: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Invert blend(view, heat, 0.5): colour = 2 * overlay - view, then the nearest colormap entry."""
    colour = 2.0 * overlay.astype(np.float32) - view.astype(np.float32)
    table = (colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)  # [256, 3]
    dist = ((colour.reshape(-1, 1, 3) - table[None]) ** 2).sum(-1)
    return (dist.argmin(1) / 255.0).reshape(view.shape[:2])


def test_explain_heatmap_lines_up_with_the_displayed_view(analyzer, monkeypatch):
    photo = np.empty((160, 320, 3), np.uint8)
    photo[:] = (200, 160, 140)
    photo[5:55, 270:314] = MARKER  # top-right corner of a landscape photo (a centre crop would cut it)

    real = pipeline.explain_from_pass
    pointed: dict[str, tuple[int, int]] = {}

    def heatmap_at_marker(model, image_pass, phrases, **kwargs):
        """The real explanation, its maps replaced by one that says: the marker's grid cell."""
        expl = real(model, image_pass, phrases, **kwargs)
        y0, y1, x0, x1 = _marker_box(denormalise_to_uint8(image_pass.image))  # where the MODEL sees it
        size = image_pass.image.shape[-1]
        cell = (int((y0 + y1) / 2 * 14 / size), int((x0 + x1) / 2 * 14 / size))
        pointed["cell"], pointed["input_box"] = cell, (y0, y1, x0, x1)
        for method, maps in expl.maps.items():
            one_hot = torch.zeros_like(maps)
            one_hot[:, cell[0], cell[1]] = 1.0
            expl.maps[method] = one_hot
        return expl

    monkeypatch.setattr(pipeline, "explain_from_pass", heatmap_at_marker)
    result = analyzer.explain(photo, ["lesion"])

    tiles = [t[t.shape[0] - t.shape[1]:] for t in result.overlays[0]]  # the square view below the banner strip
    view = tiles[0]
    size = view.shape[0]
    assert view.shape == (size, size, 3) and result.overlays[0][0].shape[0] > size, "demo mode: a strip above"
    vy0, vy1, vx0, vx1 = _marker_box(view)
    # the displayed view shows the marker where the model input has it (same grid cells)
    iy0, iy1, ix0, ix1 = pointed["input_box"]
    s_in = 224
    for v, i in ((vy0, iy0), (vy1, iy1), (vx0, ix0), (vx1, ix1)):
        assert abs(v / size - i / s_in) < 2.5 / s_in, (v, i)
    # and each method's overlay is hottest on the marker
    for column, method in enumerate(result.methods, start=1):
        heat = _heat_from_overlay(tiles[column], view)
        hy, hx = np.unravel_index(np.argmax(heat), heat.shape)
        assert vy0 <= hy <= vy1 and vx0 <= hx <= vx1, (method, (hy, hx), (vy0, vy1, vx0, vx1))
        assert heat[vy0:vy1 + 1, vx0:vx1 + 1].max() > 0.9 and heat[size // 8:, : size // 2].max() < 0.05, method
