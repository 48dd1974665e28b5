"""Fusion model units: every variant's shapes and masking, padding, top-k pooling, predict, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinapp.concepts.types import Concepts
from skinapp.fusion import (
    FUSION_CONFIGS,
    FUSION_VARIANTS,
    build_baseline,
    build_fusion,
    build_global_encoder,
    fusion_config,
    global_encoder_meta,
    load_fusion_checkpoint,
    mil_loss,
    pad_concepts,
    predict,
    save_fusion_checkpoint,
    top_real_instance,
    topk_pool,
)
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo

CFG = fusion_config("tiny")
N, C = CFG["n_concepts"], 3


def _inputs(b=3, n_real=(3, 8, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, 196, CFG["global_dim"], generator=g)
    concepts = torch.randn(b, N, 256, generator=g)
    mask = torch.zeros(b, N, dtype=torch.bool)
    for i, m in enumerate(n_real):
        mask[i, :m] = True
    return tokens, concepts, mask


def _concepts(m: int, seed: int = 0, h: int = 32, w: int = 32) -> Concepts:
    g = torch.Generator().manual_seed(seed)
    masks = np.zeros((m, h, w), bool)
    for i in range(m):
        masks[i, i:i + 4, i:i + 4] = True
    return Concepts(boxes=np.tile(np.array([[0, 0, 4, 4]], np.float32), (m, 1)),
                    phrases=[f"concept{i}" for i in range(m)], scores=np.linspace(0.9, 0.3, m).astype(np.float32),
                    masks=masks, mask_scores=np.ones(m, np.float32), features=torch.randn(m, 256, generator=g),
                    source="test", weights=(WeightsInfo("concepts", True, "test"),))


def test_configs_are_the_paper_settings():
    assert (FUSION_CONFIGS["scin"]["n_concepts"], FUSION_CONFIGS["scin"]["top_k"]) == (25, 2)
    assert (FUSION_CONFIGS["ntd"]["n_concepts"], FUSION_CONFIGS["ntd"]["top_k"]) == (30, 5)
    for key, value in {"dim": 256, "heads": 8, "layers": 1, "classifier_dropout": 0.7, "global_dim": 768}.items():
        assert FUSION_CONFIGS["scin"][key] == value
    with pytest.raises(ValueError, match="Unknown fusion config"):
        fusion_config("nope")
    with pytest.raises(ValueError, match="Unknown fusion variant"):
        build_fusion("attention", 3, "tiny")


@pytest.mark.parametrize("variant", sorted(FUSION_VARIANTS))
def test_variant_shapes_and_masking(variant):
    model = build_fusion(variant, C, CFG).eval()
    tokens, concepts, mask = _inputs()
    out = model(tokens, concepts, mask)
    assert out.scores.shape == (3, C)
    rows = {"global": 196, "concat": N + 1}.get(variant, N)
    assert out.cam.shape == (3, rows, C)
    assert out.mask.shape == (3, rows)
    if variant == "global":
        assert out.n_concept_rows == 0 and not out.fallback.any()
    else:
        assert out.n_concept_rows == N
        assert out.fallback.tolist() == [False, False, True]
        assert out.fallback_cam.shape == (1, 196, C)
        # padded concepts (and their values) cannot change the scores of an image with >= k real ones
        changed = concepts.clone()
        changed[0, 3:] = 1e3 * torch.randn(N - 3, 256)
        assert torch.allclose(model(tokens, changed, mask).scores[:2], out.scores[:2], atol=1e-5)
        # real concepts do
        changed[0, 0] += 5.0
        assert not torch.allclose(model(tokens, changed, mask).scores[0], out.scores[0])
    assert torch.isfinite(out.scores).all()


def test_topk_pool_takes_real_instances_first():
    cam = torch.tensor([[[1.0], [2.0], [50.0], [40.0]]])  # [1, 4, 1]; instances 2, 3 are padded
    mask = torch.tensor([[True, True, False, False]])
    scores, idx = topk_pool(cam, mask, k=2)
    assert scores.item() == pytest.approx(1.5) and sorted(idx[0, :, 0].tolist()) == [0, 1]
    # fewer real than k: padded copies fill the remaining slots, highest first
    scores, idx = topk_pool(cam, torch.tensor([[True, False, False, False]]), k=2)
    assert scores.item() == pytest.approx((1.0 + 50.0) / 2)
    assert top_real_instance(cam, torch.tensor([[True, False, False, False]])).item() == 0
    assert top_real_instance(cam, torch.zeros(1, 4, dtype=torch.bool)).item() == -1


def test_padding_copies_real_concepts_with_noise():
    feats = torch.randn(3, 256)
    out, mask, src = pad_concepts(feats, 8, noise=0.05, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 256) and mask.tolist() == [True] * 3 + [False] * 5
    assert torch.equal(out[:3], feats)
    for row, s in zip(out[3:], src[3:]):
        diff = (row - feats[s]).norm() / feats[s].norm()
        assert 0 < diff < 0.2                      # a perturbed copy, not a zero vector
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    out, mask, src = pad_concepts(torch.randn(4, 256), 2, scores=scores)
    assert src.tolist() == [1, 3] and mask.all()   # truncation keeps the highest detector scores
    out, mask, _ = pad_concepts(torch.zeros(0, 256), 5)
    assert out.shape == (5, 256) and not mask.any()


def test_loss_decreases():
    torch.manual_seed(0)
    model = build_fusion("cross_attention", C, fusion_config("tiny", classifier_dropout=0.1))
    tokens, concepts, mask = _inputs(b=12, n_real=[4] * 12)
    labels = torch.arange(12) % C
    concepts[:, :4] += 2.0 * torch.nn.functional.one_hot(labels, 256).float().unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = mil_loss(model(tokens, concepts, mask).scores, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_predict_reports_a_real_top_concept_and_provenance():
    model = build_fusion("cross_attention", C, CFG)
    concepts = _concepts(3)
    tokens = torch.randn(196, CFG["global_dim"])
    pred = predict(model, tokens, concepts, ["a", "b", "c"])
    assert pred.probs.shape == (C,) and pred.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert pred.cam.shape == (3, C) and pred.cam_rows == concepts.phrases
    assert [concepts.phrases[i] for i in pred.cam_concepts] == pred.cam_rows
    assert pred.top_concept in pred.cam_concepts
    assert pred.top_concept == int(np.argmax(pred.cam[:, pred.predicted_index]))
    assert pred.top_concept_phrase == concepts.phrases[pred.top_concept]
    assert not pred.trained and UNTRAINED_WARNING in pred.notes
    assert any(w.name == "fusion" and not w.trained for w in pred.weights)
    # deterministic for a seed, training mode restored
    model.train()
    again = predict(model, tokens, concepts, ["a", "b", "c"])
    assert np.allclose(again.probs, pred.probs) and model.training


def test_padded_concepts_never_become_the_top_concept():
    # large padding noise makes padded copies often out-score every real concept
    cfg = fusion_config("tiny", pad_noise=2.0)
    model = build_fusion("local", C, cfg).eval()
    padded_would_win = 0
    for trial in range(30):
        concepts = _concepts(1 + trial % 3, seed=trial)
        tokens = torch.randn(196, cfg["global_dim"])
        feats, mask, _ = pad_concepts(concepts.features, cfg["n_concepts"], torch.as_tensor(concepts.scores),
                                      cfg["pad_noise"], torch.Generator().manual_seed(trial))
        with torch.no_grad():
            cam = model(tokens[None], feats[None], mask[None]).cam[0]
        pred = predict(model, tokens, concepts, ["a", "b", "c"], seed=trial)
        col = cam[:, pred.predicted_index]
        padded_would_win += int(col.argmax()) >= len(concepts)
        assert pred.cam.shape[0] == len(concepts)
        assert pred.top_concept == int(col[: len(concepts)].argmax())
        assert np.allclose(pred.cam[:, pred.predicted_index], col[: len(concepts)].numpy(), atol=1e-5)
    assert padded_would_win >= 5   # the check above was exercised where it matters


def test_more_concepts_than_n_are_truncated_by_score():
    model = build_fusion("cross_attention", C, CFG)
    concepts = _concepts(N + 4)
    concepts.scores = concepts.scores[::-1].copy()   # the last concepts score highest
    pred = predict(model, torch.randn(196, CFG["global_dim"]), concepts, ["a", "b", "c"])
    assert pred.cam.shape[0] == N
    assert set(pred.cam_rows) == {f"concept{i}" for i in range(4, N + 4)}
    assert [concepts.phrases[i] for i in pred.cam_concepts] == pred.cam_rows
    assert pred.top_concept >= 4 and any("highest detector scores" in n for n in pred.notes)


def test_zero_concepts_fall_back_to_global_and_say_so():
    model = build_fusion("cross_attention", C, CFG)
    pred = predict(model, torch.randn(196, CFG["global_dim"]), Concepts.empty(32, 32, "test"), ["a", "b", "c"])
    assert pred.top_concept is None and pred.cam.shape == (196, C)
    assert any("global image features only" in n for n in pred.notes)
    assert np.isfinite(pred.probs).all()


def test_bad_inputs_are_clear_errors():
    model = build_fusion("cross_attention", C, CFG)
    with pytest.raises(ValueError, match="global tokens"):
        model(torch.randn(1, 196, 7), torch.randn(1, N, 256), torch.ones(1, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="class names"):
        predict(model, torch.randn(196, CFG["global_dim"]), _concepts(2), ["a", "b"])
    with pytest.raises(ValueError, match="one image"):
        predict(model, torch.randn(2, 196, CFG["global_dim"]), _concepts(2), ["a", "b", "c"])


def test_global_encoder_tiny_tokens_and_preprocess(skin_photo):
    enc = build_global_encoder("tiny")
    x = enc.preprocess(skin_photo.pixels)
    assert x.shape == (1, 3, 224, 224)
    assert enc.tokens(x).shape == (1, 196, CFG["global_dim"]) and not enc.weights.trained
    with pytest.raises(ValueError, match=r"\[B, 3, 224, 224\]"):
        enc.tokens(torch.zeros(1, 3, 100, 100))


def test_global_encoder_loads_a_timm_checkpoint(tmp_path):
    from safetensors.torch import save_file

    src = build_global_encoder("tiny", seed=1)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.vit.state_dict().items()}, str(path))
    enc = build_global_encoder("tiny", checkpoint=path, seed=2)
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(enc.tokens(x), src.tokens(x)) and enc.weights.trained
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match"):
        build_global_encoder("tiny", checkpoint=tmp_path / "bad.pth")


def test_checkpoint_round_trip_and_tamper_check(tmp_path):
    model = build_fusion("concat_feature", C, CFG).eval()
    path = save_fusion_checkpoint(model, tmp_path / "f.safetensors",
                                  {"class_names": ["a", "b", "c"], "global_encoder": global_encoder_meta("tiny")})
    loaded, meta = load_fusion_checkpoint(path)
    assert meta["variant"] == "concat_feature" and meta["top_k"] == CFG["top_k"] and len(meta["sha256"]) == 64
    tokens, concepts, mask = _inputs()
    assert torch.allclose(loaded(tokens, concepts, mask).scores, model(tokens, concepts, mask).scores)
    assert loaded.weights.trained
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_fusion_checkpoint(path)
    with pytest.raises(ValueError, match="class_names"):
        save_fusion_checkpoint(model, tmp_path / "g.safetensors",
                               {"class_names": ["a"], "global_encoder": global_encoder_meta("tiny")})
    with pytest.raises(ValueError, match="must say which ViT the model was trained with"):
        save_fusion_checkpoint(model, tmp_path / "g.safetensors", {"class_names": ["a", "b", "c"]})


@pytest.mark.parametrize("name", ["resnet50", "vit_b16"])
def test_baselines_train_on_images(name):
    torch.manual_seed(0)
    model = build_baseline(name, 2, "tiny")
    x, y = torch.randn(4, 3, 224, 224), torch.tensor([0, 1, 0, 1])
    assert model(x).shape == (4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first
