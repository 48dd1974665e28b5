"""Diagnosis of one image: class probabilities, the concept x class CAM, and the concept that decided it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from skinapp.concepts.types import Concepts
from skinapp.fusion.encoders import GRID
from skinapp.fusion.padding import pad_concepts
from skinapp.fusion.pooling import top_real_instance
from skinapp.fusion.variants import FusionBase
from skinapp.provenance import UNTRAINED_WARNING, WeightsInfo


@dataclass
class FusionPrediction:
    """The fusion model's answer for one image.

    Attributes:
        probs: float [C] softmax of the pooled class scores.
        class_names: C names.
        predicted: the predicted class name; predicted_index its index.
        cam: float [R, C]; rows are the image's real concepts (R <= n_concepts) for concept variants,
            the 196 ViT patches for the global variant or the zero-concept fallback.
        cam_rows: R row labels (concept phrases, or "patch r,c").
        cam_concepts: R indices into the input Concepts, one per CAM row (None for ViT-patch rows).
        top_concept: index into the input Concepts of the real concept with the highest CAM score for
            the predicted class (None when no concept was used).
        notes: human-readable notes (fallbacks, truncation, untrained weights).
        weights: provenance of every model behind this answer.
        trained: True only when every one of those models had trained weights.
        variant: the fusion variant.
        top_concept_phrase: the phrase of ``top_concept`` (None when no concept was used).
    """

    probs: np.ndarray
    class_names: list[str]
    predicted: str
    predicted_index: int
    cam: np.ndarray
    cam_rows: list[str]
    top_concept: int | None
    cam_concepts: list[int | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights: tuple[WeightsInfo, ...] = ()
    trained: bool = False
    variant: str = ""
    top_concept_phrase: str | None = None


def _patch_labels() -> list[str]:
    return [f"patch {r},{c}" for r in range(GRID) for c in range(GRID)]


@torch.no_grad()
def predict(model: FusionBase, global_tokens: torch.Tensor, concepts: Concepts, class_names: Sequence[str], *,
            weights: Sequence[WeightsInfo] = (), seed: int = 0) -> FusionPrediction:
    """Run the fusion model on one image.

    Args:
        model: a fusion model (any variant).
        global_tokens: [196, D] or [1, 196, D] ViT tokens of the image.
        concepts: the image's concepts (features [m, 256], phrases, boxes, masks, scores).
        class_names: the model's C class names, in output order.
        weights: provenance of the models outside ``model`` and ``concepts`` (e.g. the global ViT).
        seed: seed of the padding noise (the answer is deterministic for a given seed).
    """
    names = list(class_names)
    if len(names) != model.n_classes:
        raise ValueError(f"{len(names)} class names for a {model.n_classes}-class model.")
    tokens = global_tokens if global_tokens.ndim == 3 else global_tokens.unsqueeze(0)
    if tokens.shape[0] != 1:
        raise ValueError(f"predict() takes one image; got global tokens {tuple(global_tokens.shape)}.")
    n = int(model.config["n_concepts"])
    gen = torch.Generator().manual_seed(seed)
    feats = torch.as_tensor(concepts.features).float().reshape(-1, model.config["concept_dim"])
    scores = torch.tensor(np.array(concepts.scores, np.float32)) if len(concepts) else None
    padded, mask, source = pad_concepts(feats, n, scores, float(model.config["pad_noise"]), gen)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(tokens.to(device), padded.unsqueeze(0).to(device), mask.unsqueeze(0).to(device))
    finally:
        model.train(was_training)
    probs = torch.softmax(out.scores[0].float(), dim=0).cpu().numpy()
    pred = int(probs.argmax())
    notes: list[str] = []
    top_concept, top_row = None, -1
    if bool(out.fallback[0]):
        notes.append("No concepts were found in this photo: the diagnosis uses global image features only.")
        cam, rows = out.fallback_cam[0].cpu().numpy(), _patch_labels()
        row_concepts: list[int | None] = [None] * len(rows)
    elif out.n_concept_rows == 0:
        notes.append(f"The '{model.variant}' variant uses global image features only; CAM rows are ViT patches.")
        cam, rows = out.cam[0].cpu().numpy(), _patch_labels()
        row_concepts = [None] * len(rows)
    else:
        n_real = int(mask.sum())
        cam = out.cam[0, :n_real].cpu().numpy()
        row_concepts = [int(i) for i in source[:n_real]]
        rows = [concepts.phrases[i] for i in row_concepts]
        top_row = int(top_real_instance(out.cam[:, :n_real], out.mask[:, :n_real])[0, pred])
        top_concept = int(source[top_row])
        if len(concepts) > n:
            notes.append(f"{len(concepts)} concepts found; the {n} with the highest detector scores were used.")
    provenance = (getattr(model, "weights", WeightsInfo("fusion", False, "unknown")), *weights, *concepts.weights)
    trained = all(w.trained for w in provenance)
    if not trained:
        notes.append(UNTRAINED_WARNING)
    return FusionPrediction(probs=probs, class_names=names, predicted=names[pred], predicted_index=pred, cam=cam,
                              cam_rows=rows, top_concept=top_concept, cam_concepts=row_concepts, notes=notes,
                              weights=provenance, trained=trained, variant=model.variant,
                              top_concept_phrase=rows[top_row] if top_concept is not None else None)
