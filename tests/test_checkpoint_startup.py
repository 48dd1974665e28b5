"""Starting with a checkpoint the user must fix: said in one line (exit status 2), never a silent demo model.

* an explicit path (``SKINAPP_<NAME>`` or the ``checkpoints`` argument) that does not hold the checkpoint stops the
  start, naming the variable and the path (before: the demo model was used without a word);
* a damaged trained checkpoint (fusion classifier, fine-tuned CLIP) or an unsafe pickle stops ``python app.py``
  and ``python -m skinapp.analyze`` with one ``not starting: ...`` line, no traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import app
from skinapp import analyze
from skinapp import checkpoints as ckpt
from skinapp.clip import model as clip_model
from skinapp.fusion import build_fusion, global_encoder_meta, save_fusion_checkpoint
from skinapp.models import load_models

REPO_MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "manifest.json"
EXAMPLES = Path(__file__).resolve().parents[1] / "skinapp" / "examples"
ENV = ("SAM_VIT_B", "GROUNDINGDINO_SWINT_OGC", "BERT_BASE_UNCASED", "VIT_B16_AUGREG2", "FUSION_CLASSIFIER",
       "CLIP_VIT_B16_OPENAI", "CLIP_FINETUNED", "MONET", "DERMLIP_VIT_B16", "MANIFEST", "OFFLINE")


@pytest.fixture
def empty(tmp_path, monkeypatch):
    """An empty checkpoint directory, no checkpoint variables, the repository's manifest."""
    for name in ENV:
        monkeypatch.delenv(f"SKINAPP_{name}", raising=False)
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    monkeypatch.setenv("SKINAPP_CHECKPOINT_DIR", str(directory))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-before"))
    monkeypatch.setattr(app, "launch", lambda *args, **kwargs: None)  # a start that is not refused does not serve
    with ckpt.use_manifest(REPO_MANIFEST):
        yield directory


