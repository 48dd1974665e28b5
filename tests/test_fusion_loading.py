"""A trained fusion checkpoint runs only with the ViT it was trained with, and only with its own sidecar.

Files in the official formats at test size (a ViT-B/16-shaped ViT of one block, a tiny fusion head), found by
``load_models(profile="auto")`` through the real resolution (``SKINAPP_CHECKPOINT_DIR``, ``SKINAPP_<NAME>``). The
manifest is the project's own with the ViT's pins replaced by those of the file written here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from skinapp import checkpoints as ckpt
from skinapp.checkpoints import _hashing
from skinapp.fusion import build_fusion, fusion_config, global_encoder_meta, load_fusion_checkpoint
from skinapp.fusion import encoders as encoders_mod
from skinapp.fusion.checkpoint import save_fusion_checkpoint
from skinapp.models import load_models

REPO_MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "manifest.json"
CLASSES = ["Buruli ulcer", "Scabies", "Leprosy"]
SMALL_VIT = {"model_name": "vit_base_patch16_224", "embed_dim": 768, "depth": 1, "num_heads": 12}
ENV = ("SAM_VIT_B", "GROUNDINGDINO_SWINT_OGC", "BERT_BASE_UNCASED", "VIT_B16_AUGREG2", "FUSION_CLASSIFIER",
       "CLIP_VIT_B16_OPENAI", "CLIP_FINETUNED", "MONET", "DERMLIP_VIT_B16", "MANIFEST", "OFFLINE")
VIT_FILE = "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_vit(path: Path, seed: int) -> Path:
    vit = encoders_mod.build_global_encoder("full", seed=seed).vit
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def _fusion(seed: int = 104, global_dim: int = 768):
    torch.manual_seed(seed)
    return build_fusion("cross_attention", len(CLASSES), fusion_config("tiny", global_dim=global_dim))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """An empty checkpoint dir with the app's ViT (pinned), a run folder, the small "full" ViT architecture."""
    monkeypatch.setitem(encoders_mod.VIT_PROFILES, "full", dict(SMALL_VIT))
    for name in ENV:
        monkeypatch.delenv(f"SKINAPP_{name}", raising=False)
    directory, runs = tmp_path / "checkpoints", tmp_path / "runs"
    directory.mkdir()
    runs.mkdir()
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    app_vit = _save_vit(directory / VIT_FILE, seed=103)
    data = json.loads(REPO_MANIFEST.read_text())
    for entry in data["checkpoints"]:
        if entry["name"] == "vit_b16_augreg2":
            entry["files"][0].update(size=app_vit.stat().st_size, sha256=_sha(app_vit))
    _hashing._memory.clear()
    with ckpt.use_manifest(data):
        yield {"dir": directory, "runs": runs, "app_vit": app_vit, "tmp": tmp_path}


def _state_equal(module: torch.nn.Module, state: dict) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k].cpu(), v) for k, v in state.items())


def _end_to_end_run(folder: Path) -> Path:
    """What train.fusion --mode end_to_end leaves: fusion.safetensors + fusion.json + global_encoder.safetensors."""
    folder.mkdir()
    own = _save_vit(folder / "global_encoder.safetensors", seed=7)
    meta = {"class_names": CLASSES, "global_encoder": {"trained": True, **global_encoder_meta("full", fine_tuned=own)}}
    return save_fusion_checkpoint(_fusion(), folder / "fusion.safetensors", meta)


def _frozen(path: Path, vit: Path) -> Path:
    return save_fusion_checkpoint(_fusion(), path, {"class_names": CLASSES,
                                                    "global_encoder": global_encoder_meta("full", vit)})


# ----------------------------------------------------------------------------------- the ViT it was trained with

def test_an_end_to_end_checkpoint_runs_with_its_own_fine_tuned_vit(setup, monkeypatch):
    path = _end_to_end_run(setup["runs"] / "e2e")
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(path))
    models = load_models("auto", device="cpu")
    own = ckpt.load_tensors(path.parent / "global_encoder.safetensors")
    assert _state_equal(models.global_encoder.vit, own), "the fine-tuned ViT beside it, not the app's"
    assert not _state_equal(models.global_encoder.vit, ckpt.load_tensors(setup["app_vit"]))
    assert models.class_names == CLASSES and models.global_encoder.weights.trained
    assert models.global_encoder.weights.source.startswith(str(path.parent / "global_encoder.safetensors"))
    setup["app_vit"].unlink()  # the app's own ViT is not needed at all
    assert _state_equal(load_models("auto", device="cpu").global_encoder.vit, own)


def test_an_end_to_end_checkpoint_without_its_vit_or_with_another_is_refused(setup, monkeypatch):
    path = _end_to_end_run(setup["runs"] / "e2e")
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(path))
    own = path.parent / "global_encoder.safetensors"
    _save_vit(own, seed=8)  # another run's fine-tuned ViT under the same name
    with pytest.raises(ckpt.TrainedCheckpointError) as err:
        load_models("auto", device="cpu")
    assert str(err.value) == (
        f"{own} is not the fine-tuned ViT fusion.safetensors was trained with (its SHA-256 differs from the one in "
        "fusion.json): damaged or from another run. Copy it from the same run folder again.")
    own.unlink()
    with pytest.raises(ckpt.TrainedCheckpointError, match=r"trained end to end with its own fine-tuned ViT, "
                                                          r"global_encoder.safetensors, which is not beside it"):
        load_models("auto", device="cpu")


