"""Build open_clip ViT CLIP models from configs-as-data, and read/write their checkpoints safely.

Profiles (configs as data in :data:`CLIP_CONFIGS`; nothing downstream assumes one of them: the explainers
read the grid, patch size, heads and width off the model):
    "full": open_clip ViT-B-16 with quick-GELU (the OpenAI weights need it): 224 px, 16 px patches
        (14x14 grid), width 768, 12 heads, embedding 512.
    "vit_l14": OpenAI's ViT-L/14 (MONET's architecture): 224 px, 14 px patches (16x16 grid), width 1024,
        16 heads, 24 layers, embedding 768.
    "tiny": the "full" classes and token grid (224 px, 16 px patches, 12 heads) at a small width and
        depth, random weights: for tests and demo mode.
    "tiny_l14": the "vit_l14" token grid and heads (224 px, 14 px patches, 16x16 grid, 16 heads) at a
        small width and depth: for tests.

Checkpoint formats read by :func:`load_clip_checkpoint`:
    * ``*.safetensors``: an open_clip state dict (e.g. the OpenAI ViT-B-16 weights in open_clip
      layout, or our fine-tuned checkpoint); a ``*.json`` sidecar, when present, holds its config.
    * ``*.pt`` / ``*.pth`` / ``*.bin``: a plain state dict read with ``weights_only=True``; OpenAI's
      own layout is recognised and converted with
      ``open_clip.model.build_model_from_openai_state_dict``. TorchScript archives are refused
      (they run code when loaded).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

from skinapp.checkpoints import load_tensors, sha256_file
from skinapp.clip.architecture import resolve_config
from skinapp.provenance import WeightsInfo, untrained

log = logging.getLogger(__name__)

#: Parameter-free switches of OpenAI's CLIP, stated so that our checkpoints' sidecars say them (see
#: :mod:`skinapp.clip.architecture`).
_OPENAI_VISION_SWITCHES = {"pool_type": "tok", "final_ln_after_pool": False}
_OPENAI_TEXT_SWITCHES = {"pool_type": "argmax", "no_causal_mask": False, "final_ln_after_pool": False}

#: open_clip CLIP configs (constructor arguments), keyed by profile.
CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "head_width": 64, "patch_size": 16,
                       **_OPENAI_VISION_SWITCHES},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12,
                     **_OPENAI_TEXT_SWITCHES},
        "quick_gelu": True,
    },
    "vit_l14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "head_width": 64, "patch_size": 14,
                       **_OPENAI_VISION_SWITCHES},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12,
                     **_OPENAI_TEXT_SWITCHES},
        "quick_gelu": True,
    },
    "tiny_l14": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 4, "patch_size": 14,
                       **_OPENAI_VISION_SWITCHES},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1,
                     **_OPENAI_TEXT_SWITCHES},
        "quick_gelu": True,
    },
    "tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 96, "head_width": 8, "patch_size": 16,
                       **_OPENAI_VISION_SWITCHES},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                     **_OPENAI_TEXT_SWITCHES},
        "quick_gelu": True,
    },
}


@dataclass
class ClipBundle:
    """A CLIP model with what is needed to use it.

    Attributes:
        model: an ``open_clip.CLIP`` in eval mode.
        tokenizer: open_clip's tokenizer: list[str] -> LongTensor [T, 77].
        preprocess: PIL image -> float tensor [3, S, S] (resize, centre crop, normalise with ``mean``/``std``).
        weights: provenance of the weights.
        config: the constructor config (a CLIP_CONFIGS entry or one read from a checkpoint).
        label: a short name for the UI, e.g. "pretrained (OpenAI)" or "fine-tuned (derm)".
        mean, std: the per-channel normalisation the weights were trained with (RGB in [0, 1]); OpenAI's
            unless the checkpoint says otherwise (MONET's preprocessor_config.json says ImageNet's).
        licence: the weights' licence as the manifest states it ("" when unknown, e.g. random weights).
    """

    model: open_clip.CLIP
    tokenizer: Any
    preprocess: Any
    weights: WeightsInfo
    config: dict[str, Any]
    label: str
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    licence: str = ""

    @property
    def image_size(self) -> int:
        return int(self.config["vision_cfg"]["image_size"])

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (the analyzer's device)."""
        return next(self.model.parameters()).device

    def whole_photo_preprocess(self) -> transforms.Compose:
        """This model's letterboxed whole-photo input (its own size, mean and std); see whole_photo_preprocess."""
        return whole_photo_preprocess(self.image_size, self.mean, self.std)


#: Padding colour of the whole-photo view: CLIP's mean colour, which normalises to zero.
LETTERBOX_FILL: tuple[int, int, int] = tuple(int(round(255 * m)) for m in OPENAI_DATASET_MEAN)


def letterbox(pixels: np.ndarray, fill: tuple[int, int, int] = LETTERBOX_FILL) -> np.ndarray:
    """Pad uint8 RGB [H, W, 3] to a square [S, S, 3] (S = max(H, W)), the photo centred, bands in ``fill``."""
    h, w = pixels.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = pixels
    return out


