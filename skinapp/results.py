"""What the Analyse and Explain screens show for one photo, and what is cached per photo."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from skinapp.concepts.types import Concepts
from skinapp.drawing import draw_concept, stamp_banner
from skinapp.fusion import FusionPrediction
from skinapp.image import LoadedImage
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo

#: Explainer methods shown side by side, in display order (names as skinapp.explain knows them).
EXPLAIN_METHODS: tuple[str, ...] = ("gradcam", "grad_eclip", "medgrad_eclip")
METHOD_TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "grad_eclip": "Grad E-CLIP", "medgrad_eclip": "MedGrad E-CLIP"}


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
        decisive_image: uint8 [H, W, 3], the photo with the decisive concept's mask and box drawn; with a
            banner, [H + strip, W, 3] (:func:`~skinapp.drawing.stamp_banner` adds the strip above the photo).
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
        maps: {method: float [T, gh, gw]} maps on the CLIP model's patch grid (14x14 for ViT-B/16 at 224 px,
            16x16 for ViT-L/14 such as MONET), min-max normalised to [0, 1] per phrase.
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


def present_analysis(image: LoadedImage, concepts: Concepts, prediction: FusionPrediction,
                     banner: str) -> dict[str, Any]:
    """What the Analyse screen shows of one analysis: the :class:`AnalysisResult` fields ``annotations``,
    ``cam_rows``, ``decisive_index``, ``decisive_row``, ``decisive_image``, ``decisive_text`` and ``banner``.

    The decisive concept is ``prediction.top_concept`` (the CAM's own choice), drawn on the photo with its mask
    and box; with untrained weights (``banner`` not empty) the image is stamped and the text starts with
    :data:`~skinapp.provenance.UNTRAINED_WARNING`.
    """
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
    return {"annotations": annotations, "cam_rows": cam_rows, "decisive_index": decisive_index,
            "decisive_row": decisive_row, "decisive_image": decisive, "decisive_text": decisive_text,
            "banner": banner}
