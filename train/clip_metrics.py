"""The CLIP fine-tuning metrics, each under its own name (Kamal & Oates, MedGrad E-CLIP; see docs/protocols.md).

* **In-batch image-text matching** (:func:`in_batch_matching`): the quantity behind the paper's "accuracy"
  (2.06 % -> 80.08 %). Within each batch of B pairs (B = 64 in the paper), image i must pick its own text
  i among the B texts (image->text). The paper's own numbers show it: its loss before training, 4.1579, is
  about ln 64 = 4.1589 (uniform logits over 64 texts) and its specificity 0.9971 = 1 - 0.182 / 63 is the
  one-vs-rest specificity of B = 64 "classes" (the batch positions) each with one sample. Precision,
  recall, F1, sensitivity and specificity are computed the same way, positions as classes, per batch, then
  averaged over batches weighted by their size.
* **Zero-shot accuracy** (``zero_shot_*``): the 17-class classification with one prompt per class
  (``"a dermoscopic image of {class}"`` by default); not a quantity the paper reports.
* **CLIP score**: the plain cosine cos(f_I, f_T) of matched pairs, averaged (the paper's 0.3081 -> 0.9655).
  ``clipscore_torchmetrics`` (100 * max(cos, 0), torchmetrics' CLIPScore) is reported beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.metrics import classification_metrics, macro_specificity

#: The MedGrad paper's batch size: the in-batch metric is defined over batches of this many pairs.
PAPER_MATCH_BATCH = 64


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """Matched pairs [N, D] x [N, D] -> ``clip_score`` (mean cosine) and ``clipscore_torchmetrics``."""
    cos = (F.normalize(image_features.float(), dim=-1) * F.normalize(text_features.float(), dim=-1)).sum(-1)
    return {"clip_score": float(cos.mean()), "clipscore_torchmetrics": float((100 * cos).clamp(min=0).mean())}


def in_batch_matching(image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int = PAPER_MATCH_BATCH,
                      logit_scale: float | None = None, seed: int | None = 0) -> dict[str, Any]:
    """In-batch image<->text matching of N matched pairs, in batches of ``batch_size``.

    Args:
        image_features, text_features: [N, D] features of matched pairs (row i of each belongs together);
            normalised here.
        batch_size: pairs per batch (the paper: 64). The last batch may be smaller; it counts with its size.
        logit_scale: the model's exp(logit_scale) for the contrastive ``loss`` (mean of the image->text and
            text->image cross-entropies per batch, averaged over pairs); None leaves the loss out.
        seed: the batches are drawn in a random order seeded with ``seed`` (None: the given order).

    Returns:
        ``in_batch_accuracy`` (image->text: the paper's "accuracy"), ``in_batch_t2i_accuracy``,
        ``in_batch_precision`` / ``_recall`` / ``_f1_paper`` / ``_sensitivity`` / ``_specificity`` (macro over
        batch positions, image->text), ``in_batch_size``, ``in_batch_batches`` and, with ``logit_scale``,
        ``loss``. Ties (e.g. two identical texts in one batch) go to the lower index.

    Raises:
        ValueError: shapes differ, fewer than 2 pairs, or batch_size < 2.
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(f"Expected matched features [N, D] x [N, D]; got {tuple(image_features.shape)} and "
                         f"{tuple(text_features.shape)}.")
    n = image_features.shape[0]
    if n < 2 or batch_size < 2:
        raise ValueError(f"In-batch matching needs >= 2 pairs and batch_size >= 2; got {n} and {batch_size}.")
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sums: dict[str, float] = {}
    counted, batches, loss_sum = 0, 0, 0.0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        b = len(idx)
        if b < 2:  # a single pair has nothing to be matched against
            continue
        logits = img[idx] @ txt[idx].T  # [b, b]: row = image, column = text
        target = np.arange(b)
        i2t = logits.argmax(dim=1).numpy()
        t2i = logits.argmax(dim=0).numpy()
        m = classification_metrics(target, i2t, b)
        values = {"in_batch_accuracy": m["accuracy"], "in_batch_t2i_accuracy": float((t2i == target).mean()),
                  "in_batch_precision": m["precision"], "in_batch_recall": m["recall"],
                  "in_batch_f1_paper": m["f1_paper"], "in_batch_sensitivity": m["recall"],
                  "in_batch_specificity": macro_specificity(target, i2t, b)}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value * b
        if logit_scale is not None:
            scaled = logit_scale * logits
            labels = torch.arange(b)
            loss_sum += float((F.cross_entropy(scaled, labels) + F.cross_entropy(scaled.T, labels)) / 2) * b
        counted += b
        batches += 1
    out: dict[str, Any] = {k: v / counted for k, v in sums.items()}
    out.update(in_batch_size=batch_size, in_batch_batches=batches)
    if logit_scale is not None:
        out["loss"] = loss_sum / counted
    return out


def zero_shot_metrics(y_true: list[int], y_pred: list[int], n_classes: int) -> dict[str, Any]:
    """17-class zero-shot classification metrics, every key prefixed ``zero_shot_``."""
    m = classification_metrics(y_true, y_pred, n_classes)
    out = {f"zero_shot_{k}": m[k] for k in ("accuracy", "precision", "recall", "f1_paper", "f1_macro_per_class")}
    out["zero_shot_sensitivity"] = m["recall"]
    out["zero_shot_specificity"] = macro_specificity(y_true, y_pred, n_classes)
    return out