def whole_photo_preprocess(size: int = 224, mean: tuple[float, ...] = OPENAI_DATASET_MEAN,
                           std: tuple[float, ...] = OPENAI_DATASET_STD) -> transforms.Compose:
    """PIL image -> float tensor [3, size, size] showing the WHOLE photo (letterboxed, not centre-cropped).

    open_clip's eval transform crops the long side, so a lesion near the edge of a landscape phone photo
    would fall outside every heatmap; the app explains this letterboxed view instead. The bands are the
    model's mean colour (zero after normalising with ``mean``/``std``) and flat, so MedGrad's entropy weight
    there is zero.
    """
    fill = tuple(int(round(255 * m)) for m in mean)
    return transforms.Compose([
        transforms.Lambda(lambda im: Image.fromarray(letterbox(np.asarray(im.convert("RGB")), fill))),
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def _model_from_config(config: dict[str, Any]) -> open_clip.CLIP:
    cfg = copy.deepcopy(config)
    quick_gelu = bool(cfg.pop("quick_gelu", False))
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                          quick_gelu=quick_gelu)


def model_from_state(config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> open_clip.CLIP:
    """An open_clip ``CLIP`` built from ``config`` with ``state`` loaded strictly (the causal ``attn_mask`` buffer
    aside, which open_clip rebuilds).

    Raises:
        ValueError: ``state`` misses or adds tensors; ``what`` names the file in the message.
    """
    model = _model_from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ValueError(f"{what} does not fit its CLIP config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def make_bundle(model: open_clip.CLIP, config: dict[str, Any], weights: WeightsInfo, label: str,
                device: str | torch.device, mean: tuple[float, ...] = OPENAI_DATASET_MEAN,
                std: tuple[float, ...] = OPENAI_DATASET_STD, tokenizer: Any = None) -> ClipBundle:
    """A :class:`ClipBundle` of ``model`` moved to ``device`` in eval mode, with its own preprocessing.

    The default tokenizer is open_clip's CLIP BPE at the config's context length.
    """
    model = model.to(device).eval()
    size = int(config["vision_cfg"]["image_size"])
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    if tokenizer is None:
        context = int(config.get("text_cfg", {}).get("context_length", 77))
        tokenizer = open_clip.SimpleTokenizer(context_length=context)
    return ClipBundle(model=model, tokenizer=tokenizer, preprocess=preprocess, weights=weights,
                      config=copy.deepcopy(config), label=label, mean=mean, std=std)


_bundle = make_bundle


def _is_openai_layout(state: dict[str, torch.Tensor]) -> bool:
    """OpenAI's state dicts carry scalar entries that open_clip's own layout does not."""
    return "input_resolution" in state and "context_length" in state and "vocab_size" in state


def build_clip(profile: str = "tiny", checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
               seed: int = 0) -> ClipBundle:
    """Build a CLIP model.

    Args:
        profile: "full" (ViT-B-16, quick-GELU) or "tiny" (small width/depth, same token grid).
        checkpoint: weights to load (see module docstring); None gives random weights (untrained).
        device: torch device.
        seed: seed for the random initialisation (reproducible tiny models).
    """
    if checkpoint is not None:
        return load_clip_checkpoint(checkpoint, device=device, profile=profile)
    if profile not in CLIP_CONFIGS:
        raise ValueError(f"Unknown CLIP profile {profile!r}; choose from {sorted(CLIP_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_from_config(CLIP_CONFIGS[profile])
    return _bundle(model, CLIP_CONFIGS[profile], untrained(f"clip_{profile}"), f"untrained ({profile})", device)


def load_clip_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                         profile: str = "full") -> ClipBundle:
    """Load CLIP weights from a safetensors / state-dict file.

    The architecture comes from the JSON sidecar's ``config`` (completed from the weights' shapes by
    :func:`skinapp.clip.architecture.resolve_config`), or, without a sidecar, from ``profile``'s config
    checked against the weights; OpenAI's own layout is read as OpenAI's ViT-B/16 (QuickGELU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the config leaves out what the weights cannot tell (e.g. ``quick_gelu``), contradicts
            them, the weights do not fit, or the SHA-256 differs from the sidecar's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    state = load_tensors(path, keep_non_tensors=True)  # OpenAI files hold scalar entries
    sidecar = path.with_suffix(".json")
    meta: dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    notes: list[str] = []
    if _is_openai_layout(state):
        model = open_clip.model.build_model_from_openai_state_dict(state, quick_gelu=True)
        config = copy.deepcopy(CLIP_CONFIGS["full"])
        label = "pretrained (OpenAI)"
    else:
        if meta.get("config"):
            config, notes = resolve_config(meta["config"], state, path.name)
        else:
            config, _ = resolve_config(CLIP_CONFIGS[profile], state, f"{path.name} (read as profile {profile!r})")
            log.info("%s has no JSON config: read with the %r profile's architecture", path.name, profile)
        for note in notes:
            (log.warning if "not stated" in note else log.info)("%s: %s", path.name, note)
        model = model_from_state(config, state, path.name)
        label = meta.get("label", "fine-tuned" if meta else "pretrained")
    if "sha256" in meta and meta["sha256"] != sha256_file(path):
        raise ValueError(f"{path.name}: SHA-256 does not match its sidecar JSON; the file is damaged")
    # A fine-tuned checkpoint whose sidecar says it started from random weights (no base checkpoint) is
    # only as good as its training data allows: call it trained only when it started from real weights.
    from_scratch = "base_checkpoint" in meta and not meta["base_checkpoint"]
    source = f"{path} (fine-tuned from random init)" if from_scratch else str(path)
    defaulted = [n.split(" ")[0] for n in notes if "not stated" in n]
    if defaulted:
        source += f"; assumed open_clip defaults {', '.join(defaulted)}"
    weights = WeightsInfo(name="clip", trained=not from_scratch, source=source)
    log.info("Loaded CLIP weights from %s (%s)", path, label)
    return _bundle(model, config, weights, label, device)


def save_clip_checkpoint(model: open_clip.CLIP, path: str | Path, config: dict[str, Any],
                         meta: dict[str, Any] | None = None) -> Path:
    """Save a CLIP model as ``path`` (safetensors) plus a JSON sidecar with its config and SHA-256.

    The sidecar holds ``{"config": ..., "sha256": ..., "label": ..., **meta}``.
    """
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    sidecar = {"config": config, "label": "fine-tuned", **(meta or {}), "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path
