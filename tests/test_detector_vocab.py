"""Grounding DINO's text side with the REAL bert-base-uncased vocabulary (../shared/data, Apache-2.0).

The tiny test vocabulary holds every prompt word whole; the real one splits words into WordPieces ("lesion" ->
"les ##ion"), which is where per-prompt token spans and the phrase assignment can go wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("groundingdino")

from groundingdino.models.GroundingDINO import bertwarper  # noqa: E402
from transformers import BertModel  # noqa: E402

from skinapp.concepts import gdino_compat  # noqa: E402
from skinapp.concepts.detector import build_caption, build_detector, select_detections  # noqa: E402
from skinapp.concepts.text_encoder import write_tiny_text_encoder  # noqa: E402
from skinapp.concepts.types import DEFAULT_PROMPTS  # noqa: E402

VOCAB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bert-base-uncased" / "vocab.txt"
if not VOCAB.is_file():
    pytest.skip(f"the real bert-base-uncased vocabulary is absent ({VOCAB}); CI has it", allow_module_level=True)

#: prompts whose words split into several WordPieces in bert-base-uncased, plus multi-word ones.
MULTI_PIECE = ("lesion", "naevus", "blue-whitish veil", "ulcerated nodule", "hyperpigmentation",
               "seborrheic keratosis")
SPECIAL = ["[CLS]", "[SEP]", ".", "?"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    text_encoder = write_tiny_text_encoder(tmp_path_factory.mktemp("bert_real_vocab"), vocab_file=VOCAB)
    torch.manual_seed(0)
    return build_detector("tiny", text_encoder=text_encoder, input_size=256)


def test_real_vocabulary_splits_lesion_into_word_pieces(detector):
    assert len(detector.tokenizer) == 30522
    assert detector.tokenizer.tokenize("lesion") == ["les", "##ion"]
    assert detector.tokenizer.tokenize("naevus") == ["na", "##ev", "##us"]


@pytest.mark.parametrize("prompts", [DEFAULT_PROMPTS, MULTI_PIECE, ("lesion", "forearm", "arm", "leg")],
                         ids=["defaults", "multi_piece", "overlapping_words"])
def test_each_prompt_maps_to_exactly_its_own_word_pieces(detector, prompts):
    caption, phrases, spans = build_caption(list(prompts))
    phrase_map = detector.phrase_map(caption, spans)
    tokens = detector.tokenizer(caption)["input_ids"]
    for phrase, row in zip(phrases, phrase_map):
        ids = [tokens[i] for i in torch.nonzero(row).flatten().tolist()]
        assert detector.tokenizer.decode(ids) == phrase.replace("-", " - "), phrase
        torch.testing.assert_close(row[row > 0], torch.full((len(ids),), 1.0 / len(ids)))
    assert not (phrase_map.sum(0) > phrase_map.max(0).values + 1e-6).any(), "a token belongs to two prompts"


@pytest.mark.parametrize("target", ["lesion", "naevus", "blue-whitish veil"])
def test_a_box_firing_on_a_prompts_pieces_is_assigned_that_prompt(detector, target):
    caption, phrases, spans = build_caption(["arm", "leg", "lesion", "naevus", "blue-whitish veil"])
    phrase_map = detector.phrase_map(caption, spans)
    probs = torch.full((3, phrase_map.shape[1]), 0.05)
    probs[0, phrase_map[phrases.index(target)] > 0] = 0.9  # query 0 fires on every piece of the target
    probs[1, phrase_map[phrases.index("arm")] > 0] = 0.6   # query 1 on "arm" only
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], dtype=torch.float32)
    keep, phrase_ids, _ = select_detections(probs, boxes, phrase_map, 0.3, 0.25)
    assert keep.tolist() == [0, 1]
    assert [phrases[i] for i in phrase_ids.tolist()] == [target, "arm"]


def test_adapted_warper_equals_plain_bert_per_phrase(detector):
    """The adapted BertModelWarper with GroundingDINO's sub-sentence mask and per-phrase position ids equals a
    plain BERT forward on each "phrase ." block alone (positions from 0), for the real vocabulary."""
    gdino_compat.apply()
    bert: BertModel = detector.model.bert
    plain = BertModel(bert.config).eval()
    plain.embeddings, plain.encoder, plain.pooler = bert.embeddings, bert.encoder, bert.pooler
    caption, phrases, _ = build_caption([*DEFAULT_PROMPTS, *MULTI_PIECE])
    batch = detector.tokenizer([caption], return_tensors="pt")
    special = detector.tokenizer.convert_tokens_to_ids(SPECIAL)
    mask, position_ids, _ = bertwarper.generate_masks_with_special_tokens_and_transfer_map(
        batch, special, detector.tokenizer)
    with torch.inference_mode():
        ours = bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=mask,
                    position_ids=position_ids)["last_hidden_state"][0]
        ids = batch["input_ids"][0]
        ends = [i for i, t in enumerate(ids.tolist()) if t in special]
        for start, end in zip([0, *[e + 1 for e in ends[:-1]]], ends):
            block = ids[start:end + 1][None]
            alone = plain(input_ids=block).last_hidden_state[0]
            torch.testing.assert_close(ours[start:end + 1], alone, atol=1e-5, rtol=1e-4)
    assert len(ends) == len(phrases) + 2  # [CLS], one "." per prompt, [SEP]


def test_detect_with_the_real_vocabulary(detector, skin_photo):
    before = detector.n_forward
    dets = detector.detect(skin_photo.pixels, ["lesion", "forearm", "leg"], box_threshold=0.0, text_threshold=0.0)
    assert detector.n_forward == before + 1
    assert len(dets) > 0 and set(dets.phrases) <= {"lesion", "forearm", "leg"}
