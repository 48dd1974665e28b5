"""The quick benchmark runs end to end and proves the pass counts and the agreement of ours vs naive."""

from __future__ import annotations

import json

import pytest

from skinapp.bench import run_benchmark, write_results
from skinapp.bench.run import PROMPTS


@pytest.fixture(scope="module")
def quick_results():
    return run_benchmark("cpu", quick=True, threads=2)


def test_upload_pass_counts_and_agreement(quick_results):
    up = quick_results["upload"]
    ours, naive = up["ours"]["calls"], up["naive"]["calls"]
    # Ours: each model exactly once per photo.
    for stage in ("grounding_dino", "sam_embedding", "sam_decode", "vit", "fusion", "clip_image_pass"):
        assert ours[stage] == 1, stage
    # Naive: a detector call per prompt, a decode call per box, a second encoder pass for features.
    assert naive["grounding_dino"] == len(PROMPTS)
    assert naive["sam_decode"] == up["n_concepts"] > 1
    assert naive["concept_features"] == 2
    agree = up["agreement"]
    assert agree["min_mask_iou"] > 0.999  # batched vs per-box matmuls differ in the last bits at the threshold
    assert agree["max_feature_abs_diff"] < 1e-4
    assert agree["probs_max_abs_diff"] < 1e-5
    assert up["unavoidable_sum_s"] > 0 and up["overhead_ratio"] >= 1.0


def test_explain_fast_matches_naive(quick_results):
    rows = quick_results["explain"]["rows"]
    assert [r["phrases"] for r in rows] == [1, 5]
    for row in rows:
        assert row["min_pearson"] > 0.999
        assert row["fast_s"] > 0 and row["naive_s"] > 0


def test_scaling_and_report(quick_results, tmp_path):
    sc = quick_results["scaling"]
    assert [s["long_side"] for s in sc["image_sizes"]] == [256, 512]
    assert [c["n"] for c in sc["concept_counts"]] == [5, 15]
    json_path, md_path = write_results(quick_results, tmp_path)
    assert json.loads(json_path.read_text())["settings"]["profile"] == "tiny"
    md = md_path.read_text()
    assert "| **end to end** |" in md and "min Pearson" in md and "Peak process RSS" in md


def test_precision_lever_is_measured_with_its_agreement(quick_results):
    p = quick_results["precision"]
    assert p["same_boxes"], "the detector must be untouched by the SAM encoder's precision"
    assert p["fp32"]["stages_s"]["sam_embedding"] > 0 and p["bf16_sam_encoder"]["stages_s"]["sam_embedding"] > 0
    agree = p["agreement"]
    assert agree["min_mask_iou"] >= 0.9 and agree["min_feature_cosine"] >= 0.99  # tiny random SAM, 256 px
    assert agree["probs_max_abs_diff"] < 0.05
