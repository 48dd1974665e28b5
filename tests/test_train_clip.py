"""CLIP fine-tuning (train.clip): text builder, augmentation, case split, metrics, training, checkpoint I/O.

The training test fine-tunes the tiny open_clip profile on synthetic Derm7pt + PH2 copies whose lesion
colour encodes the class, with a learning rate suited to a small random model (1e-3, not the paper's 1e-5).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_derm import make_derm7pt, make_ph2

from skinapp.clip import CLIP_CONFIGS, load_clip_checkpoint
from train.clip import CHECKPOINT_NAME, augment_image, main, read_records, split_records
from train.data.text import LABEL_SCHEMES, LesionRecord, build_text, class_names, criteria_phrases, map_diagnosis
from train.metrics import macro_specificity

PAPER_EXAMPLE = ("atypical nevus. asymmetry in one axis, atypical pigment network, irregular dots and globules, "
                 "light brown and dark brown colour")
EXAMPLE_CRITERIA = {"asymmetry": "one axis", "pigment_network": "atypical", "dots_and_globules": "irregular",
                    "streaks": "absent", "blue_whitish_veil": "absent", "colours": ("light brown", "dark brown")}


def test_text_from_criteria_matches_the_documented_example():
    assert build_text("atypical nevus", EXAMPLE_CRITERIA) == PAPER_EXAMPLE
    assert build_text("melanoma", {"streaks": "absent", "colours": ()}) == "melanoma."
    assert build_text("melanoma", {"colours": ("black",), "vascular_structures": "dotted"}) == \
        "melanoma. black colour, dotted vessels"
    with pytest.raises(ValueError, match="unknown criterion"):
        build_text("melanoma", {"texture": "rough"})


def test_text_augmentation_reorders_the_criteria_phrases():
    canonical = criteria_phrases(EXAMPLE_CRITERIA)
    orders = set()
    for seed in range(30):
        label, _, rest = build_text("atypical nevus", EXAMPLE_CRITERIA, random.Random(seed)).partition(". ")
        phrases = rest.split(", ")
        assert label == "atypical nevus" and sorted(phrases) == sorted(canonical)
        orders.add(tuple(phrases))
    assert len(orders) > 5


def test_label_schemes():
    assert len(class_names("merged")) == 17  # the MedGrad paper's class count
    assert len(class_names("subtypes")) == 22
    assert all(map_diagnosis(d) == "melanoma" for d in LABEL_SCHEMES["merged"] if d.startswith("melanoma"))
    assert map_diagnosis("melanoma (in situ)", "subtypes") == "melanoma (in situ)"
    with pytest.raises(ValueError, match="unknown diagnosis"):
        map_diagnosis("psoriasis")
    with pytest.raises(ValueError, match="label scheme"):
        class_names("flat")


def test_image_augmentation_is_a_flip_rotation_then_small_rotation():
    pixels = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    dihedral = [np.rot90(p, k) for p in (pixels, pixels[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(40):
        out = np.asarray(augment_image(Image.fromarray(pixels), random.Random(seed), degrees=0))
        match = [i for i, d in enumerate(dihedral) if np.array_equal(out, d)]
        assert match, "with degrees=0 the output is one of the 8 flips/rotations"
        seen.add(match[0])
    assert len(seen) >= 6
    rotated = np.asarray(augment_image(Image.fromarray(pixels), random.Random(1), degrees=15))
    assert not any(np.array_equal(rotated, d) for d in dihedral)


def _record(case: str, label: str, image: int) -> LesionRecord:
    return LesionRecord(image_path=Path(f"{case}_{image}.jpg"), case_id=case, source="test", diagnosis=label,
                        label=label, criteria={}, text=f"{label}.")


def test_split_is_by_case_stratified_and_seeded():
    records = [_record(f"c{c}", f"class{c % 3}", img) for c in range(40) for img in range(1 + c % 2)]
    names = ["class0", "class1", "class2"]
    train, test = split_records(records, names, 0.75, seed=0)
    train_cases, test_cases = {r.case_id for r in train}, {r.case_id for r in test}
    assert not train_cases & test_cases and len(train) + len(test) == len(records)
    assert {r.case_id for r in records} == train_cases | test_cases
    for name in names:  # 14, 13, 13 cases per class: about 75 % of each to training
        n_cases = len({r.case_id for r in records if r.label == name})
        n_train = len({r.case_id for r in train if r.label == name})
        assert abs(n_train - 0.75 * n_cases) <= 1, (name, n_train, n_cases)
    assert {r.label for r in test} == set(names)
    assert split_records(records, names, 0.75, seed=0) == (train, test)
    assert split_records(records, names, 0.75, seed=1) != (train, test)


def test_macro_specificity_by_hand():
    # class 0: TN 2 FP 0; class 1: TN 1 FP 1; class 2 never seen nor predicted: not averaged.
    assert macro_specificity([0, 0, 1, 1], [0, 1, 1, 1], n_classes=3) == pytest.approx((1.0 + 0.5) / 2)
    # class 2 predicted once though absent: TN 3 FP 1 -> 0.75, and it is averaged; classes 0 and 1 have no FP.
    assert macro_specificity([0, 0, 1, 1], [0, 2, 1, 1], n_classes=3) == pytest.approx((1.0 + 1.0 + 0.75) / 3)


def test_no_data_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one data set"):
        read_records(None, None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    derm = make_derm7pt(root / "derm7pt", per_class=8, bad_rows=True)
    ph2 = make_ph2(root / "ph2", per_class=8, bad_rows=True)
    out = root / "out"
    result = main(["--derm7pt", str(derm.root), "--ph2", str(ph2.root), "--out", str(out), "--profile", "tiny",
                   "--epochs", "10", "--batch-size", "8", "--lr", "1e-3", "--seed", "0", "--device", "cpu",
                   "--workers", "0", "--match-batch-size", "8"])
    return result, out


def test_finetuning_lowers_the_loss_and_beats_chance(run):
    result, _ = run
    n_classes = 5  # melanoma, vascular lesion, blue nevus, common nevus, atypical nevus
    assert result.after["loss"] < result.before["loss"]
    train_loss = result.history["loss/train"][1:]
    assert train_loss[-1] < train_loss[0]
    assert result.after["zero_shot_accuracy"] > 1 / n_classes
    assert result.after["zero_shot_accuracy"] > result.before["zero_shot_accuracy"]
    assert result.after["in_batch_accuracy"] > result.before["in_batch_accuracy"]
    assert result.after["clip_score"] > result.before["clip_score"]
    assert len(result.epoch_seconds) == 10


def test_outputs_and_checkpoint_meta(run):
    result, out = run
    for name in ("metrics.json", "report.md", "curves.png", "split.json", CHECKPOINT_NAME):
        assert (out / name).is_file(), name
    meta = json.loads((out / CHECKPOINT_NAME).with_suffix(".json").read_text())
    assert meta["class_names"] == ["atypical nevus", "blue nevus", "common nevus", "melanoma", "vascular lesion"]
    assert meta["prompts"][0] == "a dermoscopic image of atypical nevus"
    assert meta["split_seed"] == 0 and meta["epochs"] == 10 and len(meta["data_hash"]) == 64
    assert meta["metrics_after"]["in_batch_accuracy"] == result.after["in_batch_accuracy"]
    assert meta["text"] == "paper" and meta["view"] == "whole" and meta["protocol"] == "paper"
    assert list(meta["datasets"]) == ["Derm7pt", "PH2"] and meta["label"] == "fine-tuned (Derm7pt + PH2)"
    assert sum(meta["datasets"].values()) == meta["n_train"] + meta["n_test"]
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train_cases"]) & set(split["test_cases"])
    report = (out / "report.md").read_text()
    counts = meta["datasets"]
    assert f"Data: Derm7pt ({counts['Derm7pt']} images) + PH2 ({counts['PH2']} images)." in report
    for row in ("in-batch image->text matching accuracy (the paper's 'accuracy')", "zero-shot accuracy",
                "zero-shot F1 (2PR/(P+R))", "zero-shot F1 (mean per class)", "in-batch macro specificity",
                "CLIP score (mean cosine of matched pairs)", "zero-shot prompt template: `a dermoscopic image of {}`",
                "batches of 8"):
        assert row in report, row
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert metrics["history"]["loss/train"][0] is None  # no training loss before training
    assert set(metrics["before"]) >= {
        "in_batch_accuracy", "in_batch_t2i_accuracy", "in_batch_precision", "in_batch_recall", "in_batch_f1_paper",
        "in_batch_specificity", "zero_shot_accuracy", "zero_shot_precision", "zero_shot_recall",
        "zero_shot_f1_paper", "zero_shot_f1_macro_per_class", "zero_shot_sensitivity", "zero_shot_specificity",
        "clip_score", "clipscore_torchmetrics", "loss", "zero_shot_confusion_matrix"}
    n_test = len(split["test_cases"])  # one dermoscopic image per case in both data sets
    assert np.sum(metrics["after"]["zero_shot_confusion_matrix"]) == metrics["after"]["n"] == n_test


def test_checkpoint_round_trip_gives_identical_embeddings(run):
    result, out = run
    loaded = load_clip_checkpoint(out / CHECKPOINT_NAME)  # as the app loads it: "full" unless the sidecar says
    stated = CLIP_CONFIGS["tiny"]  # what the sidecar states; the loader completes it from the weights
    assert (loaded.config["embed_dim"], loaded.config["quick_gelu"]) == (stated["embed_dim"], stated["quick_gelu"])
    for section in ("vision_cfg", "text_cfg"):
        assert stated[section].items() <= loaded.config[section].items(), section
    # Fine-tuned from random init (no base checkpoint): loadable, but never reported as trained weights.
    assert not loaded.weights.trained and loaded.label.startswith("fine-tuned")
    images = torch.randn(2, 3, 224, 224)
    tokens = loaded.tokenizer(["melanoma. blue-whitish veil", "a dermoscopic image of blue nevus"])
    trained = result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), trained.encode_image(images))
        assert torch.equal(loaded.model.encode_text(tokens), trained.encode_text(tokens))
