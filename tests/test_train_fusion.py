"""The training command end to end (tiny profile, CPU), its outputs, bad-input handling and the cache."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from skinapp.concepts.fallback import ColourConceptExtractor
from skinapp.fusion import build_global_encoder, load_fusion_checkpoint, predict
from skinapp.image import load_image
from skinapp.synthetic import make_skin_photo
from train.data.manifest import ImageRecord, SkipLog
from train.feature_cache import FeatureCache
from train.fusion import main

CLASSES = ["red", "blue_grey", "pale"]


def _planted_manifest(root, n=24):
    rows = ["image_path,case_id,label"]
    for i in range(n):
        photo = make_skin_photo(2000 + i, size=(128, 160), lesion_colour=CLASSES[i % 3])
        Image.fromarray(photo.pixels).save(root / f"p{i}.png")
        rows.append(f"p{i}.png,case{i},{photo.label}")
    (root / "broken.png").write_bytes(b"not a png")
    rows += ["missing.png,case90,red",        # missing file
             "p0.png,case91,dark_brown",      # label outside --classes
             "broken.png,case92,pale",        # unreadable image: its case has no other image
             "broken.png,case1,blue_grey"]    # unreadable image of a case that has a readable one
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def test_training_command_end_to_end(tmp_path, caplog):
    csv_path = _planted_manifest(tmp_path)
    out = tmp_path / "run"
    caplog.set_level(logging.INFO)
    rows = main(["--data", f"manifest:{csv_path}", "--variant", "cross_attention,global,resnet50",
                 "--train-ratio", "0.5", "--seeds", "0,1", "--profile", "tiny", "--concepts", "fallback",
                 "--prompts", "lesion,skin", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
                 "--classes", ",".join(CLASSES), "--out", str(out), "--device", "cpu", "--protocol", "fast"])
    assert len(rows) == 6 and all(1 <= r["best_epoch"] <= 3 for r in rows)
    with (out / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(t["train_ratio"], t["variant"], t["seeds"]) for t in table] == [
        ("0.5", "cross_attention", "2"), ("0.5", "global", "2"), ("0.5", "resnet50", "2")]
    assert "± " in (out / "metrics.md").read_text()
    for variant in ("cross_attention", "global"):
        for seed in (0, 1):
            run = out / f"{variant}_r0.5_s{seed}"
            for name in ("fusion.safetensors", "fusion.json", "confusion.png", "curves.png"):
                assert (run / name).is_file(), run / name
    assert (out / "resnet50_r0.5_s0" / "resnet50.safetensors").is_file()
    # bad input: named, counted, the rest used
    log_text = caplog.text
    assert "data.csv row 26: image not found: missing.png" in log_text
    assert "data.csv row 27: label 'dark_brown'" in log_text
    assert "case case92: none of its images could be read" in log_text
    assert "data.csv row 28: broken.png: This file is not an image" in log_text
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped:")][-1]
    for reason in ("1 missing images", "1 labels outside the class list", "2 unreadable images",
                   "1 cases with all images unreadable"):
        assert reason in summary
    assert rows[0]["n_train"] + rows[0]["n_val"] + rows[0]["n_test"] == 24

    # the trained checkpoint round-trips into predict()
    model, meta = load_fusion_checkpoint(out / "cross_attention_r0.5_s0" / "fusion.safetensors")
    assert meta["class_names"] == CLASSES and meta["variant"] == "cross_attention"
    for key in ("data_hash", "metrics", "preprocessing", "n_concepts", "top_k", "config", "global_encoder"):
        assert key in meta
    encoder = build_global_encoder("tiny")
    image = load_image(tmp_path / "p3.png")
    concepts = ColourConceptExtractor().extract(image, ["lesion", "skin"])
    tokens = encoder.tokens(encoder.preprocess(image))[0]
    pred = predict(model, tokens, concepts, meta["class_names"], weights=(encoder.weights,))
    assert pred.predicted in CLASSES and pred.cam.shape == (len(concepts), 3)
    assert 0 <= pred.top_concept < len(concepts)
    assert not pred.trained          # fusion trained, but the ViT and the concepts are not: never a diagnosis
    assert any(w.name == "fusion" and w.trained for w in pred.weights)


class CountingExtractor:
    """The real colour extractor, counting calls; raises after ``stop_after`` calls (an interrupted run)."""

    def __init__(self, stop_after=None):
        self.inner, self.calls, self.stop_after = ColourConceptExtractor(), 0, stop_after
        self.weights = self.inner.weights

    def extract(self, image, prompts):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.extract(image, prompts)


def test_feature_cache_resumes_and_keys_by_content(tmp_path):
    records = []
    for i in range(4):
        Image.fromarray(make_skin_photo(i, size=(96, 128)).pixels).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(tmp_path / f"{i}.png", str(i), "x"))
    encoder = build_global_encoder("tiny")
    interrupted = CountingExtractor(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path / "cache", interrupted, encoder, ["lesion"]).build(records, SkipLog())
    resumed = CountingExtractor()
    items = FeatureCache(tmp_path / "cache", resumed, encoder, ["lesion"]).build(records, SkipLog())
    assert resumed.calls == 2 and all(it is not None for it in items)
    again = CountingExtractor()
    cached = FeatureCache(tmp_path / "cache", again, encoder, ["lesion"]).build(records, SkipLog())
    assert again.calls == 0
    for a, b in zip(items, cached):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features) and a.phrases == b.phrases
    # cached tokens are the encoder's tokens; other prompts are a different key
    direct = encoder.tokens(encoder.preprocess(load_image(records[0].path)))[0]
    assert np.allclose(items[0].tokens.float().numpy(), direct.numpy(), atol=1e-2)
    other = CountingExtractor()
    FeatureCache(tmp_path / "cache", other, encoder, ["lesion", "skin"]).build(records[:1], SkipLog())
    assert other.calls == 1


def test_torchrun_two_processes_use_ddp(tmp_path):
    """The same command under torchrun (2 CPU processes, gloo) trains with DDP and writes one set of outputs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    csv_path = _planted_manifest(tmp_path, n=12)
    out = tmp_path / "ddp"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "train.fusion",
           "--data", f"manifest:{csv_path}", "--variant", "cross_attention", "--seeds", "0", "--profile", "tiny",
           "--concepts", "fallback", "--prompts", "lesion,skin", "--epochs", "2", "--batch-size", "4",
           "--classes", ",".join(CLASSES), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2, backend gloo" in proc.stderr and "rank 1 of 2, backend gloo" in proc.stderr
    assert (out / "cross_attention_r0.5_s0" / "fusion.safetensors").is_file()
    with (out / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1


def test_feature_cache_with_the_tiny_grounded_extractor(tmp_path):
    """The cache takes the real Grounding DINO + SAM extractor (tiny random profile) as well."""
    from train.fusion import make_extractor

    Image.fromarray(make_skin_photo(7, size=(96, 128)).pixels).save(tmp_path / "a.png")
    extractor = make_extractor("grounded", "tiny", torch.device("cpu"))
    cache = FeatureCache(tmp_path / "cache", extractor, build_global_encoder("tiny"), ["lesion", "leg"])
    (item,) = cache.build([ImageRecord(tmp_path / "a.png", "a", "x")], SkipLog())
    assert item.features.shape == (len(item.phrases), 256) and item.tokens.shape == (196, 64)
    assert set(item.phrases) <= {"lesion", "leg"}
    assert FeatureCache.read(next((tmp_path / "cache").rglob("*.safetensors"))).phrases == item.phrases
