"""``python app.py --download`` as a user runs it, against a local stand-in for the Hub (``HF_ENDPOINT``).

The app's official checkpoints are served at test size (tests/tiny_release.py: official formats, the
project's manifest with its pins swapped for the files', small architectures through
``SKINAPP_MODEL_CONFIGS``); our trained fusion classifier, which has no published weights, is handed over
with ``SKINAPP_FUSION_CLASSIFIER``. The app must download, verify, load and serve the full-mode page; and
with the Hub switched off it must start in demo mode with the banner saying why.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from skinapp.provenance import UNTRAINED_WARNING
from skinapp.ui.server import AppProcess
from tests.hub_server import HubServer
from tests.test_trained_path import ENV_NAMES, _small_architectures
from tests.tiny_release import serve_release, write_release


def app_env(tmp_path: Path, endpoint: str, made: dict, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKINAPP_") or k[8:] not in ENV_NAMES}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
                "SKINAPP_CHECKPOINT_DIR": str(tmp_path / "ckpts"), "SKINAPP_MANIFEST": str(made["manifest"]),
                "SKINAPP_MODEL_CONFIGS": str(made["configs"]), "SKINAPP_FUSION_CLASSIFIER": str(made["fusion"]),
                **extra})
    return env


@pytest.fixture
def served_release(tmp_path, monkeypatch):
    _small_architectures(monkeypatch)  # the files are written at the size SKINAPP_MODEL_CONFIGS names
    with HubServer() as (state, endpoint):
        made = write_release(tmp_path, endpoint)
        serve_release(state, made)
        yield state, endpoint, made


def component(app: AppProcess, elem_id: str) -> dict:
    with urllib.request.urlopen(f"{app.url}/config", timeout=30) as resp:
        config = json.load(resp)
    found = [c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert len(found) == 1, elem_id
    return found[0]["props"]


@pytest.mark.slow
def test_app_download_reaches_full_mode(served_release, tmp_path):
    state, endpoint, made = served_release
    env = app_env(tmp_path, endpoint, made)
    with AppProcess(tmp_path / "data", profile="auto", extra_args=["--download", "--no-warmup"], env=env) as app:
        banner = component(app, "startup-banner")["value"]
        button = component(app, "download-models")
        log = app.log_tail(20000)
    assert "Downloading 5 official checkpoint(s)" in log, log
    assert "mode full" in log and UNTRAINED_WARNING not in banner and "Weights used:" in banner, banner
    assert button["visible"] is False
    assert (tmp_path / "ckpts" / "sam_vit_b_01ec64.pth").is_file()  # SAM: our downloader, the checkpoint dir
    assert any((tmp_path / "hf" / "hub").glob("models--timm--vit_base_patch16_clip_224.openai/snapshots/*/*"))


@pytest.mark.slow
def test_app_download_offline_starts_in_demo_mode_saying_why(served_release, tmp_path):
    state, endpoint, made = served_release
    env = app_env(tmp_path, endpoint, made, HF_HUB_OFFLINE="1", SPACE_ID="someone/skinapp", SYSTEM="spaces")
    with AppProcess(tmp_path / "data", profile="auto", extra_args=["--no-warmup"], env=env) as app:  # Spaces
        banner = component(app, "startup-banner")["value"]
        status = component(app, "download-status")["value"]
        log = app.log_tail(20000)
    lines = [line for line in log.splitlines() if "Could not download the real models" in line]
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1 forbids downloads from the Hugging Face Hub" in lines[0], log
    assert UNTRAINED_WARNING in banner
    assert "HF_HUB_OFFLINE=1" in status and "cannot be downloaded here" in status
    assert [p for p, *_ in state.requests if "/resolve/" in p] == []  # the Hub was never asked


def test_huggingface_hub_log_lines_are_printed_once_in_the_apps_format(monkeypatch):
    import logging

    import huggingface_hub  # noqa: F401 (its import gives its logger a handler of its own)

    import app

    hub_log = logging.getLogger("huggingface_hub")
    monkeypatch.setattr(hub_log, "handlers", list(hub_log.handlers))  # restored after the test
    assert any(type(h) is logging.StreamHandler for h in hub_log.handlers)  # control: a line would print twice
    app.configure_logging()
    assert [h for h in hub_log.handlers if type(h) is logging.StreamHandler] == []