def test_a_frozen_vit_checkpoint_runs_only_with_that_vit(setup, monkeypatch):
    path = _frozen(setup["runs"] / "frozen.safetensors", setup["app_vit"])
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(path))
    models = load_models("auto", device="cpu")
    assert _state_equal(models.global_encoder.vit, ckpt.load_tensors(setup["app_vit"]))
    assert models.class_names == CLASSES and models.global_encoder.weights.trained

    other_vit = _save_vit(setup["tmp"] / "my_vit.safetensors", seed=55)  # trained on another ViT
    other = _frozen(setup["runs"] / "other.safetensors", other_vit)
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(other))
    with pytest.raises(ckpt.TrainedCheckpointError) as err:
        load_models("auto", device="cpu")
    message = str(err.value)
    assert message.startswith(f"{other} was trained on the frozen ViT weights with SHA-256 {_sha(other_vit)}, but "
                              f"the app's ViT is {setup['app_vit']} (SHA-256 {_sha(setup['app_vit'])}). Its "
                              "predictions would come from a ViT it was not trained with, so it is refused.")
    assert "SKINAPP_VIT_B16_AUGREG2" in message and "--vit-checkpoint" in message


def test_a_frozen_vit_checkpoint_waits_for_a_missing_vit_and_a_random_one_gets_its_random_vit(setup, monkeypatch):
    path = _frozen(setup["runs"] / "frozen.safetensors", setup["app_vit"])
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(path))
    setup["app_vit"].unlink()
    models = load_models("auto", device="cpu")
    assert models.mode == "demo" and not models.fusion.weights.trained  # the demo model, said in the banner
    assert any(r.startswith("fusion_classifier waits for the ViT it was trained with (vit_b16_augreg2, SHA-256 ")
               for r in models.reasons["analysis"])
    random_vit = save_fusion_checkpoint(_fusion(global_dim=64), setup["runs"] / "random.safetensors",
                                        {"class_names": CLASSES, "global_encoder": global_encoder_meta("tiny")})
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(random_vit))
    models = load_models("auto", device="cpu")
    assert models.class_names == CLASSES and models.fusion.weights.trained
    assert _state_equal(models.global_encoder.vit, encoders_mod.build_global_encoder("tiny").vit.state_dict())
    assert not models.global_encoder.weights.trained and models.mode == "demo"  # a random ViT is never a diagnosis


# -------------------------------------------------------------------------------------------- the sidecar binding

def _edit_sidecar(path: Path, **changes) -> None:
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        meta[key] = value(meta[key]) if callable(value) else value
    side.write_text(json.dumps(meta))


def test_an_edited_sidecar_is_refused(tmp_path):
    meta = {"class_names": CLASSES, "global_encoder": global_encoder_meta("tiny")}
    path = save_fusion_checkpoint(_fusion(global_dim=64), tmp_path / "f.safetensors", meta)
    load_fusion_checkpoint(path)
    good = path.with_suffix(".json").read_text()
    _edit_sidecar(path, class_names=lambda names: [names[1], names[0], names[2]])
    with pytest.raises(ckpt.TrainedCheckpointError) as err:
        load_fusion_checkpoint(path)
    assert str(err.value) == (
        'f.json does not match the checkpoint f.safetensors it describes: class_names differ (the weights were '
        'saved with class_names ["Buruli ulcer", "Scabies", "Leprosy"]; the sidecar says class_names ["Scabies", '
        '"Buruli ulcer", "Leprosy"]). The sidecar was edited or belongs to another run: copy the pair from the '
        'same training run again.')
    path.with_suffix(".json").write_text(good)
    _edit_sidecar(path, global_encoder=lambda enc: {**enc, "init": "file", "sha256": "0" * 64})
    with pytest.raises(ckpt.TrainedCheckpointError, match="global_encoder differ"):
        load_fusion_checkpoint(path)
    path.with_suffix(".json").write_text(good)
    _edit_sidecar(path, config=lambda cfg: {**cfg, "top_k": cfg["top_k"] + 1})
    with pytest.raises(ckpt.TrainedCheckpointError, match="config differ"):
        load_fusion_checkpoint(path)
    path.with_suffix(".json").write_text(good)
    _edit_sidecar(path, global_encoder=lambda enc: {"profile": "tiny"})
    with pytest.raises(ckpt.TrainedCheckpointError, match="must say which ViT the model was trained with"):
        load_fusion_checkpoint(path)


def test_a_checkpoint_saved_by_an_older_skinapp_is_refused_with_what_to_do(tmp_path):
    """The format before the binding: plain safetensors and a sidecar whose SHA-256 matches (nothing damaged)."""
    model = _fusion(global_dim=64)
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({
        "class_names": CLASSES, "variant": model.variant, "config": model.config, "sha256": _sha(path),
        "global_encoder": {"profile": "tiny", "fine_tuned": False}}))
    with pytest.raises(ckpt.TrainedCheckpointError) as err:
        load_fusion_checkpoint(path)
    assert str(err.value) == (
        f"{path} was saved by an older skinapp: its class names, configuration and global ViT are not bound into "
        "the weights file, so an edited sidecar or the wrong ViT could not be detected. Retrain it with "
        "python -m train.fusion (README, 'Training'); the new run's files are checked on every load.")


def test_saving_without_the_vit_record_or_with_a_wrong_one_is_refused(tmp_path):
    model = _fusion(global_dim=64)
    with pytest.raises(ValueError, match="must say which ViT"):
        save_fusion_checkpoint(model, tmp_path / "f.safetensors", {"class_names": CLASSES,
                                                                   "global_encoder": {"profile": "tiny"}})
    own = tmp_path / "global_encoder.safetensors"
    _save_vit(own, seed=1)
    meta = {"class_names": CLASSES, "global_encoder": global_encoder_meta("full", fine_tuned=own)}
    moved = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="beside f.safetensors is not the one meta names"):
        save_fusion_checkpoint(model, moved / "f.safetensors", meta)
    assert not (moved / "f.safetensors").exists()