def _evil(path: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return exec, ("raise SystemExit('the pickle ran code')",)

    torch.save({"w": torch.ones(1), "payload": Payload()}, path)
    return path


def _start_app(tmp_path: Path, caplog, run: int = 0) -> tuple[int, list[logging.LogRecord]]:
    with caplog.at_level(logging.ERROR, logger="skinapp.app"):  # each start claims its own temporary folder
        status = app.main(["--profile", "auto", "--no-warmup", "--temp-dir", str(tmp_path / f"tmp{run}"),
                           "--data-dir", str(tmp_path / "data"), "--port", "7391"])
    return status, [r for r in caplog.records if r.name == "skinapp.app"]


def _one_line(records: list[logging.LogRecord]) -> str:
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert records[0].exc_info is None and "\n" not in message and "Traceback" not in message
    assert message.startswith("not starting: ")
    return message


# ------------------------------------------------------------------------------------- explicit paths

@pytest.mark.parametrize("name", ["FUSION_CLASSIFIER", "MONET", "VIT_B16_AUGREG2"])
def test_a_variable_naming_a_path_without_the_checkpoint_stops_the_start(empty, tmp_path, monkeypatch, name):
    wrong = tmp_path / "typo" / "model.safetensors"
    monkeypatch.setenv(f"SKINAPP_{name}", str(wrong))
    with pytest.raises(ckpt.CheckpointMissing) as err:
        load_models("auto", device="cpu")
    message = str(err.value)
    detail = "missing config.json, " if name == "MONET" else "not found)"  # MONET is a folder of files
    assert message.startswith(f"SKINAPP_{name}={wrong} does not hold checkpoint {name.lower()!r} ({wrong}: {detail}")
    assert message.endswith(f"Point SKINAPP_{name} at the checkpoint, or unset it to use the checkpoint directory.")
    assert "\n" not in message


def test_an_explicit_argument_path_without_the_checkpoint_stops_the_start(empty, tmp_path):
    wrong = tmp_path / "nowhere.safetensors"
    with pytest.raises(ckpt.CheckpointMissing) as err:
        load_models("auto", device="cpu", checkpoints={"fusion_classifier": wrong})
    assert str(err.value) == f"The path given for checkpoint 'fusion_classifier' does not hold it ({wrong}: not found)."


def test_without_explicit_paths_a_missing_checkpoint_still_gives_the_demo_model(empty):
    models = load_models("auto", device="cpu")  # control: nothing set, nothing there
    assert models.mode == "demo" and any("fusion_classifier" in r for r in models.reasons["analysis"])


def test_the_app_does_not_start_on_a_variable_naming_a_missing_file(empty, tmp_path, monkeypatch, caplog):
    wrong = tmp_path / "fusion.safetensors"
    monkeypatch.setenv("SKINAPP_FUSION_CLASSIFIER", str(wrong))
    status, records = _start_app(tmp_path, caplog)
    assert status == 2
    assert f"SKINAPP_FUSION_CLASSIFIER={wrong} does not hold checkpoint 'fusion_classifier'" in _one_line(records)


# ------------------------------------------------------------------------------ damaged trained checkpoints

def _fusion_checkpoint(directory: Path) -> Path:
    model = build_fusion("cross_attention", 2, "tiny")
    return save_fusion_checkpoint(model, directory / "fusion_classifier.safetensors",
                                  {"class_names": ["a", "b"], "global_encoder": global_encoder_meta("tiny")})


def test_the_app_does_not_start_on_a_damaged_fusion_checkpoint(empty, tmp_path, caplog):
    path = _fusion_checkpoint(empty)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    status, records = _start_app(tmp_path, caplog)
    assert status == 2
    assert _one_line(records) == (f"not starting: {path} does not match the SHA-256 in fusion_classifier.json: the "
                                  "file is damaged or changed since training. Copy both files from the training run "
                                  "again.")
    path.with_suffix(".json").write_text('{"class_names": ["a", "b"], ')  # a sidecar cut short
    caplog.clear()
    status, records = _start_app(tmp_path, caplog, run=1)
    assert status == 2 and "fusion_classifier.json cannot be read as JSON" in _one_line(records)


@pytest.mark.parametrize("damage", ["truncated", "sidecar digest"])
def test_the_app_does_not_start_on_a_damaged_fine_tuned_clip(empty, tmp_path, caplog, damage):
    bundle = clip_model.build_clip("tiny", seed=3)
    path = clip_model.save_clip_checkpoint(bundle.model, empty / "clip_finetuned.safetensors",
                                           clip_model.CLIP_CONFIGS["tiny"], meta={"base_checkpoint": "x"})
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        side = path.with_suffix(".json")
        side.write_text(side.read_text().replace('"sha256": "', '"sha256": "0'))
    status, records = _start_app(tmp_path, caplog)
    assert status == 2
    message = _one_line(records)
    assert message.startswith(f"not starting: Checkpoint 'clip_finetuned' ({path}) cannot be loaded: ")
    assert message.endswith("It is damaged or not in the format skinapp reads: copy it again from where it came "
                            "from, or remove it (unset SKINAPP_CLIP_FINETUNED) to start without it.")


# ----------------------------------------------------------------------------- python -m skinapp.analyze

@pytest.mark.parametrize("variable", ["SKINAPP_FUSION_CLASSIFIER", "SKINAPP_CLIP_FINETUNED"])
def test_analyze_refuses_an_unsafe_pickle_in_one_line(empty, tmp_path, monkeypatch, caplog, variable):
    evil = _evil(tmp_path / "model.pth")
    monkeypatch.setenv(variable, str(evil))
    with caplog.at_level(logging.ERROR, logger="skinapp.analyze"):
        status = analyze.main([str(EXAMPLES), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert status == 2
    records = [r for r in caplog.records if r.name == "skinapp.analyze"]
    assert len(records) == 1 and records[0].exc_info is None
    message = records[0].getMessage()
    assert message.startswith("not starting: ") and "\n" not in message
    assert str(evil) in message and "weights_only=False" not in message and "weights_only` set" not in message
    if variable == "SKINAPP_CLIP_FINETUNED":
        assert "holds a Python object or function (exec) besides tensors" in message
    else:
        assert "is not a fusion checkpoint: those are .safetensors files" in message
    assert not (tmp_path / "out" / "records").exists()
