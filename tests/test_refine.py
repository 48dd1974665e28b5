"""Refining a concept with clicks: SAM's interactive step on the cached embedding (no encoder pass, one decoder
call per click, the previous logits as mask prompt) and GrabCut in demo mode; the workbench's undo/redo,
add / delete / paint and saving a version with provenance."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.refine import check_points, grabcut_refine, mask_iou, sam_refine
from skinapp.concepts.segmenter import build_segmenter
from skinapp.image import load_image
from skinapp.review import ReviewStore
from skinapp.review.workbench import Workbench
from skinapp.synthetic import make_skin_photo
from tests.test_extractor import ScriptedDetector

PAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pad_ufes_20"


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return build_segmenter("tiny", encoder_bf16=False)


@pytest.fixture(scope="module")
def photo():
    return load_image(make_skin_photo(seed=3, size=(192, 256), lesion_colour="dark_brown").pixels)


def _sam_analyzer(segmenter, photo):
    detector = ScriptedDetector({"lesion": [([90, 60, 150, 120], 0.6)], "leg": [([0, 30, 256, 170], 0.8)]})
    extractor = GroundedSamExtractor(detector, segmenter)
    concepts = extractor.extract(photo, ["lesion", "leg"])
    analysis = SimpleNamespace(image=photo, concepts=concepts, prompts=("lesion", "leg"))
    return SimpleNamespace(extractor=extractor, analyses_of=lambda key: [analysis] if key == photo.key else [])


def test_sam_refinement_is_one_decoder_call_per_click_and_no_encoder_pass(segmenter, photo, tmp_path):
    analyzer = _sam_analyzer(segmenter, photo)
    bench = Workbench(analyzer, ReviewStore(tmp_path))
    encoder_calls, prompts_seen = [], []
    hooks = [segmenter.sam.image_encoder.register_forward_hook(lambda *a: encoder_calls.append(1)),
             segmenter.sam.prompt_encoder.register_forward_pre_hook(
                 lambda m, args, kwargs: prompts_seen.append(kwargs), with_kwargs=True)]
    decodes = segmenter.n_decode
    try:
        first = bench.refine("s", photo.key, 0, 120, 90, positive=True)
        second = bench.refine("s", photo.key, 0, 95, 65, positive=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert encoder_calls == [] and segmenter.n_decode == decodes + 2
    # click 1: box + one point, no mask prompt; click 2: both points and click 1's low-res logits
    assert prompts_seen[0]["masks"] is None and prompts_seen[0]["points"][0].shape == (1, 1, 2)
    assert prompts_seen[1]["points"][0].shape == (1, 2, 2) and prompts_seen[1]["points"][1].tolist() == [[1, 0]]
    assert torch.equal(prompts_seen[1]["masks"].cpu(), torch.from_numpy(first.concept(0).low_res))
    assert second.concept(0).provenance == "refined" and second.concept(1).provenance == "model"


def test_sam_refine_matches_segment_anythings_predictor(segmenter, photo):
    """The same prompts through SamPredictor.predict give the same mask and low-res logits."""
    emb = segmenter.embed(photo.pixels)
    predictor = SamPredictor(segmenter.sam)
    predictor.features, predictor.is_image_set = emb.embedding, True
    predictor.original_size, predictor.input_size = emb.original_size, emb.input_size
    box, points, labels = [90, 60, 150, 120], np.array([[120.0, 90.0], [95.0, 65.0]]), np.array([1, 0])
    first = sam_refine(segmenter, emb, box, points[:1], labels[:1])
    ours = sam_refine(segmenter, emb, box, points, labels, mask_input=first.low_res_logits)
    masks, scores, low_res = predictor.predict(points, labels, np.array(box), first.low_res_logits[0],
                                               multimask_output=False)
    assert np.array_equal(ours.mask, masks[0]) and np.allclose(ours.low_res_logits[0], low_res, atol=1e-4)
    assert ours.score == pytest.approx(float(scores[0]), abs=1e-4)


def test_planted_blob_one_positive_click_beats_the_box_alone_in_demo_mode():
    """Synthetic photo whose loose box makes box-only GrabCut miss the blob; one click inside fixes it."""
    p = make_skin_photo(seed=2, size=(256, 320), lesion_colour="dark_brown")
    x0, y0, x1, y1 = p.lesion_box
    box = (max(0, 2 * x0 - x1), max(0, 2 * y0 - y1), min(320, 2 * x1 - x0), min(256, 2 * y1 - y0))
    box_only = grabcut_refine(p.pixels, box, [], [])
    ys, xs = np.nonzero(p.lesion_mask)
    clicked = grabcut_refine(p.pixels, box, [[xs.mean(), ys.mean()]], [1], previous=box_only.mask)
    before, after = mask_iou(box_only.mask, p.lesion_mask), mask_iou(clicked.mask, p.lesion_mask)
    assert before < 0.2 and after > 0.8, (before, after)
    again = grabcut_refine(p.pixels, box, [[xs.mean(), ys.mean()]], [1], previous=box_only.mask)
    assert np.array_equal(again.mask, clicked.mask), "the same clicks must give the same mask"


@pytest.mark.skipif(not (PAD / "labels.csv").is_file(), reason="../shared/data/pad_ufes_20 is absent")
def test_real_photo_one_positive_click_improves_iou_in_demo_mode():
    """PAD-UFES-20 PAT_778_1471_835 with its lesion mask: box-only GrabCut misses, one click at the lesion's
    deepest point raises the IoU with the annotated mask (measured 0.000 -> 0.205)."""
    with open(PAD / "labels.csv") as f:
        row = next(r for r in csv.DictReader(f) if "PAT_778_1471_835" in r["image"])
    image = load_image(PAD / row["image"])
    truth = np.asarray(Image.open(PAD / row["mask"]).resize((image.width, image.height), Image.NEAREST)) > 127
    ys, xs = np.nonzero(truth)
    bw, bh = xs.max() - xs.min(), ys.max() - ys.min()
    box = (xs.min() - bw / 4, ys.min() - bh / 4, xs.max() + bw / 4, ys.max() + bh / 4)
    box_only = grabcut_refine(image.pixels, box, [], [])
    from scipy import ndimage

    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(truth)), truth.shape)
    clicked = grabcut_refine(image.pixels, box, [[x, y]], [1], previous=box_only.mask)
    assert mask_iou(clicked.mask, truth) > mask_iou(box_only.mask, truth) + 0.1


def test_bad_clicks_are_refused():
    with pytest.raises(ValueError, match="outside"):
        check_points([[50, 5]], [1], (10, 40))
    with pytest.raises(ValueError, match="labels"):
        check_points([[5, 5]], [2], (10, 40))
    with pytest.raises(ValueError, match="2 labels"):
        check_points([[5, 5]], [1, 0], (10, 40))


def _demo_bench(tmp_path):
    p = make_skin_photo(seed=2, size=(256, 320), lesion_colour="dark_brown")
    image = load_image(p.pixels)
    masks = np.stack([np.zeros_like(p.lesion_mask), p.limb_mask])
    concepts = SimpleNamespace(phrases=["lesion", "skin"], scores=np.array([0.5, 0.7], np.float32),
                               boxes=np.array([[0, 0, 320, 256], [0, 0, 320, 256]], np.float32), masks=masks)
    analysis = SimpleNamespace(image=image, concepts=concepts, prompts=("lesion", "arm"))
    analyzer = SimpleNamespace(extractor=None, analyses_of=lambda key: [analysis] if key == image.key else [])
    return Workbench(analyzer, ReviewStore(tmp_path)), image, p


def test_undo_redo_add_delete_paint_and_save_versions(tmp_path):
    bench, image, p = _demo_bench(tmp_path)
    key = image.key
    start = bench.draft("a", key)
    assert start.source == "analysis" and [c.provenance for c in start.concepts] == ["model", "model"]
    added = bench.add("a", key, p.lesion_box, "nodule")
    assert [c.index for c in added.concepts] == [0, 1, 2] and added.concept(2).provenance == "added"
    assert mask_iou(added.concept(2).mask, p.lesion_mask) > 0.5
    painted = np.zeros(start.size, bool)
    painted[10:20, 10:30] = True
    bench.paint("a", key, 1, painted)
    deleted = bench.delete("a", key, 0)
    assert [c.index for c in deleted.concepts] == [1, 2]
    assert [c.index for c in bench.undo("a", key).concepts] == [0, 1, 2]  # the deletion undone
    assert np.array_equal(bench.undo("a", key).concept(1).mask, p.limb_mask)  # the painting undone
    other = bench.draft("b", key)  # another session starts from the analysis: none of a's edits
    assert [c.index for c in other.concepts] == [0, 1] and np.array_equal(other.concept(1).mask, p.limb_mask)
    assert bench.redo("a", key).concept(1).provenance == "painted"
    with pytest.raises(ValueError, match="no concept #7"):
        bench.refine("a", key, 7, 5, 5)
    refined = bench.refine("a", key, 2, *np.argwhere(p.lesion_mask).mean(0)[::-1])
    assert refined.concept(2).provenance == "added" and len(refined.concept(2).points) == 1
    with pytest.raises(ValueError, match="Nothing to redo"):
        bench.redo("a", key)
    first = bench.save("a", key, reviewer="dr a")
    assert [c.provenance for c in first.concepts] == ["model", "painted", "added"]
    assert np.array_equal(bench.store.load_mask(key, 1), painted)
    bench.set_verdict("b", key, 0, "reject")
    second = bench.save("b", key, reviewer="dr b")
    assert second.revision == 2 and [c.index for c in second.concepts] == [0, 1]
    # reopening an earlier version starts a new history from its masks
    reopened = bench.open("c", key, revision=1)
    assert reopened.source == "revision 1" and np.array_equal(reopened.concept(1).mask, painted)
    with pytest.raises(ValueError, match="phrase"):
        bench.add("a", key, (5, 5, 50, 50), "  42 ")
    with pytest.raises(ValueError, match="no area"):
        bench.add("a", key, (400, 300, 500, 400), "lesion")


def test_a_new_edit_after_undo_drops_the_undone_edits(tmp_path):
    bench, image, p = _demo_bench(tmp_path)
    bench.delete("a", image.key, 0)  # edit A
    bench.undo("a", image.key)
    bench.add("a", image.key, p.lesion_box, "nodule")  # edit B replaces A in the history
    before_b = bench.undo("a", image.key)
    assert [c.index for c in before_b.concepts] == [0, 1], "undo after B must go back to the start, not to A"
    with pytest.raises(ValueError, match="Nothing to undo"):
        bench.undo("a", image.key)
