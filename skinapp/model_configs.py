"""Architecture configs as data: ``SKINAPP_MODEL_CONFIGS`` names a JSON file that adds or replaces entries of
the model registries before anything is built (as open_clip's ``add_model_config`` does for its configs).

Format (every section optional; each value is a whole config entry, the same dict the registry holds)::

    {"sam": {"vit_b": {...}},            # skinapp.concepts.segmenter.SAM_CONFIGS
     "groundingdino": {"full": {...}},   # skinapp.concepts.detector.GDINO_CONFIGS
     "vit": {"full": {...}},             # skinapp.fusion.encoders.VIT_PROFILES
     "clip": {"full": {...}}}            # skinapp.clip.model.CLIP_CONFIGS

Used to run a checkpoint of another size through the same builders (the tests run the whole app on tiny
official-format checkpoints this way). A checkpoint that does not fit its config is refused by the loader.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "SKINAPP_MODEL_CONFIGS"


class ModelConfigError(ValueError):
    """The architecture config file is unreadable or malformed."""


def _registries() -> dict[str, dict[str, Any]]:
    from skinapp.clip import model as clip_model
    from skinapp.concepts import detector, segmenter
    from skinapp.fusion import encoders

    return {"sam": segmenter.SAM_CONFIGS, "groundingdino": detector.GDINO_CONFIGS, "vit": encoders.VIT_PROFILES,
            "clip": clip_model.CLIP_CONFIGS}


def register(overrides: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Add or replace registry entries; return their names ("sam.vit_b", ...).

    Raises:
        ModelConfigError: an unknown section, or an entry that is not a JSON object.
    """
    registries = _registries()
    changed = []
    for section, entries in overrides.items():
        if section not in registries:
            raise ModelConfigError(f"{ENV_VAR}: unknown section {section!r}; known: {', '.join(registries)}")
        if not isinstance(entries, Mapping):
            raise ModelConfigError(f"{ENV_VAR}: section {section!r} must map names to configs")
        for name, config in entries.items():
            if not isinstance(config, Mapping):
                raise ModelConfigError(f"{ENV_VAR}: {section}.{name} must be an object")
            registries[section][name] = copy.deepcopy(dict(config))
            changed.append(f"{section}.{name}")
    return changed


def apply_from_env() -> list[str]:
    """Apply the file named by ``SKINAPP_MODEL_CONFIGS`` (nothing when unset); return the entries changed.

    Raises:
        ModelConfigError: the file cannot be read, is not JSON, or has an unknown section.
    """
    path = os.environ.get(ENV_VAR)
    if not path:
        return []
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelConfigError(f"{ENV_VAR}={path}: {err}") from err
    changed = register(data)
    log.info("Architecture configs from %s: %s", ENV_VAR, ", ".join(changed) or "none")
    return changed
