"""The service behind the app: load every model once, then analyse and explain photos on request.

:class:`Analyzer` is what the UI (and the tests, and any script) calls::

    analyzer = Analyzer.create(profile="auto")        # full models where checkpoints resolve, else demo
    result = analyzer.analyze("photo.jpg")              # concepts, diagnosis, CAM, decisive concept
    expl = analyzer.explain(result.image_key, ["irregular streaks", "blue-whitish veil"])

Per-image work (the concept pass, the ViT tokens, the CLIP image pass of each CLIP model) is kept
in a bounded LRU keyed by ``LoadedImage.key`` and reused by Explain and Review: a photo's image
encoders run once, however many prompts, phrases or reviews follow. Nothing per-request lives on
the Analyzer itself, so concurrent users never share a "current image"; model calls that are not
re-entrant are serialised by per-stage locks.

Every result carries the provenance of the weights behind it and, whenever any of them is
untrained, :data:`~skinapp.provenance.UNTRAINED_WARNING` as its banner.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from skinapp import checkpoints as ckpt
from skinapp.cache import LRUCache
from skinapp.clip.model import ClipBundle, build_clip, letterbox, whole_photo_preprocess
from skinapp.concepts.detector import build_detector
from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.fallback import ColourConceptExtractor
from skinapp.concepts.prompts import check_threshold, normalise_prompts
from skinapp.concepts.segmenter import build_segmenter
from skinapp.concepts.types import DEFAULT_PROMPTS, Concepts
from skinapp.explain import ImagePass, encode_image_for_explain, explain_from_pass
from skinapp.fusion import FusionPrediction, build_fusion, build_global_encoder, load_fusion_checkpoint, predict
from skinapp.fusion.encoders import GlobalEncoder
from skinapp.image import InvalidImageError, LoadedImage, load_image
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo, untrained

log = logging.getLogger(__name__)

#: Class names of the demo-mode (untrained) fusion model: the five SCIN conditions of the paper.
DEMO_CLASS_NAMES: tuple[str, ...] = ("Eczema", "Allergic Contact Dermatitis", "Urticaria", "Insect Bite",
                                     "Psoriasis")

#: Explainer methods shown side by side, in display order (names as skinapp.explain knows them).
EXPLAIN_METHODS: tuple[str, ...] = ("gradcam", "grad_eclip", "medgrad_eclip")
METHOD_TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "grad_eclip": "Grad E-CLIP", "medgrad_eclip": "MedGrad E-CLIP"}

#: Suggested diagnostic phrases for the Explain screen, by source.
SUGGESTED_PHRASES: dict[str, tuple[str, ...]] = {
    "7-point checklist": ("atypical pigment network", "blue-whitish veil", "atypical vascular pattern",
                          "irregular streaks", "irregular pigmentation", "irregular dots and globules",
                          "regression structures"),
    "PH2": ("asymmetric lesion", "typical pigment network", "dots and globules", "streaks", "regression areas",
            "blue-whitish veil", "dark brown and black colours"),
    "NTD": ("ulcer with undermined edges", "raspberry-like papilloma", "burrows and excoriated papules",
            "hypopigmented anaesthetic patch", "swelling with draining sinuses", "plaque with raised borders"),
}

#: Side of the Explain images (the CLIP input view, enlarged for display).
EXPLAIN_DISPLAY_SIZE = 320

#: Limits on the Explain input.
MAX_PHRASES = 12
MAX_PHRASE_CHARS = 200

#: Analyses (prompt / threshold sets) kept per cached photo.
MAX_ANALYSES_PER_PHOTO = 8

#: Manifest names of the checkpoints each stage needs for its full profile.
CONCEPT_CHECKPOINTS = ("groundingdino_swint_ogc", "bert_base_uncased")
GLOBAL_CHECKPOINT = "vit_b16_augreg2"
FUSION_CHECKPOINT = "fusion_classifier"
CLIP_CHECKPOINTS = {"pretrained": "clip_vit_b16_openai", "fine-tuned": "clip_finetuned"}

ProgressFn = Callable[..., Any]


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------------------------- results
@dataclass
class AnalysisResult:
    """Everything the Analyse screen shows for one photo.

    Attributes:
        ref: the analysis' cache reference, "<image_key>:<params digest>" (what the UI keeps in gr.State).
        image: the normalised photo.
        prompts, box_threshold, text_threshold: the parameters used.
        concepts: masks bool [n, H, W], boxes [n, 4], phrases, scores, features [n, 256].
        prediction: the fusion model's class probabilities, CAM [R, C] and top concept.
        annotations: (mask float [H, W] in [0, 1], "#i phrase score") per concept, for gr.AnnotatedImage.
        cam_rows: R display labels of the CAM rows ("#i phrase", or ViT patch names).
        decisive_index: index into ``concepts`` of the decisive concept (None when no concept was used).
        decisive_row: the CAM row of the decisive concept (None when no concept was used).
        decisive_image: uint8 [H, W, 3], the photo with the decisive concept's mask and box drawn.
        decisive_text: one-line explanation of the decisive concept.
        banner: UNTRAINED_WARNING plus details when any model has untrained weights, else "".
        weights: provenance of every model behind the result.
        timings: seconds per stage ("load", "concepts", "global", "fusion", "render", "total").
        notes: human-readable notes (image conversions, fallbacks).
    """

    ref: str
    image: LoadedImage
    prompts: tuple[str, ...]
    box_threshold: float
    text_threshold: float
    concepts: Concepts
    prediction: FusionPrediction
    annotations: list[tuple[np.ndarray, str]]
    cam_rows: list[str]
    decisive_index: int | None
    decisive_row: int | None
    decisive_image: np.ndarray
    decisive_text: str
    banner: str
    weights: tuple[WeightsInfo, ...]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def image_key(self) -> str:
        return self.image.key

    @property
    def trained(self) -> bool:
        return not self.banner

    def class_probabilities(self) -> dict[str, float]:
        """{class name: probability}, for gr.Label."""
        return {n: float(p) for n, p in zip(self.prediction.class_names, self.prediction.probs)}


@dataclass
class ExplainResult:
    """Phrase heatmaps for one photo: one row per phrase, one column per method.

    Attributes:
        image_key: the photo's key.
        phrases: T cleaned phrases.
        similarities: float [T] CLIP cosine similarity of the photo and each phrase.
        methods: the explainer methods, in column order.
        overlays: T rows of uint8 [H, W, 3] images: the photo, then one heatmap overlay per method.
        maps: {method: float [T, 14, 14]} grid maps, min-max normalised to [0, 1] per phrase.
        clip_label: which CLIP weights were used (e.g. "pretrained (OpenAI)").
        banner: UNTRAINED_WARNING plus details when the CLIP weights are untrained, else "".
        weights: provenance of the CLIP weights.
        timings: seconds per stage ("image_pass", "explain", "render", "total"); image_pass is 0 when cached.
        truncated: per phrase, True when CLIP's text encoder saw only its first ``context_length`` tokens.
        context_length: the CLIP text context in tokens (77 for OpenAI CLIP).
    """

    image_key: str
    phrases: list[str]
    similarities: np.ndarray
    methods: tuple[str, ...]
    overlays: list[list[np.ndarray]]
    maps: dict[str, np.ndarray]
    clip_label: str
    banner: str
    weights: tuple[WeightsInfo, ...]
    timings: dict[str, float] = field(default_factory=dict)
    truncated: list[bool] = field(default_factory=list)
    context_length: int = 77

    def truncation_note(self, t: int) -> str:
        """"" or "(cut to 77 tokens)" for phrase ``t``."""
        return f"(cut to {self.context_length} tokens)" if t < len(self.truncated) and self.truncated[t] else ""

    def gallery(self) -> list[tuple[np.ndarray, str]]:
        """(image, caption) row by row: original, then each method; captions: method, CLIP similarity, phrase."""
        items = []
        for t, phrase in enumerate(self.phrases):
            s = float(self.similarities[t])
            titles = ["photo", *(METHOD_TITLES.get(m, m) for m in self.methods)]
            cut = self.truncation_note(t)
            for image, title in zip(self.overlays[t], titles):
                items.append((image, f"{title} \u00b7 sim {s:.3f} \u00b7 {phrase}" + (f" {cut}" if cut else "")))
        return items


# ------------------------------------------------------------------------------------- per-image state
@dataclass
class ImageState:
    """What is cached for one photo.

    ``lock`` serialises the first computation of each cached part; ``analysis_lock`` makes concurrent
    requests for the same photo and parameters compute the analysis once. ``latest`` is the ref of
    the photo's most recent analysis (what the Review screen shows).
    """

    image: LoadedImage
    lock: threading.Lock = field(default_factory=threading.Lock)
    global_tokens: torch.Tensor | None = None
    clip_passes: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, AnalysisResult] = field(default_factory=dict)
    latest: str | None = None
    analysis_lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------------------------------- input checks
def parse_phrases(phrases: str | Iterable[str]) -> list[str]:
    """Clean Explain phrases: one per line (or a list), stripped, blanks and repeats dropped.

    Raises:
        ValueError: no phrase, too many, too long, or a phrase without any letter.
    """
    items = phrases.splitlines() if isinstance(phrases, str) else list(phrases or [])
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"Phrases must be text; got {type(item).__name__}.")
        phrase = " ".join(item.split())
        if not phrase:
            continue
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ValueError(f"A phrase is too long ({len(phrase)} characters; limit {MAX_PHRASE_CHARS}).")
        if not any(ch.isalpha() for ch in phrase):
            raise ValueError(f"'{phrase}' is not a phrase: use words, e.g. 'irregular streaks'.")
        seen.setdefault(phrase, None)
    if not seen:
        raise ValueError("Type at least one phrase (one per line), e.g. 'blue-whitish veil'.")
    if len(seen) > MAX_PHRASES:
        raise ValueError(f"Too many phrases ({len(seen)}); at most {MAX_PHRASES} at once.")
    return list(seen)


def _missing_reason(name: str, exc: Exception) -> str:
    """One line: which checkpoint is missing and how to get it."""
    try:
        downloadable = ckpt.get_entry(name).downloadable
    except ckpt.ManifestError:
        downloadable = False
    how = f"python -m skinapp.checkpoints download {name}" if downloadable else "train it (see the README)"
    return f"{str(exc).split(':')[0]}; get it: {how}."


def _is_key(text: str) -> bool:
    """True for a LoadedImage.key (64 lower-case hex digits)."""
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def _params_digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- rendering
_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)], np.uint8)


def clip_view(pixels: np.ndarray, display_size: int) -> np.ndarray:
    """The whole photo as the explainers see it (letterboxed to a square), at ``display_size``.

    Returns uint8 [display_size, display_size, 3], aligned with the explainers' heatmaps.
    """
    square = letterbox(np.ascontiguousarray(pixels))
    return cv2.resize(square, (display_size, display_size), interpolation=cv2.INTER_AREA)


def stamp_banner(image: np.ndarray, text: str = UNTRAINED_WARNING) -> np.ndarray:
    """A copy of ``image`` (uint8 [H, W, 3]) with a red strip and ``text`` across its top."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    strip = max(14, h // 14)
    out[:strip] = (200, 0, 0)
    text = text.replace("\u2014", "-")
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
    scale = max(0.3, min(0.92 * w / tw, 0.6 * strip / th))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, text, (max(2, (w - tw) // 2), (strip + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_concept(image: np.ndarray, mask: np.ndarray, box: Sequence[float], label: str,
                 colour: Sequence[int] = (255, 40, 40)) -> np.ndarray:
    """The photo with one concept's mask tinted, its outline and box drawn, and its label."""
    out = image.astype(np.float32)
    tint = np.array(colour, np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * tint
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 2)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), 2)
    cv2.putText(out, label, (x0 + 2, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def banner_text(weights: Iterable[WeightsInfo], reasons: Sequence[str] = ()) -> str:
    """"" when every model is trained; else the warning, the untrained models, and why."""
    weights = tuple(weights)
    bad = [w for w in weights if not w.trained]
    if not bad:
        return ""
    lines = [UNTRAINED_WARNING, "Untrained: " + ", ".join(w.describe() for w in bad) + "."]
    lines += list(reasons)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- analyzer
class Analyzer:
    """The loaded models and the per-image cache. Build it with :meth:`create`.

    Args:
        extractor: concept extractor (``GroundedSamExtractor`` or ``ColourConceptExtractor``).
        global_encoder: the fusion model's ViT (``.tokens``, ``.preprocess``, ``.weights``).
        fusion: the fusion model; ``class_names`` its C classes.
        clips: {choice label: ClipBundle}, the CLIP models offered by Explain (first one is the default).
        device: where the models run.
        mode: "full" when every model has trained weights, else "demo".
        reasons: {"analysis" | "clip": [why that stage is not at full strength, e.g. a missing checkpoint]}.
        cache_size: photos kept in the per-image LRU.
    """

    def __init__(self, extractor: Any, global_encoder: GlobalEncoder, fusion: torch.nn.Module,
                 class_names: Sequence[str], clips: Mapping[str, ClipBundle], device: torch.device,
                 reasons: Mapping[str, Sequence[str]] | None = None, cache_size: int = 32,
                 default_prompts: Sequence[str] = DEFAULT_PROMPTS, box_threshold: float = 0.3,
                 text_threshold: float = 0.25) -> None:
        if not clips:
            raise ValueError("At least one CLIP model is needed.")
        self.extractor = extractor
        self.global_encoder = global_encoder
        self.fusion = fusion
        self.class_names = list(class_names)
        self.clips = dict(clips)
        self.device = torch.device(device)
        self.reasons = {stage: list(items) for stage, items in (reasons or {}).items()}
        self.default_prompts = tuple(default_prompts)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.states: LRUCache[ImageState] = LRUCache(cache_size)
        # Model calls: one lock per stage (the SAM/DINO stage keeps state while it runs).
        self._concept_lock = threading.Lock()
        self._global_lock = threading.Lock()
        self._fusion_lock = threading.Lock()
        self._clip_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, profile: str = "auto", device: str | torch.device | None = None, sam_variant: str = "vit_b",
               checkpoints: Mapping[str, str | Path] | None = None, warmup: bool = True,
               cache_size: int = 32) -> Analyzer:
        """Load every model once.

        Args:
            profile: "full" (official/trained checkpoints, raises CheckpointMissing when one is absent),
                "tiny" (demo: small random models and the weight-free concept extractor), or "auto"
                (each stage at full strength when its checkpoints resolve, else its demo form; the
                reasons are kept in ``.reasons`` and shown in the banner).
            device: "cuda", "cpu", ...; None picks CUDA when present.
            sam_variant: "vit_b", "vit_l" or "vit_h" for the full segmenter.
            checkpoints: explicit paths by manifest name (e.g. {"sam_vit_b": "/models/sam.pth"}).
            warmup: run one small synthetic photo through every stage after loading.
        """
        if profile not in ("auto", "tiny", "full"):
            raise ValueError(f"profile must be 'auto', 'tiny' or 'full'; got {profile!r}")
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                            else "cpu")
        paths = dict(checkpoints or {})
        reasons: dict[str, list[str]] = {"analysis": [], "clip": []}

        def find(name: str, stage: str, optional: bool = False) -> Path | None:
            if profile == "tiny":
                return None
            try:
                return ckpt.resolve(name, path=paths.get(name), download=False)
            except ckpt.CheckpointMissing as exc:
                if profile == "full" and not optional:
                    raise
                reasons[stage].append(_missing_reason(name, exc))
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
        # Global encoder + fusion: a trained fusion checkpoint decides the encoder profile.
        fusion_path = find(FUSION_CHECKPOINT, "analysis")
        vit_path = find(GLOBAL_CHECKPOINT, "analysis")
        if fusion_path is not None and vit_path is not None:
            fusion, meta = load_fusion_checkpoint(fusion_path)
            class_names = list(meta["class_names"])
            vit_profile = "full" if int(fusion.config["global_dim"]) == 768 else "tiny"
            global_encoder = build_global_encoder(vit_profile, checkpoint=vit_path if vit_profile == "full" else None)
        else:
            reasons["analysis"].append("The diagnosis comes from an untrained demo fusion model (tiny profile).")
            fusion = build_fusion("cross_attention", len(DEMO_CLASS_NAMES), "tiny")
            fusion.weights = untrained("fusion", "random init (demo, tiny profile)")
            class_names = list(DEMO_CLASS_NAMES)
            global_encoder = build_global_encoder("tiny")
        # CLIP: every trained checkpoint that resolves; the tiny random model when none does. It stays on the
        # CPU: skinapp.explain runs the last block on CPU weights (one ViT-B/16 image pass is ~0.5 s there).
        clips: dict[str, ClipBundle] = {}
        for choice, name in CLIP_CHECKPOINTS.items():
            # The fine-tuned CLIP is an extra choice, never a requirement.
            path = find(name, "clip", optional=(choice == "fine-tuned"))
            if path is not None:
                bundle = build_clip("full", checkpoint=path, device="cpu")
                clips[f"{choice}: {bundle.label}"] = bundle
        if not clips:
            bundle = build_clip("tiny", device="cpu")
            clips[f"demo: {bundle.label}"] = bundle
            reasons["clip"].append("Phrase heatmaps come from an untrained demo CLIP model (tiny profile).")
        fusion.to(dev).eval()
        global_encoder.to(dev).eval()
        analyzer = cls(extractor, global_encoder, fusion, class_names, clips, dev, reasons, cache_size)
        log.info("Models loaded in %.1fs on %s; %s", time.perf_counter() - t0, dev, analyzer.describe())
        if warmup:
            analyzer.warm_up()
        return analyzer

    def warm_up(self) -> float:
        """Run one small synthetic photo through every stage (first-call costs), then forget it."""
        from skinapp.synthetic import make_skin_photo

        t0 = time.perf_counter()
        photo = make_skin_photo(seed=0, size=(256, 256))
        result = self.analyze(photo.pixels, prompts=("lesion", "arm"))
        self.explain(result.image_key, ["lesion"])
        self.states.clear()
        if hasattr(self.extractor, "clear"):
            self.extractor.clear()
        elapsed = time.perf_counter() - t0
        log.info("Warm-up took %.1fs", elapsed)
        return elapsed

    # -- provenance ---------------------------------------------------------------------------
    @property
    def analysis_weights(self) -> tuple[WeightsInfo, ...]:
        concept_weights = tuple(getattr(self.extractor, "weights", ()) or ())
        return (getattr(self.fusion, "weights", untrained("fusion", "unknown")), self.global_encoder.weights,
                *concept_weights)

    @property
    def mode(self) -> str:
        every = (*self.analysis_weights, *(b.weights for b in self.clips.values()))
        return "full" if all(w.trained for w in every) else "demo"

    def describe(self) -> str:
        """Which weights are in use, one model per line."""
        lines = [f"mode: {self.mode}, device: {self.device}"]
        lines += [w.describe() for w in self.analysis_weights]
        lines += [f"CLIP [{choice}]: {b.weights.describe()}" for choice, b in self.clips.items()]
        return "\n".join(lines)

    @property
    def clip_choices(self) -> list[str]:
        return list(self.clips)

    # -- per-image state ----------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def state_for(self, image_source: Any) -> ImageState:
        """The cached state of a photo: from its key (or an analysis ref), or from anything load_image reads."""
        if isinstance(image_source, str) and _is_key(image_source.split(":")[0]):
            cached = self.states.get(image_source.split(":")[0])
            if cached is None:
                raise ValueError("This photo is no longer in the app's memory; upload it again.")
            return cached
        image = load_image(image_source)
        return self.states.get_or_compute(image.key, lambda: ImageState(image))

    def analysis(self, ref: str) -> AnalysisResult:
        """A cached analysis by its ``ref``. Raises ValueError when it has been evicted."""
        key = ref.split(":")[0] if isinstance(ref, str) else ""
        state = self.states.get(key) if key else None
        if state is None or ref not in state.analyses:
            raise ValueError("This analysis is no longer in the app's memory; analyse the photo again.")
        return state.analyses[ref]

    def latest_analysis(self, image_source: Any) -> AnalysisResult | None:
        """The most recent analysis of a cached photo (by key, ref, or anything load_image reads), or None."""
        try:
            state = self.state_for(image_source)
        except ValueError:
            return None
        return state.analyses.get(state.latest) if state.latest else None

    def analyses_of(self, key: str) -> list[AnalysisResult]:
        """The cached analyses of the photo with this key, most recent first ([] when it is not cached).

        Looks the key up without touching the photo's place in the LRU of anything else.
        """
        state = self.states.get(key) if isinstance(key, str) and _is_key(key) else None
        if state is None:
            return []
        results = list(state.analyses.values())[::-1]
        if state.latest in state.analyses:
            results.sort(key=lambda r: r.ref != state.latest)
        return results

    def _global_tokens(self, state: ImageState) -> torch.Tensor:
        with state.lock:
            if state.global_tokens is None:
                batch = self.global_encoder.preprocess(state.image).to(self.device)
                with self._global_lock, torch.no_grad(), self._autocast():
                    state.global_tokens = self.global_encoder.tokens(batch)[0].float()
            return state.global_tokens

    @staticmethod
    def _explain_preprocess(bundle: ClipBundle):
        """The whole-photo (letterboxed) CLIP input, so no lesion falls outside the heatmaps."""
        return whole_photo_preprocess(bundle.image_size)

    def _clip_pass(self, state: ImageState, choice: str) -> ImagePass:
        with state.lock:
            if choice not in state.clip_passes:
                bundle = self.clips[choice]
                with self._clip_lock:
                    state.clip_passes[choice] = encode_image_for_explain(
                        bundle.model, state.image, preprocess=self._explain_preprocess(bundle),
                        weights=bundle.weights)
            return state.clip_passes[choice]

    # -- analyse ------------------------------------------------------------------------------
    def analyze(self, image_source: Any, prompts: str | Iterable[str] | None = None,
                box_threshold: float | None = None, text_threshold: float | None = None,
                progress: ProgressFn | None = None) -> AnalysisResult:
        """Concepts, diagnosis, CAM and decisive concept of one photo (cached per photo and parameters).

        Raises:
            InvalidImageError / ValueError: unusable photo, no prompt, thresholds outside [0, 1].
        """
        progress = progress or _no_progress
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        progress(0.0, desc="Reading the photo")
        if image_source is None:
            raise InvalidImageError("Upload a photo first.")
        state = self.state_for(image_source)
        image = state.image
        timings["load"] = time.perf_counter() - t0
        phrases = normalise_prompts(prompts if prompts not in (None, "") else self.default_prompts)
        box_t = check_threshold("Box threshold", self.box_threshold if box_threshold is None else box_threshold)
        text_t = check_threshold("Text threshold", self.text_threshold if text_threshold is None else text_threshold)
        ref = f"{image.key}:{_params_digest(phrases, box_t, text_t)}"
        with state.analysis_lock:  # concurrent requests for the same photo: the second one waits and reuses
            cached = state.analyses.get(ref)
            if cached is not None:
                state.latest = ref
                progress(1.0, desc="Done (cached)")
                return cached
            result = self._analyze_uncached(state, ref, phrases, box_t, text_t, progress, timings, t0)
            state.analyses[ref] = result
            state.latest = ref
            while len(state.analyses) > MAX_ANALYSES_PER_PHOTO:  # oldest parameter sets first
                state.analyses.pop(next(iter(state.analyses)))
        progress(1.0, desc="Done")
        log.info("Analysed %s: %d concepts, %s (%.2fs)", image.key[:12], len(result.concepts),
                 result.prediction.predicted, result.timings["total"])
        return result

    def _analyze_uncached(self, state: ImageState, ref: str, phrases: tuple[str, ...], box_t: float, text_t: float,
                          progress: ProgressFn, timings: dict[str, float], t0: float) -> AnalysisResult:
        image = state.image
        t = time.perf_counter()
        progress(0.1, desc="Finding concepts (detector + segmenter)")
        with self._concept_lock, self._autocast():
            concepts = self.extractor.extract(image, phrases, box_threshold=box_t, text_threshold=text_t)
        timings["concepts"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.6, desc="Global image features (ViT)")
        tokens = self._global_tokens(state)
        timings["global"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.8, desc="Fusion diagnosis")
        with self._fusion_lock, torch.no_grad(), self._autocast():
            prediction = predict(self.fusion, tokens, concepts, self.class_names,
                                 weights=(self.global_encoder.weights,))
        timings["fusion"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.9, desc="Drawing")
        weights = tuple(prediction.weights)
        banner = banner_text(weights, self.reasons.get("analysis", []))
        annotations = [(concepts.masks[i].astype(np.float32), f"#{i} {concepts.phrases[i]} {concepts.scores[i]:.2f}")
                       for i in range(len(concepts))]
        cam_concepts = prediction.cam_concepts
        cam_rows = [f"#{i} {concepts.phrases[i]}" if i is not None else label
                    for i, label in zip(cam_concepts, prediction.cam_rows)]
        decisive_index = prediction.top_concept
        decisive_row = cam_concepts.index(decisive_index) if decisive_index in cam_concepts else None
        if decisive_index is not None:
            i = decisive_index
            cam_score = (float(prediction.cam[decisive_row, prediction.predicted_index]) if decisive_row is not None
                         else float("nan"))
            decisive_text = (f"Decisive concept for '{prediction.predicted}': #{i} '{concepts.phrases[i]}' "
                             f"(detector score {concepts.scores[i]:.2f}, CAM score {cam_score:.3f}).")
            decisive = draw_concept(image.pixels, concepts.masks[i], concepts.boxes[i],
                                    f"{concepts.phrases[i]} {concepts.scores[i]:.2f}")
        else:
            decisive_text = "No concept was found: the diagnosis rests on the whole photo."
            decisive = image.pixels.copy()
        if banner:
            decisive = stamp_banner(decisive)
            decisive_text = f"{UNTRAINED_WARNING}. {decisive_text}"
        timings["render"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        result = AnalysisResult(
            ref=ref, image=image, prompts=phrases, box_threshold=box_t, text_threshold=text_t, concepts=concepts,
            prediction=prediction, annotations=annotations, cam_rows=cam_rows, decisive_index=decisive_index,
            decisive_row=decisive_row,
            decisive_image=decisive, decisive_text=decisive_text, banner=banner, weights=weights,
            timings=timings, notes=[*image.notes, *(n for n in prediction.notes if n != UNTRAINED_WARNING)])
        return result

    # -- explain ------------------------------------------------------------------------------
    def explain(self, image_source: Any, phrases: str | Iterable[str], clip_choice: str | None = None,
                methods: Sequence[str] = EXPLAIN_METHODS, progress: ProgressFn | None = None) -> ExplainResult:
        """Heatmaps of every phrase by every method, from ONE cached CLIP image pass per photo and model.

        Args:
            image_source: a photo key / analysis ref of a cached photo, or anything load_image reads.
            phrases: one per line (str) or a list.
            clip_choice: a key of ``clips`` (None: the first).
        """
        progress = progress or _no_progress
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        cleaned = parse_phrases(phrases)
        choice = clip_choice or self.clip_choices[0]
        if choice not in self.clips:
            raise ValueError(f"Unknown CLIP weights {choice!r}; choose one of {self.clip_choices}.")
        if image_source is None:
            raise InvalidImageError("Upload and analyse a photo first.")
        state = self.state_for(image_source)
        bundle = self.clips[choice]
        t = time.perf_counter()
        progress(0.1, desc="CLIP image pass (once per photo)")
        fresh = choice not in state.clip_passes
        image_pass = self._clip_pass(state, choice)
        timings["image_pass"] = time.perf_counter() - t if fresh else 0.0

        t = time.perf_counter()
        progress(0.4, desc=f"Explaining {len(cleaned)} phrase(s)")
        with self._clip_lock:
            explanation = explain_from_pass(bundle.model, image_pass, cleaned, methods=tuple(methods),
                                            tokenizer=bundle.tokenizer)
        timings["explain"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.8, desc="Drawing heatmaps")
        banner = banner_text((bundle.weights,), self.reasons.get("clip", []))
        # Heatmaps cover the whole photo, letterboxed to CLIP's square input: show that view, larger.
        view = clip_view(state.image.pixels, EXPLAIN_DISPLAY_SIZE)
        rows = []
        for ti in range(len(cleaned)):
            row = [view, *(explanation.overlay(method, ti, view) for method in methods)]
            rows.append([stamp_banner(im) for im in row] if banner else row)
        maps = {m: explanation.normalised(m).numpy() for m in methods}
        timings["render"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress(1.0, desc="Done")
        return ExplainResult(image_key=state.image.key, phrases=cleaned,
                             similarities=np.asarray(explanation.similarities, np.float32).reshape(-1),
                             methods=tuple(methods), overlays=rows, maps=maps, clip_label=choice, banner=banner,
                             weights=(bundle.weights,), timings=timings,
                             truncated=list(explanation.truncated) or [False] * len(cleaned),
                             context_length=int(getattr(bundle.tokenizer, "context_length", None) or 77))
