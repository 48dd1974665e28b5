"""A tiny "release" of every official checkpoint the app serves, for :class:`tests.hub_server.HubServer`.

The files are real official formats at test size (written by tests/test_trained_path.py's writer: SAM and
Grounding DINO ``.pth``, a BERT directory, timm ViT and open_clip safetensors, plus our trained fusion
classifier, which has no published weights and so is handed to the app through ``SKINAPP_FUSION_CLASSIFIER``).
The manifest is the project's own with each file's pins replaced by those of the file written here and
SAM's URL pointed at the local server (Hub files keep their repo ids and revisions: ``HF_ENDPOINT`` points at
the server). The small architectures are data: :data:`MODEL_CONFIGS`, what ``SKINAPP_MODEL_CONFIGS`` names.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import urlparse

from tests.hub_server import HubState
from tests.test_trained_path import CLASS_NAMES, SMALL_VIT, _pinned_manifest, _write_checkpoints

__all__ = ["CLASS_NAMES", "MODEL_CONFIGS", "serve_release", "write_release"]


def model_configs() -> dict:
    """The small architectures, as a ``SKINAPP_MODEL_CONFIGS`` file holds them."""
    from skinapp.clip import model as clip_model
    from skinapp.concepts import detector, segmenter

    return {"sam": {"vit_b": copy.deepcopy(segmenter.SAM_CONFIGS["tiny"])},
            "groundingdino": {"full": copy.deepcopy(detector.GDINO_CONFIGS["tiny"])},
            "vit": {"full": dict(SMALL_VIT)},
            "clip": {"full": copy.deepcopy(clip_model.CLIP_CONFIGS["tiny"])}}


MODEL_CONFIGS = model_configs()


def write_release(folder: Path, endpoint: str) -> dict:
    """Write the files and ``manifest.json`` / ``model_configs.json`` under ``folder``.

    Needs the small architectures registered already (``skinapp.model_configs.register(MODEL_CONFIGS)``).
    Returns {"manifest": path, "configs": path, "fusion": path, "files": {name: path}, "manifest_data": dict}.
    """
    files = _write_checkpoints(folder / "release", folder / "runs")
    data = _pinned_manifest(files)
    for entry in data["checkpoints"]:
        for spec in entry["files"]:
            if spec.get("url"):  # SAM's URL, Grounding DINO's GitHub fallback: the same path on our server
                spec["url"] = endpoint + urlparse(spec["url"]).path
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(data, indent=1))
    configs = folder / "model_configs.json"
    configs.write_text(json.dumps(MODEL_CONFIGS))
    return {"manifest": manifest, "configs": configs, "fusion": files["fusion_classifier"], "files": files,
            "manifest_data": data}


def serve_release(state: HubState, release: dict) -> list[str]:
    """Put every downloadable file of the release on the server; return the manifest names served."""
    served = []
    for entry in release["manifest_data"]["checkpoints"]:
        location = release["files"].get(entry["name"])
        if location is None or entry.get("origin") != "official":
            continue
        for spec in entry["files"]:
            path = location / spec["filename"] if entry.get("directory") else location
            data = path.read_bytes()
            if spec.get("hub"):
                hub = spec["hub"]
                state.add_hub_file(hub["repo_id"], hub["revision"], hub["filename"], data)
            if spec.get("url"):
                state.files[urlparse(spec["url"]).path] = data
        served.append(entry["name"])
    return served


