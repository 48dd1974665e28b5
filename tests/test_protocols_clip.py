"""The MedGrad paper's protocol (docs/protocols.md): in-batch matching metric, plain-cosine CLIP score, the
paper's training text, and the same image view in fine-tuning and in the app."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from skinapp.clip import build_clip
from skinapp.pipeline import Analyzer
from train.clip import PROTOCOLS, parse_args, split_records, training_view
from train.clip_metrics import clip_scores, in_batch_matching
from train.data.text import LesionRecord, build_paper_text, build_text, paper_phrases, strip_special

# ----------------------------------------------------------------------------------- item 6: in-batch metric


def _planted(n: int, wrong: list[int], dim: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal pairs; image i in ``wrong`` is closest to text (i + 1) mod n instead of its own."""
    basis = torch.eye(dim)[:n]
    images = basis.clone()
    for i in wrong:
        images[i] = 0.3 * basis[i] + basis[(i + 1) % n]
    return images, basis.clone()


def test_in_batch_accuracy_on_a_planted_batch_of_64():
    images, texts = _planted(64, wrong=list(range(0, 64, 8)))  # 8 of 64 images pick a wrong text
    m = in_batch_matching(images, texts, batch_size=64, seed=None)
    assert m["in_batch_accuracy"] == pytest.approx(56 / 64)
    assert m["in_batch_recall"] == pytest.approx(56 / 64)  # one pair per position: recall = accuracy
    # the paper's check: specificity = 1 - (1 - accuracy) / (B - 1) for B = 64 positions
    assert m["in_batch_specificity"] == pytest.approx(1 - (8 / 64) / 63)
    # text->image is another direction: text i's nearest image is still image i (cos 0.29 vs 0), text i+1's too
    assert m["in_batch_t2i_accuracy"] == 1.0
    assert (m["in_batch_size"], m["in_batch_batches"]) == (64, 1)


def test_in_batch_loss_of_uniform_logits_is_ln_64():
    features = torch.ones(64, 8)  # every image equally close to every text: chance level
    m = in_batch_matching(features, features, batch_size=64, logit_scale=100.0)
    assert m["loss"] == pytest.approx(math.log(64), abs=1e-5)  # the paper's 4.1579 before training
    assert m["in_batch_accuracy"] == pytest.approx(1 / 64)  # ties go to index 0


def test_in_batch_batches_are_the_stated_size():
    images, texts = _planted(96, wrong=[])
    m = in_batch_matching(images, texts, batch_size=40, seed=0)
    assert m["in_batch_accuracy"] == 1.0 and m["in_batch_batches"] == 3  # 40 + 40 + 16
    # batch size matters: a mismatch whose wrong text falls in another batch is not an error there
    images, texts = _planted(8, wrong=[3])
    assert in_batch_matching(images, texts, batch_size=8, seed=None)["in_batch_accuracy"] == pytest.approx(7 / 8)
    assert in_batch_matching(images, texts, batch_size=4, seed=None)["in_batch_accuracy"] == 1.0
    with pytest.raises(ValueError, match="matched features"):
        in_batch_matching(images, texts[:4])


def test_clip_score_is_the_plain_cosine():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])  # cosines 0.7071 and -1
    s = clip_scores(images, texts)
    assert s["clip_score"] == pytest.approx((math.sqrt(0.5) - 1) / 2)
    assert s["clipscore_torchmetrics"] == pytest.approx(100 * math.sqrt(0.5) / 2)


# -------------------------------------------------------------------------------------- item 7: the text

PH2_CRITERIA = {"asymmetry": "none", "pigment_network": "typical", "dots_and_globules": "absent",
                "streaks": "absent", "regression_structures": "absent", "blue_whitish_veil": "absent",
                "colours": ("light brown", "dark brown", "blue-grey")}


def test_paper_text_keeps_absent_and_symmetric_criteria_in_the_papers_words():
    text = build_paper_text("common nevus", PH2_CRITERIA)
    assert text == ("common nevus, fully symmetric, typical pigment network, absent dots and globules, absent streaks, "
                    "absent regression structures, absent blue whitish veil, light brown color, dark brown color, "
                    "blue gray color")
    assert "symmetry in 1 axis" in paper_phrases({"asymmetry": "one axis"})
    ours = build_text("common nevus", PH2_CRITERIA)
    assert "absent" not in ours and "symmetric" not in ours  # our variant drops them


def test_paper_text_strips_special_characters_removes_duplicates_and_shuffles_criteria_only():
    assert strip_special("Melanoma (less than 0.76 mm)") == "melanoma less than 0.76 mm"
    assert build_paper_text("melanoma (in situ)", {"colours": ("black", "black")}) == "melanoma in situ, black color"
    rng = random.Random(0)
    shuffled = {build_paper_text("common nevus", PH2_CRITERIA, rng) for _ in range(10)}
    assert len(shuffled) > 1 and all(t.startswith("common nevus, ") for t in shuffled)
    assert {frozenset(t.split(", ")) for t in shuffled} == {frozenset(build_paper_text("common nevus",
                                                                                        PH2_CRITERIA).split(", "))}
    with pytest.raises(ValueError, match="unknown criterion"):
        paper_phrases({"texture": "rough"})


def test_protocol_presets():
    assert parse_args(["--out", "x"]).text == "paper" and PROTOCOLS["paper"]["match_batch_size"] == 64
    config = parse_args(["--out", "x", "--protocol", "ours", "--view", "centre_crop"])
    assert (config.text, config.view, config.match_batch_size) == ("ours", "centre_crop", 64)


def test_split_trains_exactly_the_train_fraction(tmp_path):
    records = [LesionRecord(tmp_path / f"{i}.png", f"case{i}", "ph2", "melanoma", ["a", "b"][i % 2], {}, "")
               for i in range(40)]
    train, test = split_records(records, ["a", "b"], 0.75, seed=1)
    assert (len(train), len(test)) == (30, 10)
    assert not {r.case_id for r in train} & {r.case_id for r in test}


# --------------------------------------------------------------------------------- item 8: the same view

def test_finetuning_sees_exactly_the_view_the_app_explains():
    bundle = build_clip("tiny")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 300, 3), dtype=np.uint8))  # landscape
    trained_on = training_view("whole", bundle)(photo)
    served = Analyzer._explain_preprocess(bundle)(photo)
    assert torch.equal(trained_on, served)
    assert not torch.equal(training_view("centre_crop", bundle)(photo), served)  # the old crop was another view
    with pytest.raises(ValueError, match="view"):
        training_view("square", bundle)
