"""The transformers-5 adapter for groundingdino's BERT wrapper: what breaks without it, what it restores."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("groundingdino")

from groundingdino.models.GroundingDINO import bertwarper  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

from skinapp.concepts import gdino_compat  # noqa: E402
from skinapp.concepts.detector import GDINO_CONFIGS, build_gdino_model  # noqa: E402
from skinapp.concepts.text_encoder import write_tiny_text_encoder  # noqa: E402

SPECIAL = ["[CLS]", "[SEP]", ".", "?"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert(bert_dir):
    return BertModel.from_pretrained(bert_dir).eval()


@pytest.fixture(scope="module")
def tokenizer(bert_dir):
    return AutoTokenizer.from_pretrained(bert_dir)


def _original(method):
    """groundingdino's own method, whether or not the adapter has wrapped it."""
    return getattr(method, "__wrapped__", method)


def test_unadapted_warper_fails_on_transformers5(bert):
    assert not hasattr(bert, "get_extended_attention_mask"), "transformers 4? the adapter would be a no-op"
    warper = bertwarper.BertModelWarper.__new__(bertwarper.BertModelWarper)
    with pytest.raises(AttributeError, match="get_extended_attention_mask"):
        _original(bertwarper.BertModelWarper.__init__)(warper, bert)


def test_torch_rejects_one_minus_bool_and_adapter_casts_first(bert):
    keep = torch.tensor([[[True, False], [True, True]]])
    with pytest.raises((NotImplementedError, RuntimeError, TypeError), match="bool"):
        _ = 1.0 - keep
    additive = gdino_compat.get_extended_attention_mask(bert, keep)
    assert additive.shape == (1, 1, 2, 2) and additive.dtype == torch.float32
    assert torch.equal(additive, gdino_compat.get_extended_attention_mask(bert, keep.float()))
    assert additive[0, 0, 0, 0] == 0 and additive[0, 0, 0, 1] == torch.finfo(torch.float32).min


def test_apply_is_idempotent():
    gdino_compat.apply()
    init = bertwarper.BertModelWarper.__init__
    gdino_compat.apply()
    assert gdino_compat.is_applied()
    assert bertwarper.BertModelWarper.__init__ is init
    assert not hasattr(_original(init), "__wrapped__"), "wrapped twice"


def test_head_masks_are_refused(bert):
    assert gdino_compat.get_head_mask(bert, None, 2) == [None, None]
    with pytest.raises(ValueError, match="head_mask"):
        gdino_compat.get_head_mask(bert, torch.ones(2), 2)


def test_adapted_warper_matches_bert_with_padding_mask(bert, tokenizer):
    gdino_compat.apply()
    warper = bertwarper.BertModelWarper(bert)
    batch = tokenizer(["lesion on the leg", "arm"], padding="longest", return_tensors="pt")
    with torch.inference_mode():
        ours = warper(**batch)["last_hidden_state"]
        reference = bert(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], reference[valid])


def test_adapted_warper_sub_sentence_mask_equals_separate_phrases(bert, tokenizer):
    """GroundingDINO's [bs, n, n] mask: each "phrase ." block must read like BERT on that block alone."""
    gdino_compat.apply()
    warper = bertwarper.BertModelWarper(bert)
    batch = tokenizer(["lesion . left leg ."], return_tensors="pt")
    mask, position_ids, _ = bertwarper.generate_masks_with_special_tokens_and_transfer_map(
        batch, tokenizer.convert_tokens_to_ids(SPECIAL), tokenizer)
    inputs = {k: v for k, v in batch.items() if k != "attention_mask"}
    with torch.inference_mode():
        ours = warper(**inputs, attention_mask=mask, position_ids=position_ids)["last_hidden_state"][0]
        ids = batch["input_ids"][0]
        dots = (ids == tokenizer.convert_tokens_to_ids(".")).nonzero().flatten().tolist()
        for start, end in zip([1, dots[0] + 1], dots):  # "lesion ." and "left leg ."
            block = ids[start:end + 1][None]
            alone = bert(input_ids=block, position_ids=torch.arange(block.shape[1])[None]).last_hidden_state[0]
            torch.testing.assert_close(ours[start:end + 1], alone)


def test_groundingdino_builds_only_with_the_adapter(bert_dir, monkeypatch):
    config = GDINO_CONFIGS["tiny"]
    gdino_compat.apply()
    with monkeypatch.context() as patched:
        for name in ("__init__", "forward"):
            patched.setattr(bertwarper.BertModelWarper, name, _original(getattr(bertwarper.BertModelWarper, name)))
        with pytest.raises(AttributeError, match="get_extended_attention_mask"):
            build_gdino_model(config, bert_dir)
    model = build_gdino_model(config, bert_dir)
    assert type(model).__name__ == "GroundingDINO"
    assert hasattr(model.bert, "get_extended_attention_mask")


def test_installed_bert_fits_the_adapter_and_misfits_are_named():
    gdino_compat.check_signatures()

    class RequiresCache:
        def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, *,
                    cache_length):
            raise AssertionError("never called")

    class NoEmbeds:
        def forward(self, input_ids=None, token_type_ids=None, position_ids=None):
            raise AssertionError("never called")

    class EncoderWithoutMask:
        def forward(self, hidden_states, **kwargs):
            raise AssertionError("never called")

    from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

    with pytest.raises(RuntimeError, match=r"RequiresCache.*required \['cache_length'\]"):
        gdino_compat.check_signatures(RequiresCache, BertEncoder)
    with pytest.raises(RuntimeError, match=r"NoEmbeds.*missing \['inputs_embeds'\]"):
        gdino_compat.check_signatures(NoEmbeds, BertEncoder)
    with pytest.raises(RuntimeError, match="EncoderWithoutMask.*attention_mask"):
        gdino_compat.check_signatures(BertEmbeddings, EncoderWithoutMask)


def test_adapter_never_passes_a_cache_keyword(bert, tokenizer, monkeypatch):
    """Whatever the cache keywords are called (past_key_values_length / cache_length, past_key_values / cache),
    an encoder without a cache must not pass them: their defaults mean "no cache"."""
    gdino_compat.apply()
    warper = bertwarper.BertModelWarper(bert)
    seen = {}
    for name in ("embeddings", "encoder"):
        module = getattr(warper, name)
        original = module.forward

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] = set(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", spy)
    batch = tokenizer(["lesion on the leg"], return_tensors="pt")
    with torch.inference_mode():
        warper(**batch)
    assert seen["embeddings"] == {"input_ids", "position_ids", "token_type_ids", "inputs_embeds"}
    assert seen["encoder"] == {"attention_mask"}


@pytest.mark.parametrize("keyword", ["head_mask", "past_key_values", "encoder_hidden_states", "use_cache",
                                     "output_attentions"])
def test_features_transformers5_bert_cannot_honour_are_refused(bert, tokenizer, keyword):
    gdino_compat.apply()
    warper = bertwarper.BertModelWarper(bert)
    batch = tokenizer(["lesion"], return_tensors="pt")
    value = True if keyword in ("use_cache", "output_attentions") else torch.ones(1)
    with pytest.raises(ValueError, match=f"does not support {keyword}"):
        warper(**batch, **{keyword: value})
