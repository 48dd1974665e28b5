"""Training metrics against values computed by hand, the seed summary, and best-epoch selection.

The confusion matrix used throughout (rows true, columns predicted), from
y_true = [0,0,0,0,1,1,2,2,2,2], y_pred = [0,0,1,2,1,1,2,2,0,0]:

    [[2, 1, 1],
     [0, 2, 0],
     [2, 0, 2]]

precision per class = tp / predicted = [2/4, 2/3, 2/3]  -> macro P = 11/18
recall per class    = tp / support   = [2/4, 2/2, 2/4]  -> macro R = 2/3
F1 per class = [1/2, 4/5, 4/7]                          -> mean of per-class F1 = 131/210
harmonic mean of macro P and macro R = 2 (11/18)(2/3) / (11/18 + 2/3) = 44/69
accuracy = 6/10; specificity per class = TN / (TN + FP) = [4/6, 7/8, 5/6] -> 57/72
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

import train.fusion as train_fusion
from train.metrics import classification_metrics, confusion_matrix, macro_specificity, summarise, write_table
from train.splits import Split

Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 2, 2, 0, 0]


def test_confusion_matrix_rows_are_truth_columns_predictions():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 1], [0, 2, 0], [2, 0, 2]])
    assert cm.dtype == np.int64  # counts: the confusion plot prints "2", not "2.0"


def test_macro_precision_recall_f1_accuracy_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, 3)
    assert m["precision"] == pytest.approx(11 / 18, abs=1e-12)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["accuracy"] == pytest.approx(6 / 10, abs=1e-12)
    # "f1" is the mean of the per-class F1 scores (sklearn's and the paper's macro F1) ...
    assert m["f1"] == pytest.approx(131 / 210, abs=1e-12)
    # ... not the other common definition, the harmonic mean of macro P and macro R (44/69 = 0.638 here)
    harmonic = 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"])
    assert harmonic == pytest.approx(44 / 69, abs=1e-12)
    assert abs(m["f1"] - harmonic) > 0.01


def test_macro_metrics_agree_with_scikit_learn():
    p, r, f, _ = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=[0, 1, 2], average="macro", zero_division=0)
    m = classification_metrics(Y_TRUE, Y_PRED, 3)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f), abs=1e-12)


def test_a_class_never_predicted_has_precision_zero_not_nan():
    m = classification_metrics([0, 1], [0, 0], 2)  # class 1: in the truth, never predicted
    assert m == pytest.approx({"precision": 0.25, "recall": 0.5, "f1": 1 / 3, "f1_macro_per_class": 1 / 3,
                               "f1_paper": 1 / 3, "accuracy": 0.5}, abs=1e-12)


def test_classes_absent_from_truth_and_prediction_are_not_averaged():
    assert classification_metrics(Y_TRUE, Y_PRED, 5) == classification_metrics(Y_TRUE, Y_PRED, 3)
    # a class that is only predicted counts: precision 0 and recall 0 enter the averages
    with_false_alarm = classification_metrics([*Y_TRUE, 0], [*Y_PRED, 3], 4)
    assert with_false_alarm["precision"] == pytest.approx((2 / 4 + 2 / 3 + 2 / 3 + 0) / 4, abs=1e-12)
    assert with_false_alarm["recall"] == pytest.approx((2 / 5 + 1 + 2 / 4 + 0) / 4, abs=1e-12)


def test_macro_specificity_by_hand():
    assert macro_specificity(Y_TRUE, Y_PRED, 3) == pytest.approx(57 / 72, abs=1e-12)
    assert macro_specificity(Y_TRUE, Y_PRED, 5) == pytest.approx(57 / 72, abs=1e-12)  # absent classes ignored
    # every sample is class 0: class 0 has no negatives (specificity 0 by convention), class 1 is a false alarm
    # once out of two negatives (1/2)
    assert macro_specificity([0, 0], [0, 1], 2) == pytest.approx(0.25, abs=1e-12)
    assert macro_specificity([0, 0, 1], [0, 0, 1], 2) == 1.0  # class 0 has exactly one negative, rightly rejected


def test_no_samples_give_zeros_not_nan():
    assert classification_metrics([], [], 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_paper": 0.0,
                                                 "f1_macro_per_class": 0.0, "accuracy": 0.0}
    assert macro_specificity([], [], 3) == 0.0


def _row(ratio, variant, seed, precision):
    return {"train_ratio": ratio, "variant": variant, "seed": seed, "precision": precision, "recall": 0.5,
            "f1_paper": precision / 2, "f1_macro_per_class": precision / 4, "accuracy": 1.0}


def test_summary_is_mean_and_population_std_over_seeds(tmp_path):
    # run order: "global" before "cross_attention" (not alphabetical), ratio 0.5 before 0.1
    rows = [_row(0.5, "global", s, p) for s, p in enumerate((0.2, 0.4))]
    rows += [_row(0.5, "cross_attention", s, p) for s, p in enumerate((0.5, 0.7, 0.9))]
    rows += [_row(0.1, "cross_attention", 0, 0.3)]
    summary = summarise(rows)

    # sorted by train ratio; within a ratio, variants keep the order they were run in
    assert [(r["train_ratio"], r["variant"], r["seeds"]) for r in summary] == [
        (0.1, "cross_attention", 1), (0.5, "global", 2), (0.5, "cross_attention", 3)]
    ca = summary[2]
    assert ca["precision_mean"] == pytest.approx(0.7, abs=1e-12)
    assert ca["precision_std"] == pytest.approx(np.sqrt(0.08 / 3), abs=1e-12)  # population std, not 0.2 (sample)
    assert ca["f1_paper_mean"] == pytest.approx(0.35, abs=1e-12) and ca["recall_std"] == 0.0
    assert ca["f1_macro_per_class_mean"] == pytest.approx(0.175, abs=1e-12)
    assert summary[1]["precision_mean"] == pytest.approx(0.3, abs=1e-12)
    assert summary[1]["precision_std"] == pytest.approx(0.1, abs=1e-12)
    assert summary[0]["precision_std"] == 0.0

    write_table(summary, tmp_path / "m.csv", tmp_path / "m.md")
    md = (tmp_path / "m.md").read_text()
    assert md.endswith(" |\n") and md.count("\n") == 5
    lines = md.splitlines()
    assert lines[:2] == ["| train/total | variant | seeds | precision | recall | F1 (paper: 2PR/(P+R)) "
                         "| F1 (mean per class) | accuracy |", "|---|---|---|---|---|---|---|---|"]
    assert lines[4] == ("| 0.5 | cross_attention | 3 | 0.700 ± 0.163 | 0.500 ± 0.000 | 0.350 ± 0.082 | 0.175 ± 0.041 "
                        "| 1.000 ± 0.000 |")
    with (tmp_path / "m.csv").open() as f:
        assert f.readline().startswith("train_ratio,variant,seeds,precision_mean,precision_std,")  # no index column
        f.seek(0)
        table = list(csv.DictReader(f))
    assert [(t["train_ratio"], t["variant"], t["seeds"]) for t in table] == [
        ("0.1", "cross_attention", "1"), ("0.5", "global", "2"), ("0.5", "cross_attention", "3")]
    assert float(table[2]["precision_std"]) == pytest.approx(np.sqrt(0.08 / 3), abs=1e-12)


# --------------------------------------------------------------------------------------- best-epoch selection

def _scripted_run(monkeypatch, val_scores: list[tuple[list[int], float]], epochs: int):
    """train_run on a real model and optimizer, with validation predictions and losses scripted per epoch.

    Returns the run, the model's weights at each validation, and the weights the test set was predicted with.
    """
    torch.manual_seed(0)
    x = torch.randn(12, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    split = Split(train=np.arange(0, 6), val=np.arange(6, 9), test=np.arange(9, 12), cases={})
    model = torch.nn.Linear(4, 3)
    snapshots: list[dict[str, torch.Tensor]] = []
    calls = {"n": 0}

    def scripted_evaluate(m, forward, batches, indices, labels_, batch_size, device):
        state = copy.deepcopy({k: v.detach().clone() for k, v in m.state_dict().items()})
        if np.array_equal(indices, split.test):
            snapshots.append(state)
            return 0.0, np.array([0, 1, 2])
        pred, loss = val_scores[calls["n"]]
        calls["n"] += 1
        snapshots.append(state)
        return loss, np.asarray(pred)

    monkeypatch.setattr(train_fusion, "evaluate", scripted_evaluate)
    result = train_fusion.train_run(
        model, lambda m, inputs: m(inputs[0]), lambda idx, gen: (x[idx], labels[idx]), labels, split, 3,
        epochs, batch_size=3, lr=0.5, seed=0, device=torch.device("cpu"))
    return result, snapshots[:-1], snapshots[-1]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_run_whose_validation_f1_peaks_early_keeps_the_best_epoch(monkeypatch):
    # validation labels are [0, 1, 2]: F1 1/3-ish, then perfect at epoch 2, then worse to the end
    script = [([0, 0, 0], 1.0), ([0, 1, 2], 0.9), ([0, 0, 2], 0.5), ([2, 2, 2], 0.4), ([1, 1, 1], 0.3)]
    result, per_epoch, tested_with = _scripted_run(monkeypatch, script, epochs=5)

    assert result.history["val_f1"] == pytest.approx([1 / 6, 1.0, 5 / 9, 1 / 6, 1 / 6], abs=1e-9)
    assert result.best_epoch == 2
    assert not _same(per_epoch[1], per_epoch[-1])  # the weights did move after the best epoch
    assert _same(result.state, per_epoch[1])        # the kept state is epoch 2's ...
    assert _same(tested_with, per_epoch[1])         # ... and the test set is predicted with it


def test_equal_validation_f1_is_broken_by_the_lower_validation_loss(monkeypatch):
    script = [([0, 1, 2], 0.8), ([0, 0, 0], 0.1), ([0, 1, 2], 0.6), ([0, 1, 2], 0.7)]
    result, per_epoch, tested_with = _scripted_run(monkeypatch, script, epochs=4)

    assert result.best_epoch == 3
    assert _same(result.state, per_epoch[2]) and _same(tested_with, per_epoch[2])
