"""Lesion segmenters compared by :mod:`skinapp.bench.segmentation`: the app's extractors and classic baselines.

Each method maps a :class:`~skinapp.image.LoadedImage` to its lesion masks, best-ranked first
(list of bool [H, W] at working size). The app's extractors are asked for the prompt "lesion" and
their "lesion" concepts are kept in the extractor's own order (score, highest first).

Classic baselines (computed in the same run, no weights):

- ``otsu_lstar``: Otsu's threshold (Otsu 1979) on CIELAB L*, the darker side, the connected component
  nearest the image centre (holes filled). The textbook baseline of dermoscopy border detection
  (Celebi et al., "Lesion border detection in dermoscopy images", Comput Med Imaging Graph 2009).
- ``chan_vese``: morphological Chan-Vese active contour (Marquez-Neila et al., IEEE TPAMI 2014; scikit-image's
  ``morphological_chan_vese``) on L*, started from a centred disk, then the component nearest the centre.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, filters, measure, morphology, segmentation

from skinapp.image import LoadedImage

log = logging.getLogger(__name__)

#: Long side (pixels) the classic baselines work at; masks are resized back to the working size.
BASELINE_SIDE = 256


@dataclass
class LesionMethod:
    """A named lesion segmenter: ``masks(image)`` -> ranked bool masks [H, W] (best first)."""

    name: str
    kind: str  # "extractor" or "baseline"
    masks: Callable[[LoadedImage], list[np.ndarray]]
    note: str = ""


def extractor_method(name: str, extractor, note: str = "") -> LesionMethod:
    """Wrap an app extractor (``.extract(image, prompts)`` -> Concepts): its "lesion" concepts, in its order."""

    def masks(image: LoadedImage) -> list[np.ndarray]:
        concepts = extractor.extract(image, ["lesion"])
        return [np.asarray(m, bool) for m, p in zip(concepts.masks, concepts.phrases) if p == "lesion"]

    return LesionMethod(name, "extractor", masks, note)


def _small_lab(image: LoadedImage) -> np.ndarray:
    H, W = image.size
    scale = min(1.0, BASELINE_SIDE / max(H, W))
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    small = cv2.resize(np.ascontiguousarray(image.pixels), size, interpolation=cv2.INTER_AREA)
    return color.rgb2lab(small)


def central_component(mask: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """The connected component of bool ``mask`` [h, w] whose centroid lies nearest the image centre, holes filled.

    Components smaller than ``min_fraction`` of the image are ignored first (speckle, pores: scikit-image's
    ``remove_small_objects``). Empty in, empty out.
    """
    h, w = mask.shape
    labels = measure.label(morphology.remove_small_objects(mask, max_size=int(min_fraction * h * w)))
    regions = measure.regionprops(labels)
    if not regions:
        return np.zeros_like(mask, bool)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    nearest = min(regions, key=lambda r: float(np.hypot(*((np.array(r.centroid) - centre) / (h, w)))))
    return ndimage.binary_fill_holes(labels == nearest.label)


def _to_working(mask: np.ndarray, image: LoadedImage) -> np.ndarray:
    H, W = image.size
    return cv2.resize(mask.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)


def otsu_lstar(image: LoadedImage) -> list[np.ndarray]:
    """Otsu on L* (darker side) + the most central component: one mask, or none."""
    lightness = _small_lab(image)[..., 0]
    dark = lightness < filters.threshold_otsu(lightness)
    mask = central_component(dark)
    return [_to_working(mask, image)] if mask.any() else []


def chan_vese(image: LoadedImage, iterations: int = 60) -> list[np.ndarray]:
    """Morphological Chan-Vese on L* from a centred disk (radius 1/4 of the short side), most central component."""
    lightness = _small_lab(image)[..., 0] / 100.0
    h, w = lightness.shape
    init = segmentation.disk_level_set((h, w), center=(h // 2, w // 2), radius=max(2, min(h, w) // 4))
    level = segmentation.morphological_chan_vese(lightness, iterations, init_level_set=init, smoothing=2)
    inside = level.astype(bool)
    # The contour may settle on either phase: the lesion is the darker one.
    if inside.any() and (~inside).any() and lightness[inside].mean() > lightness[~inside].mean():
        inside = ~inside
    mask = central_component(inside)
    return [_to_working(mask, image)] if mask.any() else []


BASELINES: dict[str, Callable[[LoadedImage], list[np.ndarray]]] = {"otsu_lstar": otsu_lstar, "chan_vese": chan_vese}


def baseline_methods() -> list[LesionMethod]:
    """Every classic baseline as a :class:`LesionMethod`."""
    return [LesionMethod(name, "baseline", fn, (fn.__doc__ or "").splitlines()[0]) for name, fn in BASELINES.items()]


def grounded_method(sam_variant: str = "vit_b", device: str = "cpu") -> LesionMethod | str:
    """The grounded extractor (Grounding DINO + SAM) when its checkpoints resolve locally, else the reason why not."""
    from skinapp import checkpoints as ckpt
    from skinapp.concepts.detector import build_detector
    from skinapp.concepts.extractor import GroundedSamExtractor
    from skinapp.concepts.segmenter import build_segmenter

    names = ("groundingdino_swint_ogc", "bert_base_uncased", f"sam_{sam_variant}")
    try:
        found = {name: ckpt.resolve(name, download=False) for name in names}
    except ckpt.CheckpointMissing as exc:
        return f"grounded extractor skipped: checkpoint {exc.name!r} not found locally"
    detector = build_detector("full", checkpoint=found["groundingdino_swint_ogc"],
                              text_encoder=found["bert_base_uncased"], device=device)
    segmenter = build_segmenter("full", variant=sam_variant, checkpoint=found[f"sam_{sam_variant}"], device=device)
    return extractor_method("grounded_sam", GroundedSamExtractor(detector, segmenter, max_concepts=30),
                            f"Grounding DINO + SAM {sam_variant}")
