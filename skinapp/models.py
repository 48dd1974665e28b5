"""Finding and loading every model the app serves, once: :func:`load_models` returns a :class:`ModelSet`.

Each stage is at full strength when its checkpoints resolve (see :mod:`skinapp.checkpoints`) and in its
demo form otherwise (small random models, the weight-free concept extractor); why a stage is not at full
strength is kept in ``ModelSet.reasons`` and shown in the untrained-weights banner.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError

from skinapp import checkpoints as ckpt
from skinapp.clip.convert_hf import load_hf_clip
from skinapp.clip.model import ClipBundle, build_clip
from skinapp.clip.open_clip_hub import load_open_clip_hub
from skinapp.concepts.detector import build_detector
from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.fallback import ColourConceptExtractor
from skinapp.concepts.segmenter import build_segmenter
from skinapp.fusion import build_fusion, build_global_encoder, load_fusion_checkpoint, load_fusion_encoder
from skinapp.fusion.checkpoint import needs_vit_file
from skinapp.fusion.encoders import GlobalEncoder
from skinapp.model_configs import ModelConfigError
from skinapp.provenance import WeightsInfo, untrained

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Class names of the demo-mode (untrained) fusion model: the five SCIN conditions of the paper.
DEMO_CLASS_NAMES: tuple[str, ...] = ("Eczema", "Allergic Contact Dermatitis", "Urticaria", "Insect Bite",
                                     "Psoriasis")

#: Manifest names of the checkpoints each stage needs for its full profile.
CONCEPT_CHECKPOINTS = ("groundingdino_swint_ogc", "bert_base_uncased")
GLOBAL_CHECKPOINT = "vit_b16_augreg2"
FUSION_CHECKPOINT = "fusion_classifier"
#: Explain's CLIP weights: {choice: manifest name}. Only "pretrained" is needed for full mode; the others are
#: offered when their files are there (MONET: Kim et al., Nat Med 2024; DermLIP: Yan et al., ICCV 2025).
CLIP_CHECKPOINTS = {"pretrained": "clip_vit_b16_openai", "fine-tuned": "clip_finetuned", "MONET": "monet",
                    "DermLIP": "dermlip_vit_b16"}
REQUIRED_CLIP = "pretrained"

PROFILES = ("auto", "tiny", "full")


@dataclass
class ModelSet:
    """Every loaded model, ready to serve.

    Attributes:
        extractor: concept extractor (``GroundedSamExtractor`` or ``ColourConceptExtractor``).
        global_encoder: the fusion model's ViT (``.tokens``, ``.preprocess``, ``.weights``).
        fusion: the fusion model, in eval mode on ``device``.
        class_names: its C classes.
        clips: {choice label: ClipBundle}, the CLIP models offered by Explain (the first is the default).
        device: where the analysis models run.
        reasons: {"analysis" | "clip": [why that stage is not at full strength, e.g. a missing checkpoint]}.
    """

    extractor: Any
    global_encoder: GlobalEncoder
    fusion: torch.nn.Module
    class_names: list[str]
    clips: dict[str, ClipBundle]
    device: torch.device
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.clips:
            raise ValueError("At least one CLIP model is needed.")
        self.class_names = list(self.class_names)
        self.clips = dict(self.clips)
        self.device = torch.device(self.device)
        self.reasons = {stage: list(items) for stage, items in (self.reasons or {}).items()}

    @property
    def analysis_weights(self) -> tuple[WeightsInfo, ...]:
        """Provenance of the fusion model, its ViT and the concept models, in that order."""
        concept_weights = tuple(getattr(self.extractor, "weights", ()) or ())
        return (getattr(self.fusion, "weights", untrained("fusion", "unknown")), self.global_encoder.weights,
                *concept_weights)

    @property
    def mode(self) -> str:
        """"full" when every model has trained weights, else "demo"."""
        every = (*self.analysis_weights, *(b.weights for b in self.clips.values()))
        return "full" if all(w.trained for w in every) else "demo"


def missing_reason(name: str, exc: Exception) -> str:
    """One line: which checkpoint is missing and how to get it."""
    try:
        downloadable = ckpt.get_entry(name).downloadable
    except ckpt.ManifestError:
        downloadable = False
    how = f"python -m skinapp.checkpoints download {name}" if downloadable else "train it (see the README)"
    return f"{str(exc).split(':')[0]}; get it: {how}."


def unpinned_reason(name: str) -> str | None:
    """Why an official checkpoint is refused for lack of SHA-256 pins (None when every file is pinned).

    MONET's and DermLIP's hashes are not published anywhere we could check; their manifest entries say
    ``"sha256": null`` and they load only once the user pins them (see the README, "Dermatology CLIP weights").
    """
    entry = ckpt.get_entry(name)
    if entry.origin != "official" or entry.pinned:
        return None
    unpinned = ", ".join(f.filename for f in entry.files if not f.sha256)
    return (f"{name}: refused, the manifest pins no SHA-256 for {unpinned}; check the files against the Hub's "
            f"and pin them (python -m skinapp.checkpoints verify {name} prints their digests; README: "
            "'Dermatology CLIP weights').")


def load_clip_entry(name: str, path: Path, device: torch.device) -> ClipBundle:
    """Load the CLIP checkpoint ``name`` from ``path`` in its manifest kind's format, with its licence.

    Kinds: "hf_clip" (transformers CLIPModel directory, converted: MONET), "open_clip_hub" (open_clip's
    hf-hub directory: DermLIP), anything else a single open_clip / OpenAI / fine-tuned file.
    """
    entry = ckpt.get_entry(name)
    if entry.kind == "hf_clip":
        bundle = load_hf_clip(path, device=device, label="MONET ViT-L/14 (dermatology)")
    elif entry.kind == "open_clip_hub":
        bundle = load_open_clip_hub(path, device=device, label="DermLIP ViT-B/16 (dermatology)")
    else:
        bundle = build_clip("full", checkpoint=path, device=device)
    bundle.licence = entry.licence
    return bundle


#: Seed of the random initialisation of the demo models: the same untrained outputs in every process, so a demo is
#: reproducible (they carry the untrained banner all the same).
DEMO_SEED = 0


@contextlib.contextmanager
def seeded(seed: int = DEMO_SEED) -> Iterator[None]:
    """Build random models the same way in every process, leaving the caller's torch RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class DeviceError(ValueError):
    """The requested device is not a torch device, or names CUDA on a machine without it."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: ``device`` ("cpu", "cuda", "cuda:1", ...), or CUDA when present, else the CPU.

    Raises:
        DeviceError: not a device name, or a CUDA device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"Unknown device {device!r}: use cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise DeviceError(f"Device {str(dev)!r} was asked for, but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s): use --device cpu, or leave it out.")
    return dev


#: What building the models raises for a set-up the user must fix (a missing, damaged or tampered checkpoint, an
#: explicit checkpoint path that does not hold it, a trained checkpoint that cannot be used, a bad manifest, an
#: unreadable ``SKINAPP_MODEL_CONFIGS``, a device this machine does not have): ``python app.py`` and
#: ``python -m skinapp.analyze`` say it in one log line and exit with status 2.
SETUP_ERRORS = (ckpt.CheckpointMissing, ckpt.ChecksumMismatchError, ckpt.UnsafeCheckpointError, ckpt.ManifestError,
                ckpt.TrainedCheckpointError, ModelConfigError, DeviceError)


def _load_checked(name: str, path: Path, load: Callable[[], T]) -> T:
    """``load()``, with any failure to read checkpoint ``name`` at ``path`` said as a TrainedCheckpointError."""
    try:
        return load()
    except SETUP_ERRORS:
        raise
    except (ValueError, OSError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
        why = " ".join(str(exc).split())  # one line
        raise ckpt.TrainedCheckpointError(
            f"Checkpoint {name!r} ({path}) cannot be loaded: {why}. It is damaged or not in the format skinapp "
            f"reads: copy it again from where it came from, or remove it (unset {ckpt.get_entry(name).env_var}) "
            "to start without it.") from exc


def load_models(profile: str = "auto", device: str | torch.device | None = None, sam_variant: str = "vit_b",
                checkpoints: Mapping[str, str | Path] | None = None, cache_size: int = 32) -> ModelSet:
    """Load every model once.

    Args:
        profile: "full" (official/trained checkpoints, raises CheckpointMissing when one is absent),
            "tiny" (demo: small random models and the weight-free concept extractor), or "auto"
            (each stage at full strength when its checkpoints resolve, else its demo form; the
            reasons are kept in ``ModelSet.reasons`` and shown in the banner).
        device: "cuda", "cpu", ...; None picks CUDA when present.
        sam_variant: "vit_b", "vit_l" or "vit_h" for the full segmenter.
        checkpoints: explicit paths by manifest name (e.g. {"sam_vit_b": "/models/sam.pth"}).
        cache_size: photos kept in the extractor's per-image caches.

    Raises:
        ValueError: unknown profile. CheckpointMissing: a required checkpoint is absent ("full" profile).
        ChecksumMismatchError: a checkpoint on disk differs from its pinned SHA-256 (any profile but "tiny").
        DeviceError: ``device`` is not a device this machine has (:func:`pick_device`).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be 'auto', 'tiny' or 'full'; got {profile!r}")
    dev = pick_device(device)
    paths = dict(checkpoints or {})
    reasons: dict[str, list[str]] = {"analysis": [], "clip": []}

    def find(name: str, stage: str, optional: bool = False) -> Path | None:
        if profile == "tiny":
            return None
        try:
            return ckpt.resolve(name, path=paths.get(name), download=False)
        except ckpt.CheckpointMissing as exc:
            if exc.explicit:  # a path the user gave that does not hold it: never a silent demo model
                raise ckpt.CheckpointMissing(exc.explicit, name, exc.looked_in, explicit=exc.explicit) from None
            if profile == "full" and not optional:
                raise
            reasons[stage].append(missing_reason(name, exc))
            return None

    t0 = time.perf_counter()
    # Concepts: Grounding DINO + SAM when all three checkpoints resolve, else the colour extractor.
    found = {name: find(name, "analysis") for name in (*CONCEPT_CHECKPOINTS, f"sam_{sam_variant}")}
    if all(found.values()):
        detector = build_detector("full", checkpoint=found["groundingdino_swint_ogc"],
                                  text_encoder=found["bert_base_uncased"], device=str(dev))
        segmenter = build_segmenter("full", variant=sam_variant, checkpoint=found[f"sam_{sam_variant}"],
                                    device=dev)
        extractor: Any = GroundedSamExtractor(detector, segmenter, max_concepts=30, cache_size=cache_size)
    else:
        reasons["analysis"].append("Concepts come from the weight-free colour extractor (demo mode).")
        extractor = ColourConceptExtractor(max_concepts=30)
    # Global encoder + fusion: a trained fusion checkpoint runs only with the ViT it was trained with (its own
    # fine-tuned file, the frozen ViT file whose SHA-256 it records, or the same random init).
    fusion_path = find(FUSION_CHECKPOINT, "analysis")
    fusion, meta = load_fusion_checkpoint(fusion_path) if fusion_path is not None else (None, None)
    vit_path = find(GLOBAL_CHECKPOINT, "analysis") if meta is None or needs_vit_file(meta) else None
    if fusion is not None and (vit_path is not None or not needs_vit_file(meta)):
        global_encoder = load_fusion_encoder(fusion_path, meta, vit_path)
        class_names: Sequence[str] = list(meta["class_names"])
    else:
        if fusion is not None:
            reasons["analysis"].append(f"{FUSION_CHECKPOINT} waits for the ViT it was trained with "
                                       f"({GLOBAL_CHECKPOINT}, SHA-256 {meta['global_encoder']['sha256']}).")
        reasons["analysis"].append("The diagnosis comes from an untrained demo fusion model (tiny profile).")
        with seeded():
            fusion = build_fusion("cross_attention", len(DEMO_CLASS_NAMES), "tiny")
            global_encoder = build_global_encoder("tiny")
        fusion.weights = untrained("fusion", "random init (demo, tiny profile)")
        class_names = list(DEMO_CLASS_NAMES)
    # CLIP: every trained checkpoint that resolves, on the analyzer's device; the tiny random model when
    # none does. Extra choices (fine-tuned, MONET, DermLIP) are never a requirement.
    clips: dict[str, ClipBundle] = {}
    for choice, name in CLIP_CHECKPOINTS.items():
        path = find(name, "clip", optional=(choice != REQUIRED_CLIP))
        if path is None:
            continue
        refusal = unpinned_reason(name)
        if refusal:
            reasons["clip"].append(refusal)
            continue
        bundle = _load_checked(name, path, lambda name=name, path=path: load_clip_entry(name, path, dev))
        clips[f"{choice}: {bundle.label}"] = bundle
    if not clips:
        with seeded():
            bundle = build_clip("tiny", device=dev)
        clips[f"demo: {bundle.label}"] = bundle
        reasons["clip"].append("Phrase heatmaps come from an untrained demo CLIP model (tiny profile).")
    fusion.to(dev).eval()
    global_encoder.to(dev).eval()
    models = ModelSet(extractor, global_encoder, fusion, class_names, clips, dev, reasons)
    log.info("Models loaded in %.1fs on %s (mode %s)", time.perf_counter() - t0, dev, models.mode)
    return models
