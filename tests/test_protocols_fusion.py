"""The fusion paper's protocol (docs/protocols.md): paper F1, honest split ratios, epoch selection, padded
concepts in top-k pooling, pretrained baselines, end-to-end training; tiny data, CPU."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import skinapp.checkpoints as ckpt
from skinapp.fusion import (
    build_baseline,
    build_fusion,
    fusion_config,
    load_fusion_checkpoint,
    load_fusion_encoder,
    topk_pool,
)
from skinapp.synthetic import make_skin_photo
from train import fusion as train_fusion
from train.metrics import metrics_from_confusion, summarise, write_table
from train.splits import Split, split_by_case

# Rows true, columns predicted (see tests/test_metrics_hand.py for the same matrix by hand):
# macro P = 11/18, macro R = 2/3, paper F1 = 2PR/(P+R) = 44/69, mean of per-class F1 = 131/210.
CM = np.array([[2, 1, 1], [0, 2, 0], [2, 0, 2]])


# ----------------------------------------------------------------------------------------------- item 3: F1

def test_paper_f1_is_the_harmonic_mean_of_macro_precision_and_recall():
    m = metrics_from_confusion(CM)
    assert m["precision"] == pytest.approx(11 / 18, abs=1e-12)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["f1_paper"] == pytest.approx(44 / 69, abs=1e-12)
    assert m["f1_macro_per_class"] == pytest.approx(131 / 210, abs=1e-12)
    assert m["accuracy"] == pytest.approx(0.6, abs=1e-12)


def test_the_two_f1_definitions_agree_only_when_each_class_has_p_equal_r():
    # P = (0.8 + 0.5) / 2 = 0.65 and R = (0.8 + 0.5) / 2 = 0.65: both definitions give 0.650;
    # a skewed matrix separates them (the paper's tables follow 2PR/(P+R), see docs/protocols.md).
    m = metrics_from_confusion(np.array([[8, 2], [2, 2]]))
    assert (m["precision"], m["recall"]) == pytest.approx((0.65, 0.65))
    assert m["f1_paper"] == pytest.approx(0.65)
    assert m["f1_macro_per_class"] == pytest.approx(0.65)  # equal only when P_c = R_c per class
    skewed = metrics_from_confusion(np.array([[9, 0], [5, 1]]))
    assert skewed["f1_paper"] == pytest.approx(2 * skewed["precision"] * skewed["recall"]
                                               / (skewed["precision"] + skewed["recall"]))
    assert abs(skewed["f1_paper"] - skewed["f1_macro_per_class"]) > 0.05


def test_table_names_both_f1_columns_and_how_each_row_was_made(tmp_path):
    rows = [{"train_ratio": 0.5, "variant": "resnet50", "seed": s, "training_mode": "end_to_end",
             "init": "from scratch", "selection": "last epoch (30)", **metrics_from_confusion(CM)} for s in (0, 1)]
    write_table(summarise(rows), tmp_path / "m.csv", tmp_path / "m.md")
    header, _, line = (tmp_path / "m.md").read_text().splitlines()
    assert header == ("| train/total | variant | training mode | init | selection | seeds | precision | recall | "
                      "F1 (paper: 2PR/(P+R)) | F1 (mean per class) | accuracy |")
    assert line == ("| 0.5 | resnet50 | end_to_end | from scratch | last epoch (30) | 2 | 0.611 ± 0.000 | "
                    "0.667 ± 0.000 | 0.638 ± 0.000 | 0.624 ± 0.000 | 0.600 ± 0.000 |")


# -------------------------------------------------------------------------------------------- item 4: split

def _cases(n_per_label=50, labels=2):
    case_ids = [f"c{label}_{i}" for label in range(labels) for i in range(n_per_label)]
    return case_ids, [int(c[1]) for c in case_ids]


@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_train_ratio_is_the_share_of_cases_that_train(val_fraction):
    case_ids, labels = _cases()
    split = split_by_case(case_ids, labels, 0.1, seed=3, val_fraction=val_fraction)
    assert len(split.cases["train"]) == 10  # 10 % of 100 cases: never 8 %
    assert len(split.cases["val"]) == (18 if val_fraction else 0)  # 20 % of the 90 held-out cases
    assert len(split.cases["test"]) == (72 if val_fraction else 90)
    assert not split.cases["train"] & (split.cases["val"] | split.cases["test"])
    assert not split.cases["val"] & split.cases["test"]
    per_label = [sum(c.startswith(f"c{label}") for c in split.cases["train"]) for label in (0, 1)]
    assert per_label == [5, 5]


def test_split_row_reports_the_true_ratio():
    case_ids, labels = _cases(25, 2)
    split = split_by_case(case_ids, labels, 0.3, seed=0, val_fraction=0.2)
    row = train_fusion.split_summary(split, case_ids, 0.3)
    assert row["train_cases"] == 16 and row["total_cases"] == 50  # round(0.3 * 25) = 8 per label
    assert row["train_ratio_actual"] == pytest.approx(0.32)
    assert row["train_cases"] + row["val_cases"] + row["test_cases"] == 50


def test_selection_last_keeps_the_last_epoch_and_needs_no_validation():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.tensor([0, 1, 2] * 4)
    split = Split(train=np.arange(0, 9), val=np.zeros(0, np.int64), test=np.arange(9, 12), cases={})
    model = torch.nn.Linear(4, 3)
    result = train_fusion.train_run(model, lambda m, inputs: m(inputs[0]), lambda idx, g: (x[idx], y[idx]), y,
                                    split, 3, 4, batch_size=3, lr=0.1, seed=0, device=torch.device("cpu"),
                                    selection="last")
    assert result.best_epoch == 4 and set(result.history) == {"train_loss"}
    assert all(torch.equal(result.state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="needs validation cases"):
        train_fusion.train_run(model, lambda m, inputs: m(inputs[0]), lambda idx, g: (x[idx], y[idx]), y, split, 3,
                               1, 3, 0.1, 0, torch.device("cpu"), selection="val_accuracy")


@pytest.mark.parametrize("selection, kept", [("val_accuracy", 3), ("val_f1_paper", 2)])
def test_selection_by_validation_accuracy(monkeypatch, selection, kept):
    # scripted validation predictions for labels [0, 0, 0, 1]: accuracy 0.25, 0.5, 0.75 (best: epoch 3);
    # paper F1 0.2, 0.667, 0.429 (best: epoch 2)
    y = torch.tensor([0, 0, 0, 1] * 3)
    split = Split(train=np.arange(0, 4), val=np.arange(4, 8), test=np.arange(8, 12), cases={})
    script = iter([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])

    def scripted(model, forward, batches, indices, labels, batch_size, device):
        return 1.0, np.zeros(4, np.int64) if np.array_equal(indices, split.test) else np.array(next(script))

    monkeypatch.setattr(train_fusion, "evaluate", scripted)
    x = torch.randn(12, 4)
    run = train_fusion.train_run(torch.nn.Linear(4, 2), lambda m, inputs: m(inputs[0]),
                                 lambda idx, g: (x[idx], y[idx]), y, split, 2, 3, 4, 0.1, 0, torch.device("cpu"),
                                 selection=selection)
    assert run.history["val_accuracy"] == pytest.approx([0.25, 0.5, 0.75])
    assert run.best_epoch == kept


# ---------------------------------------------------------------------------------- item 5: padded concepts

def test_topk_pool_padded_modes():
    cam = torch.tensor([[[1.0], [2.0], [9.0], [8.0]]])  # [B=1, N=4, C=1]; the last two rows are padded copies
    mask = torch.tensor([[True, True, False, False]])
    real_first, idx = topk_pool(cam, mask, 2, "real_first")
    assert real_first.item() == pytest.approx(1.5) and set(idx.flatten().tolist()) == {0, 1}
    paper, idx = topk_pool(cam, mask, 2, "all")
    assert paper.item() == pytest.approx(8.5) and set(idx.flatten().tolist()) == {2, 3}
    with pytest.raises(ValueError, match="padded"):
        topk_pool(cam, mask, 2, "some")


def test_pool_padded_config_reaches_the_model():
    assert fusion_config("scin")["pool_padded"] == "real_first"
    with pytest.raises(ValueError, match="pool_padded"):
        fusion_config("tiny", pool_padded="never")
    ours = build_fusion("cross_attention", 3, fusion_config("tiny", pool_padded="real_first")).eval()
    paper = build_fusion("cross_attention", 3, fusion_config("tiny", pool_padded="all")).eval()
    paper.load_state_dict(ours.state_dict())
    torch.manual_seed(0)
    tokens, concepts = torch.randn(2, 196, 64), torch.randn(2, 8, 256)
    concepts[:, 3:] *= 20  # padded rows far from the real ones: they win top-k when allowed to compete
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    with torch.no_grad():
        assert not torch.allclose(ours(tokens, concepts, mask).scores, paper(tokens, concepts, mask).scores)
        all_real = torch.ones_like(mask)
        torch.testing.assert_close(ours(tokens, concepts, all_real).scores, paper(tokens, concepts, all_real).scores)


# ------------------------------------------------------------------------------------ item 1: baselines

def test_baseline_loads_imagenet_weights_safely_and_says_so(tmp_path):
    donor = build_baseline("resnet50", 1000, "tiny", seed=7)  # stands in for timm's ImageNet release
    path = tmp_path / "resnet50_imagenet_donor.safetensors"  # not the official name: no manifest pin applies
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = build_baseline("resnet50", 3, "tiny", seed=0, checkpoint=path)
    assert model.init == "pretrained (resnet50_imagenet_donor.safetensors)"
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc.out_features == 3
    assert build_baseline("resnet50", 3, "tiny", seed=0).init == "from scratch"
    vit = build_baseline("vit_b16", 3, "tiny")
    with pytest.raises(ValueError, match="does not match"):
        build_baseline("vit_b16", 3, "tiny", checkpoint=path)
    assert vit.init == "from scratch"


def test_full_profile_without_baseline_weights_is_labelled_from_scratch(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("SKINAPP_OFFLINE", "1")
    for name in ("SKINAPP_RESNET50_A1_IN1K", "SKINAPP_VIT_B16_AUGREG2"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.WARNING)
    chosen = train_fusion.baseline_checkpoints(["vit_b16=/w/vit.safetensors"], "full")
    assert chosen == {"resnet50": None, "vit_b16": "/w/vit.safetensors"}
    assert "resnet50 baseline: no ImageNet weights" in caplog.text and "FROM SCRATCH" in caplog.text
    official = tmp_path / "resnet50.a1_in1k.safetensors"
    official.write_bytes(b"x")  # a damaged copy in the checkpoint folder is refused, never trained from
    with pytest.raises(ckpt.ChecksumMismatchError, match="resnet50_a1_in1k"):
        train_fusion.baseline_checkpoints([], "full")
    # pin the file this test wrote instead: then it is found in the checkpoint folder
    manifest = json.loads((Path(__file__).resolve().parents[1] / "checkpoints" / "manifest.json").read_text())
    for entry in manifest["checkpoints"]:
        if entry["name"] == "resnet50_a1_in1k":
            entry["files"][0].update(size=1, sha256=hashlib.sha256(b"x").hexdigest())
    with ckpt.use_manifest(manifest):
        assert train_fusion.baseline_checkpoints([], "full")["resnet50"] == str(official)
    assert train_fusion.baseline_checkpoints([], "tiny") == {"resnet50": None, "vit_b16": None}
    with pytest.raises(ValueError, match="NAME=PATH"):
        train_fusion.baseline_checkpoints(["resnet=/x"], "full")


def test_protocol_presets_and_overrides():
    args = train_fusion.parse_args(["--data", "folder:/x"])
    assert (args.protocol, args.mode, args.selection, args.val_fraction, args.pool_padded) == (
        "paper", "end_to_end", "last", 0.0, "all")
    args = train_fusion.parse_args(["--data", "folder:/x", "--protocol", "fast", "--selection", "last"])
    assert (args.mode, args.selection, args.val_fraction, args.pool_padded) == ("cached", "last", 0.2, "real_first")


# ------------------------------------------------------------------------- item 2: end-to-end (paper mode)

def test_end_to_end_model_trains_the_vit():
    from skinapp.fusion import build_global_encoder

    encoder = build_global_encoder("tiny")
    model = train_fusion.EndToEndFusion(encoder.vit.train(), build_fusion("cross_attention", 2, "tiny"))
    before = encoder.vit.patch_embed.proj.weight.detach().clone()
    scores = model(torch.randn(2, 3, 224, 224), torch.randn(2, 8, 256), torch.ones(2, 8, dtype=torch.bool)).scores
    torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1])).backward()
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    assert not torch.equal(before, encoder.vit.patch_embed.proj.weight)


def test_paper_protocol_end_to_end_command(tmp_path, caplog):
    rows = ["image_path,case_id,label"]
    classes = ["red", "blue_grey"]
    for i in range(10):
        photo = make_skin_photo(3000 + i, size=(96, 112), lesion_colour=classes[i % 2])
        Image.fromarray(photo.pixels).save(tmp_path / f"p{i}.png")
        rows.append(f"p{i}.png,case{i},{photo.label}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    result = train_fusion.main([
        "--data", f"manifest:{tmp_path / 'data.csv'}", "--variant", "cross_attention,resnet50", "--train-ratio", "0.4",
        "--seeds", "0", "--profile", "tiny", "--concepts", "fallback", "--prompts", "lesion", "--epochs", "2",
        "--batch-size", "4", "--lr", "1e-3", "--classes", ",".join(classes), "--out", str(out), "--device", "cpu"])
    fusion_row, resnet_row = result
    assert fusion_row["training_mode"] == "end_to_end" and fusion_row["selection"] == "last epoch (2)"
    assert fusion_row["init"] == "ViT from scratch" and resnet_row["init"] == "from scratch"
    assert fusion_row["train_cases"] == 4 and fusion_row["val_cases"] == 0 and fusion_row["test_cases"] == 6
    assert fusion_row["best_epoch"] == 2
    run = out / "cross_attention_r0.4_s0"
    assert (run / "global_encoder.safetensors").is_file()
    with (out / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(t["variant"], t["training_mode"], t["init"]) for t in table] == [
        ("cross_attention", "end_to_end", "ViT from scratch"), ("resnet50", "end_to_end", "from scratch")]
    md = (out / "metrics.md").read_text()
    assert "F1 (paper: 2PR/(P+R))" in md and "F1 (mean per class)" in md and "from scratch" in md
    # the head was trained with its own ViT: it records that file's SHA-256 and runs with it, never another ViT
    _, meta = load_fusion_checkpoint(run / "fusion.safetensors")
    assert meta["global_encoder"]["fine_tuned"] and meta["training_mode"] == "end_to_end"
    own = run / "global_encoder.safetensors"
    assert meta["global_encoder"]["file"] == own.name
    assert meta["global_encoder"]["sha256"] == hashlib.sha256(own.read_bytes()).hexdigest()
    encoder = load_fusion_encoder(run / "fusion.safetensors", meta, vit_checkpoint=None)
    saved = ckpt.load_tensors(own)
    assert all(torch.equal(encoder.vit.state_dict()[k], v) for k, v in saved.items())
    assert not encoder.weights.trained and "from a random init" in encoder.weights.source  # fine-tuned from scratch


def test_mixed_precision_only_on_cuda():
    def forward(model, inputs):
        return model(inputs[0])

    assert train_fusion._autocast_forward(forward, torch.device("cpu"), amp=True) is forward
    wrapped = train_fusion._autocast_forward(forward, torch.device("cuda"), amp=True)
    assert wrapped is not forward
    assert train_fusion._autocast_forward(forward, torch.device("cuda"), amp=False) is forward
