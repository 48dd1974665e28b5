"""The service behind the app: load every model once, then analyse and explain photos on request.

:class:`Analyzer` is what the UI (and the tests, and any script) calls::

    analyzer = Analyzer.create(profile="auto")        # full models where checkpoints resolve, else demo
    result = analyzer.analyze("photo.jpg")              # concepts, diagnosis, CAM, decisive concept
    expl = analyzer.explain(result.image_key, ["irregular streaks", "blue-whitish veil"])

Models are found and loaded by :mod:`skinapp.models`; what the screens show is in :mod:`skinapp.results`,
drawn by :mod:`skinapp.drawing`. Per-image work (the concept pass, the ViT tokens, the CLIP image pass of
each CLIP model) is kept in a bounded LRU keyed by ``LoadedImage.key`` and reused by Explain and Review: a
photo's image encoders run once, however many prompts, phrases or reviews follow. Nothing per-request lives
on the Analyzer itself, so concurrent users never share a "current image"; model calls that are not
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinapp.cache import LRUCache
from skinapp.clip.model import ClipBundle
from skinapp.concept_scores import DEFAULT_CONCEPTS, ConceptScores, parse_concepts, score_concepts
from skinapp.concepts.prompts import check_threshold, normalise_prompts
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.drawing import clip_view, stamp_banner
from skinapp.explain import ImagePass, encode_image_for_explain, explain_from_pass
from skinapp.fusion import predict
from skinapp.image import InvalidImageError, load_image
from skinapp.models import ModelSet, load_models
from skinapp.phrases import parse_phrases
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo, banner_text
from skinapp.results import EXPLAIN_METHODS, AnalysisResult, ExplainResult, ImageState, present_analysis

log = logging.getLogger(__name__)

#: Side of the Explain images (the CLIP input view, enlarged for display).
EXPLAIN_DISPLAY_SIZE = 320

#: Analyses (prompt / threshold sets) kept per cached photo.
MAX_ANALYSES_PER_PHOTO = 8

ProgressFn = Callable[..., Any]


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    return None


def _is_key(text: str) -> bool:
    """True for a LoadedImage.key (64 lower-case hex digits)."""
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def _params_digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- analyzer
@dataclass(frozen=True)
class _Serving:
    """What one request is served with: a model set and the per-photo cache computed by it (never mixed)."""

    models: ModelSet
    states: LRUCache[ImageState]


class Analyzer:
    """The loaded models and the per-image cache. Build it with :meth:`create`.

    Args:
        models: every loaded model (see :func:`skinapp.models.load_models`).
        cache_size: photos kept in the per-image LRU.
        default_prompts: concept prompts used when a request gives none.
        box_threshold, text_threshold: Grounding DINO's default thresholds in [0, 1].
    """

    def __init__(self, models: ModelSet, cache_size: int = 32, default_prompts: Sequence[str] = DEFAULT_PROMPTS,
                 box_threshold: float = 0.3, text_threshold: float = 0.25) -> None:
        self.cache_size = cache_size
        self._serving = _Serving(models, LRUCache(cache_size))
        self.default_prompts = tuple(default_prompts)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
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
        """Load every model once (:func:`skinapp.models.load_models`, same arguments), then warm up.

        Args:
            warmup: run one small synthetic photo through every stage after loading.
        """
        analyzer = cls(load_models(profile, device=device, sam_variant=sam_variant, checkpoints=checkpoints,
                                   cache_size=cache_size), cache_size)
        log.info("%s", analyzer.describe())
        if warmup:
            analyzer.warm_up()
        return analyzer

    # -- the loaded models --------------------------------------------------------------------
    @property
    def models(self) -> ModelSet:
        """The models new requests are served with (see :meth:`swap_models`)."""
        return self._serving.models

    @models.setter
    def models(self, models: ModelSet) -> None:
        self.swap_models(models)

    @property
    def states(self) -> LRUCache[ImageState]:
        """The per-photo cache of the current models (a new, empty one after every swap)."""
        return self._serving.states

    def swap_models(self, models: ModelSet) -> ModelSet:
        """Serve ``models`` from now on, without a restart; return the models served until now.

        One attribute assignment (atomic): a request captures the models and their per-photo cache once, at its
        start, so requests in flight finish on the old models, and nothing the old models computed (concepts,
        ViT tokens, CLIP passes, analyses) is ever reused with the new ones: the new models get an empty cache.
        """
        old = self._serving.models
        self._serving = _Serving(models, LRUCache(self.cache_size))
        log.info("Models swapped in: mode %s -> %s", old.mode, models.mode)
        return old

    @property
    def extractor(self) -> Any:
        return self.models.extractor

    @property
    def global_encoder(self) -> Any:
        return self.models.global_encoder

    @property
    def fusion(self) -> torch.nn.Module:
        return self.models.fusion

    @property
    def class_names(self) -> list[str]:
        return self.models.class_names

    @property
    def clips(self) -> dict[str, ClipBundle]:
        return self.models.clips

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def reasons(self) -> dict[str, list[str]]:
        return self.models.reasons

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
        return self.models.analysis_weights

    @property
    def mode(self) -> str:
        """"full" when every model has trained weights, else "demo"."""
        return self.models.mode

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
    def autocast(self, device: torch.device | None = None) -> contextlib.AbstractContextManager:
        """The mixed precision of the ViT, fusion and concept passes: bf16 autocast on CUDA, none elsewhere (the
        SAM encoder chooses its own, :mod:`skinapp.precision`)."""
        if (device or self.device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def state_for(self, image_source: Any, states: LRUCache[ImageState] | None = None) -> ImageState:
        """The cached state of a photo: from its key (or an analysis ref), or from anything load_image reads."""
        states = states if states is not None else self.states
        if isinstance(image_source, str) and _is_key(image_source.split(":")[0]):
            cached = states.get(image_source.split(":")[0])
            if cached is None:
                raise ValueError("This photo is no longer in the app's memory; upload it again.")
            return cached
        image = load_image(image_source)
        return states.get_or_compute(image.key, lambda: ImageState(image))

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

    def _global_tokens(self, state: ImageState, models: ModelSet | None = None) -> torch.Tensor:
        models = models or self.models
        with state.lock:
            if state.global_tokens is None:
                batch = models.global_encoder.preprocess(state.image).to(models.device)
                with self._global_lock, torch.no_grad(), self.autocast(models.device):
                    state.global_tokens = models.global_encoder.tokens(batch)[0].float()
            return state.global_tokens

    @staticmethod
    def _explain_preprocess(bundle: ClipBundle):
        """The whole-photo (letterboxed) CLIP input at the model's own size, mean and std, so no lesion falls
        outside the heatmaps."""
        return bundle.whole_photo_preprocess()

    def _clip_pass(self, state: ImageState, choice: str, models: ModelSet | None = None) -> ImagePass:
        models = models or self.models
        with state.lock:
            if choice not in state.clip_passes:
                bundle = models.clips[choice]
                with self._clip_lock:
                    state.clip_passes[choice] = encode_image_for_explain(
                        bundle.model, state.image, preprocess=self._explain_preprocess(bundle),
                        weights=bundle.weights)
            return state.clip_passes[choice]

    @staticmethod
    def _clip_choice(models: ModelSet, clip_choice: str | None) -> tuple[str, ClipBundle]:
        """(label, bundle) of the CLIP weights asked for (None: the first). Raises ValueError for an unknown one."""
        choice = clip_choice or next(iter(models.clips))
        if choice not in models.clips:
            raise ValueError(f"Unknown CLIP weights {choice!r}; choose one of {list(models.clips)}.")
        return choice, models.clips[choice]

    def _timed_clip_pass(self, state: ImageState, choice: str, models: ModelSet) -> tuple[ImagePass, float]:
        """The photo's CLIP image pass and the seconds it took now (0.0 when it was cached)."""
        t = time.perf_counter()
        fresh = choice not in state.clip_passes
        image_pass = self._clip_pass(state, choice, models)
        return image_pass, (time.perf_counter() - t if fresh else 0.0)

    # -- analyse ------------------------------------------------------------------------------
    def analyze(self, image_source: Any, prompts: str | Iterable[str] | None = None,
                box_threshold: float | None = None, text_threshold: float | None = None,
                progress: ProgressFn | None = None) -> AnalysisResult:
        """Concepts, diagnosis, CAM and decisive concept of one photo (cached per photo and parameters).

        Raises:
            InvalidImageError / ValueError: unusable photo, no prompt, thresholds outside [0, 1].
        """
        progress = progress or _no_progress
        serving = self._serving  # once: this request finishes on these models, whatever is swapped in meanwhile
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        progress(0.0, desc="Reading the photo")
        if image_source is None:
            raise InvalidImageError("Upload a photo first.")
        state = self.state_for(image_source, serving.states)
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
            result = self._analyze_uncached(serving.models, state, ref, phrases, box_t, text_t, progress, timings,
                                            t0)
            state.analyses[ref] = result
            state.latest = ref
            while len(state.analyses) > MAX_ANALYSES_PER_PHOTO:  # oldest parameter sets first
                state.analyses.pop(next(iter(state.analyses)))
        progress(1.0, desc="Done")
        log.info("Analysed %s: %d concepts, %s (%.2fs)", image.key[:12], len(result.concepts),
                 result.prediction.predicted, result.timings["total"])
        return result

    def _analyze_uncached(self, models: ModelSet, state: ImageState, ref: str, phrases: tuple[str, ...],
                          box_t: float, text_t: float, progress: ProgressFn, timings: dict[str, float],
                          t0: float) -> AnalysisResult:
        image = state.image
        t = time.perf_counter()
        progress(0.1, desc="Finding concepts (detector + segmenter)")
        with self._concept_lock, self.autocast(models.device):
            concepts = models.extractor.extract(image, phrases, box_threshold=box_t, text_threshold=text_t)
        timings["concepts"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.6, desc="Global image features (ViT)")
        tokens = self._global_tokens(state, models)
        timings["global"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.8, desc="Fusion diagnosis")
        with self._fusion_lock, torch.no_grad(), self.autocast(models.device):
            prediction = predict(models.fusion, tokens, concepts, models.class_names,
                                 weights=(models.global_encoder.weights,))
        timings["fusion"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.9, desc="Drawing")
        weights = tuple(prediction.weights)
        view = present_analysis(image, concepts, prediction, banner_text(weights, models.reasons.get("analysis", [])))
        timings["render"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return AnalysisResult(ref=ref, image=image, prompts=phrases, box_threshold=box_t, text_threshold=text_t,
                              concepts=concepts, prediction=prediction, weights=weights, timings=timings,
                              notes=[*image.notes, *(n for n in prediction.notes if n != UNTRAINED_WARNING)],
                              **view)

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
        serving = self._serving  # once: this request finishes on these models, whatever is swapped in meanwhile
        models = serving.models
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        cleaned = parse_phrases(phrases)
        choice, bundle = self._clip_choice(models, clip_choice)
        if image_source is None:
            raise InvalidImageError("Upload and analyse a photo first.")
        state = self.state_for(image_source, serving.states)
        progress(0.1, desc="CLIP image pass (once per photo)")
        image_pass, timings["image_pass"] = self._timed_clip_pass(state, choice, models)

        t = time.perf_counter()
        progress(0.4, desc=f"Explaining {len(cleaned)} phrase(s)")
        with self._clip_lock:
            explanation = explain_from_pass(bundle.model, image_pass, cleaned, methods=tuple(methods),
                                            tokenizer=bundle.tokenizer)
        timings["explain"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.8, desc="Drawing heatmaps")
        banner = banner_text((bundle.weights,), models.reasons.get("clip", []))
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

    # -- concept scores -----------------------------------------------------------------------
    def concept_scores(self, image_source: Any, concepts: str | Iterable[str] | None = None,
                       clip_choice: str | None = None) -> ConceptScores:
        """The photo's CLIP similarity to each concept, highest first (:mod:`skinapp.concept_scores`).

        Uses the photo's cached CLIP image pass for ``clip_choice`` (the one Explain uses) and one batched
        text pass. ``concepts``: one per line or a list; None gives :data:`DEFAULT_CONCEPTS`.

        Raises:
            InvalidImageError / ValueError: no or unusable photo, bad concepts, unknown CLIP choice.
        """
        serving = self._serving  # once: this request finishes on these models, whatever is swapped in meanwhile
        models = serving.models
        t0 = time.perf_counter()
        cleaned = parse_concepts(DEFAULT_CONCEPTS if concepts is None else concepts)
        choice, bundle = self._clip_choice(models, clip_choice)
        if image_source is None:
            raise InvalidImageError("Upload a photo first.")
        state = self.state_for(image_source, serving.states)
        image_pass, seconds = self._timed_clip_pass(state, choice, models)
        timings = {"image_pass": seconds}
        t = time.perf_counter()
        with self._clip_lock:
            ordered, scores = score_concepts(bundle, image_pass, cleaned)
        timings["text"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        log.info("Scored %d concepts for %s with %s (%.2fs)", len(ordered), state.image.key[:12], choice,
                 timings["total"])
        return ConceptScores(image_key=state.image.key, concepts=ordered, scores=scores, clip_label=choice,
                             licence=bundle.licence, weights=(bundle.weights,),
                             banner=banner_text((bundle.weights,), models.reasons.get("clip", [])), timings=timings)
