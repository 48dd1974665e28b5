"""Matplotlib figures for the app.

Figures are built with ``matplotlib.figure.Figure`` directly (not pyplot): no global figure registry,
so nothing leaks across requests and no display backend is needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from skinapp.provenance import UNTRAINED_WARNING

#: At most this many CAM rows are drawn (the highest scoring for the predicted class).
MAX_ROWS = 30


def cam_figure(cam: np.ndarray, rows: list[str], class_names: list[str], predicted_index: int,
               highlight_row: int | None = None, untrained: bool = False, photo: str = "") -> Figure:
    """A concept x class heatmap of the CAM.

    Args:
        cam: float [R, C] class activation per concept (row) and class (column).
        rows: R row labels ("#i phrase", or ViT patches when no concept was used).
        class_names: C class names; ``predicted_index`` is outlined.
        highlight_row: the decisive concept's row (marked with an arrow), or None.
        untrained: put UNTRAINED_WARNING in the title.
        photo: the photo's short key, named in the title.
    """
    cam = np.asarray(cam, dtype=np.float32)
    order = np.arange(len(rows))
    if len(rows) > MAX_ROWS:
        order = np.argsort(-cam[:, predicted_index], kind="stable")[:MAX_ROWS]
    shown = cam[order]
    n = max(len(order), 1)
    decisive = (int(np.flatnonzero(order == highlight_row)[0])
                if highlight_row is not None and highlight_row in set(order.tolist()) else None)
    labels = [("\u25b6 " if i == decisive else "") + rows[r] for i, r in enumerate(order)]
    # 0.22 inch per row keeps 8-pt labels apart; room above for the title and below for the class names
    fig = Figure(figsize=(3.2 + 0.9 * len(class_names), 2.4 + 0.22 * n), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown if len(order) else np.zeros((1, len(class_names))), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.add_patch(Rectangle((predicted_index - 0.5, -0.5), 1, n, fill=False, ec="red", lw=2))
    if decisive is not None:  # the decisive concept: its cell outlined and its label red, inside the heatmap
        ax.add_patch(Rectangle((predicted_index - 0.5, decisive - 0.5), 1, 1, fill=False, ec="white", lw=2.5,
                               ls="--"))
        tick = ax.get_yticklabels()[decisive]
        tick.set_color("red")
        tick.set_fontweight("bold")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="CAM score")
    title = "CAM: concept x class" + (f" \u00b7 photo {photo}" if photo else "")
    if decisive is not None:
        title += "\n\u25b6 = decisive concept (dashed cell)"
    if untrained:
        title = f"{UNTRAINED_WARNING}\n{title}"
    ax.set_title(title, fontsize=9, color="red" if untrained else "black")
    return fig


def concept_figure(concepts: list[str], scores: np.ndarray, producer: str, untrained: bool = False,
                   photo: str = "") -> Figure:
    """Horizontal bars of concept scores, highest at the top.

    Args:
        concepts: K concepts, highest score first.
        scores: float [K] CLIP cosine similarities (relative: compare within one photo and model).
        producer: which CLIP weights produced them (shown in the title).
        untrained: put UNTRAINED_WARNING in the title.
        photo: the photo's short key, named in the title.
    """
    scores = np.asarray(scores, dtype=np.float32)
    n = max(len(concepts), 1)
    fig = Figure(figsize=(6.4, 1.4 + 0.24 * n), dpi=100, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(concepts))
    ax.barh(y, scores, color="#3b75af")
    ax.set_yticks(y, concepts, fontsize=8)
    ax.invert_yaxis()
    if len(scores):
        lo, hi = float(scores.min()), float(scores.max())
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_xlim(min(0.0, lo - pad), hi + pad)
    ax.set_xlabel("CLIP similarity to the photo (cosine)", fontsize=8)
    title = "Concept scores" + (f" \u00b7 photo {photo}" if photo else "") + f"\n{producer}"
    if untrained:
        title = f"{UNTRAINED_WARNING}\n{title}"
    ax.set_title(title, fontsize=8, color="red" if untrained else "black")
    return fig
