"""The trained path: checkpoints in the manifest's formats are found, checked, loaded and USED by the Analyzer.

Every other Analyzer test runs ``profile="tiny"``, which never reaches checkpoint resolution, the grounded
extractor or the loaders. Here the tests write one file per manifest entry, in the format the app expects
(official SAM / Grounding DINO ``.pth``, a BERT directory, timm ViT and open_clip safetensors, our fusion
and fine-tuned CLIP safetensors with their JSON sidecars), and start the Analyzer with ``profile="auto"``
(the app's default) through the real resolution code (``SKINAPP_CHECKPOINT_DIR`` and a
``SKINAPP_<NAME>`` variable).

Two things are test-sized, both stated here:
* the architectures: the "full" config entries (SAM vit_b, Grounding DINO SwinT, ViT-B/16, CLIP ViT-B-16)
  are swapped for small ones of the same classes (configs are data), so files stay a few MB;
* the pins: the manifest used is the project's own with each file's size and SHA-256 replaced by those
  of the file written here (a user's tampered official file is still refused: tests/test_checkpoint_verify.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_writers import write_tiny_dermlip, write_tiny_monet
from safetensors.torch import save_file

from skinapp import checkpoints as ckpt
from skinapp.clip import model as clip_model
from skinapp.concepts import detector as detector_mod
from skinapp.concepts import segmenter as segmenter_mod
from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.text_encoder import write_tiny_text_encoder
from skinapp.fusion import (
    build_fusion,
    fusion_config,
    global_encoder_meta,
    load_fusion_checkpoint,
    predict,
    save_fusion_checkpoint,
)
from skinapp.fusion import encoders as encoders_mod
from skinapp.models import load_models
from skinapp.pipeline import Analyzer
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.synthetic import make_skin_photo

REPO_MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "manifest.json"
CLASS_NAMES = ["Buruli ulcer", "Scabies", "Leprosy"]  # not the demo model's five SCIN classes
ENV_NAMES = ("SAM_VIT_B", "GROUNDINGDINO_SWINT_OGC", "BERT_BASE_UNCASED", "VIT_B16_AUGREG2", "FUSION_CLASSIFIER",
             "CLIP_VIT_B16_OPENAI", "CLIP_FINETUNED", "MONET", "DERMLIP_VIT_B16", "MANIFEST", "OFFLINE")
SMALL_VIT = {"model_name": "vit_base_patch16_224", "embed_dim": 768, "depth": 1, "num_heads": 12}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small_architectures(mp: pytest.MonkeyPatch) -> None:
    """The "full" config entries become small models of the same classes (the ViT keeps 768-d tokens)."""
    mp.setitem(segmenter_mod.SAM_CONFIGS, "vit_b", copy.deepcopy(segmenter_mod.SAM_CONFIGS["tiny"]))
    mp.setitem(detector_mod.GDINO_CONFIGS, "full", copy.deepcopy(detector_mod.GDINO_CONFIGS["tiny"]))
    mp.setitem(encoders_mod.VIT_PROFILES, "full", dict(SMALL_VIT))
    mp.setitem(clip_model.CLIP_CONFIGS, "full", copy.deepcopy(clip_model.CLIP_CONFIGS["tiny"]))


def _write_checkpoints(directory: Path, fusion_dir: Path) -> dict[str, Path]:
    """One file per manifest entry, seeded so that none equals the random model the app would build."""
    directory.mkdir(parents=True)
    fusion_dir.mkdir(parents=True)
    files: dict[str, Path] = {}
    torch.manual_seed(101)
    files["sam_vit_b"] = directory / "sam_vit_b_01ec64.pth"
    torch.save(segmenter_mod.build_sam(segmenter_mod.SAM_CONFIGS["vit_b"]).state_dict(), files["sam_vit_b"])
    bert = write_tiny_text_encoder(directory / "bert-base-uncased", seed=3)
    files["bert_base_uncased"] = bert
    torch.manual_seed(102)
    gdino = detector_mod.build_gdino_model(detector_mod.GDINO_CONFIGS["full"], bert)
    files["groundingdino_swint_ogc"] = directory / "groundingdino_swint_ogc.pth"
    torch.save({"model": gdino.state_dict()}, files["groundingdino_swint_ogc"])
    vit = encoders_mod.build_global_encoder("full", seed=103).vit
    files["vit_b16_augreg2"] = directory / "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(files["vit_b16_augreg2"]))
    torch.manual_seed(104)
    fusion = build_fusion("cross_attention", len(CLASS_NAMES), fusion_config("tiny", global_dim=768))
    files["fusion_classifier"] = save_fusion_checkpoint(
        fusion, fusion_dir / "fusion_classifier.safetensors",
        {"class_names": CLASS_NAMES, "global_encoder": global_encoder_meta("full", files["vit_b16_augreg2"])})
    pretrained = clip_model.build_clip("full", seed=105).model
    files["clip_vit_b16_openai"] = directory / "clip_vit_b16_openai.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(files["clip_vit_b16_openai"]))
    finetuned = clip_model.build_clip("full", seed=106).model
    files["clip_finetuned"] = clip_model.save_clip_checkpoint(
        finetuned, directory / "clip_finetuned.safetensors", clip_model.CLIP_CONFIGS["full"],
        meta={"label": "fine-tuned (derm)", "base_checkpoint": "clip_vit_b16_openai.safetensors"})
    write_tiny_monet(directory / "monet", seed=107)  # MONET's transformers format, ViT-L/14-shaped
    files["monet"] = directory / "monet"
    write_tiny_dermlip(directory / "dermlip-vit-b16", seed=108)  # DermLIP's open_clip hf-hub format
    files["dermlip_vit_b16"] = directory / "dermlip-vit-b16"
    return files


def _pinned_manifest(files: dict[str, Path]) -> dict:
    """The project's manifest with each pinned file's size and SHA-256 replaced by those of the file written here."""
    data = json.loads(REPO_MANIFEST.read_text())
    for entry in data["checkpoints"]:
        if entry["name"] not in files:
            continue
        location = files[entry["name"]]
        if entry.get("directory"):
            entry["files"] = [{**spec, "size": (location / spec["filename"]).stat().st_size,
                               "sha256": _sha(location / spec["filename"])}
                              for spec in entry["files"] if (location / spec["filename"]).is_file()]
            assert len(entry["files"]) >= 2, entry["name"]  # every file listed was written (and is pinned here)
            if entry["name"] == "bert_base_uncased":
                assert {"config.json", "vocab.txt", "model.safetensors"} <= {f["filename"] for f in entry["files"]}
        elif entry["files"][0]["sha256"] is not None:
            entry["files"][0].update(size=location.stat().st_size, sha256=_sha(location))
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        _small_architectures(mp)
        for name in ENV_NAMES:
            mp.delenv(f"SKINAPP_{name}", raising=False)
        files = _write_checkpoints(root / "checkpoints", root / "runs")
        mp.setenv("SKINAPP_CHECKPOINT_DIR", str(root / "checkpoints"))
        mp.setenv("SKINAPP_FUSION_CLASSIFIER", str(files["fusion_classifier"]))  # the env-variable route
        with ckpt.use_manifest(_pinned_manifest(files)):
            analyzer = Analyzer.create(profile="auto", device="cpu", warmup=True)
            yield analyzer, files


@pytest.fixture(scope="module")
def analysed(trained):
    analyzer, _ = trained
    photo = make_skin_photo(seed=11, size=(192, 256), lesion_colour="dark_brown")
    return analyzer.analyze(photo.pixels, prompts="lesion . arm", box_threshold=0.0, text_threshold=0.0)


def _same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return set(state) <= set(own) and all(torch.equal(own[k].cpu(), v) for k, v in state.items())


def test_every_stage_loads_its_checkpoint_and_mode_is_full(trained):
    analyzer, files = trained
    assert analyzer.mode == "full"
    assert analyzer.reasons == {"analysis": [], "clip": []}
    assert isinstance(analyzer.extractor, GroundedSamExtractor)
    sources = {w.name: w.source for w in analyzer.analysis_weights}
    assert all(w.trained for w in analyzer.analysis_weights), analyzer.describe()
    assert sources["fusion"] == str(files["fusion_classifier"])
    assert sources["vit_full"] == str(files["vit_b16_augreg2"])
    assert sources["sam_vit_b"] == str(files["sam_vit_b"])
    assert sources["grounding_dino_swint_ogc"].startswith(str(files["groundingdino_swint_ogc"]))
    assert "untrained" not in analyzer.describe()


def test_loaded_weights_are_the_files_not_a_random_init(trained):
    analyzer, files = trained
    segmenter, detector = analyzer.extractor.segmenter, analyzer.extractor.detector
    assert _same_weights(segmenter.sam, torch.load(files["sam_vit_b"], weights_only=True))
    assert _same_weights(detector.model, torch.load(files["groundingdino_swint_ogc"], weights_only=True)["model"])
    assert _same_weights(analyzer.global_encoder.vit, ckpt.load_tensors(files["vit_b16_augreg2"]))
    assert _same_weights(analyzer.fusion, ckpt.load_tensors(files["fusion_classifier"]))
    # control: the random models the same builders make without a checkpoint are different
    assert not _same_weights(encoders_mod.build_global_encoder("full").vit, ckpt.load_tensors(files["vit_b16_augreg2"]))
    torch.manual_seed(0)
    random_sam = segmenter_mod.build_sam(segmenter_mod.SAM_CONFIGS["vit_b"])
    assert not _same_weights(random_sam, torch.load(files["sam_vit_b"], weights_only=True))


def test_diagnosis_uses_the_sidecar_classes_and_the_trained_fusion(trained, analysed):
    analyzer, files = trained
    result = analysed
    assert result.prediction.class_names == CLASS_NAMES
    assert list(result.class_probabilities()) == CLASS_NAMES
    assert result.banner == "" and result.trained
    assert UNTRAINED_WARNING not in result.decisive_text
    assert not np.all(result.decisive_image[0, :, :] == (200, 0, 0))  # no red banner strip
    tokens = analyzer._global_tokens(analyzer.state_for(result.image_key))
    reference, _ = load_fusion_checkpoint(files["fusion_classifier"])
    again = predict(reference, tokens, result.concepts, CLASS_NAMES)
    np.testing.assert_allclose(result.prediction.probs, again.probs, atol=1e-6)
    torch.manual_seed(0)
    untrained = build_fusion("cross_attention", len(CLASS_NAMES), fusion_config("tiny", global_dim=768))
    other = predict(untrained.eval(), tokens, result.concepts, CLASS_NAMES)
    assert np.abs(np.asarray(result.prediction.probs) - np.asarray(other.probs)).max() > 1e-3


def test_concepts_come_from_the_grounded_extractor(trained, analysed):
    analyzer, _ = trained
    assert analyzer.extractor.segmenter.n_embed >= 1 and analyzer.extractor.detector is not None
    weights = {w.name: w for w in analysed.weights}
    assert weights["sam_vit_b"].trained and weights["grounding_dino_swint_ogc"].trained
    assert len(analysed.concepts) >= 1  # thresholds 0: every box the detector proposes is kept
    assert set(analysed.concepts.phrases) <= {"lesion", "arm"}


def test_every_clip_checkpoint_is_offered_and_used(trained, analysed):
    analyzer, files = trained
    labels = analyzer.clip_choices
    assert [label.split(":")[0] for label in labels] == ["pretrained", "fine-tuned", "MONET", "DermLIP"]
    assert "fine-tuned (derm)" in labels[1]
    phrases = ["irregular streaks", "blue-whitish veil"]
    sims = {}
    for choice, name in zip(labels, ("clip_vit_b16_openai", "clip_finetuned", "monet", "dermlip_vit_b16")):
        result = analyzer.explain(analysed.image_key, phrases, clip_choice=choice)
        assert result.banner == "" and all(w.trained for w in result.weights)
        assert result.weights[0].source.startswith(str(files[name]))
        assert analyzer.clips[choice].licence == ckpt.get_entry(name).licence
        bundle = analyzer.clips[choice]  # the image pass used the model's own size, mean and std
        own = bundle.whole_photo_preprocess()(analysed.image.pil())
        torch.testing.assert_close(analyzer.state_for(analysed.image_key).clip_passes[choice].image[0], own)
        sims[choice] = result.similarities
    grids = {c: result.maps["gradcam"].shape[1:] for c in labels
             for result in [analyzer.explain(analysed.image_key, phrases[:1], clip_choice=c)]}
    assert grids[labels[2]] == (16, 16) and grids[labels[3]] == (14, 14)  # MONET is ViT-L/14-shaped
    for a, b in ((labels[0], labels[1]), (labels[0], labels[3]), (labels[1], labels[3])):
        assert np.abs(sims[a] - sims[b]).max() > 1e-4  # different models answered
    for choice, name in zip(labels[:2], ("clip_vit_b16_openai", "clip_finetuned")):
        bundle = clip_model.load_clip_checkpoint(files[name])
        assert _same_weights(analyzer.clips[choice].model, bundle.model.state_dict())


def test_unpinned_dermatology_clips_are_refused_with_the_reason(trained):
    """With the project's own manifest (MONET / DermLIP hashes unknown) their files are present but refused."""
    analyzer, files = trained
    data = _pinned_manifest(files)
    for entry in data["checkpoints"]:
        if entry["name"] == "monet":
            entry["files"][0]["sha256"] = None
    with ckpt.use_manifest(data):
        models = load_models("auto", device="cpu")
    assert [c.split(":")[0] for c in models.clips] == ["pretrained", "fine-tuned", "DermLIP"]
    refused = "monet: refused, the manifest pins no SHA-256 for config.json"
    assert any(r.startswith(refused) for r in models.reasons["clip"])
