"""The CAM figure stays readable: no overlapping labels (1 to 30 concepts), the decisive mark off the colourbar."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from skinapp.ui.figures import cam_figure

CLASSES = ["Eczema", "Allergic Contact Dermatitis", "Urticaria", "Insect Bite", "Psoriasis"]


def _boxes(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax, bar = fig.axes[0], fig.axes[1]
    ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
    xticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    return ax, bar, ticks, xticks, ax.title.get_window_extent(renderer), renderer


@pytest.mark.parametrize("n", [1, 5, 30, 45])
def test_cam_labels_do_not_overlap_and_decisive_is_off_the_colourbar(n):
    rng = np.random.default_rng(n)
    rows = [f"#{i} {'lesion' if i % 2 else 'upper arm skin'}" for i in range(n)]
    cam = rng.random((n, 5))
    fig = cam_figure(cam, rows, CLASSES, predicted_index=2, highlight_row=int(np.argmax(cam[:, 2])), untrained=True,
                     photo="0123456789ab")
    ax, bar, ticks, xticks, title, renderer = _boxes(fig)
    assert len(ticks) == min(n, 30)
    for a, b in zip(ticks, ticks[1:]):
        assert not a.overlaps(b), "concept labels overlap"
    assert all(not title.overlaps(t) for t in ticks + xticks), "the title covers labels"
    bar_box = bar.get_window_extent(renderer)
    assert all(not bar_box.overlaps(t) for t in ticks)
    for artist in ax.texts + ax.patches:  # nothing of the decisive mark sits on the colourbar
        assert not artist.get_window_extent(renderer).overlaps(bar_box)
    red = [t for t in ax.get_yticklabels() if t.get_color() == "red"]
    assert len(red) == 1 and red[0].get_text().startswith("\u25b6")
    assert "0123456789ab" in ax.get_title()
