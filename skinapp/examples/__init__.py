"""Example photos for the app's gr.Examples: synthetic phone photos drawn by skinapp.synthetic.

They are regenerated with ``python -m skinapp.examples`` (same seeds, same pixels).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from skinapp.synthetic import make_skin_photo

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent

#: (file name, make_skin_photo keyword arguments) of each example.
EXAMPLES: tuple[tuple[str, dict], ...] = (
    ("arm_dark_lesion.png", {"seed": 3, "lesion_colour": "dark_brown", "skin_tone": 1}),
    ("leg_red_lesion.png", {"seed": 11, "lesion_colour": "red", "skin_tone": 3}),
    ("limb_blue_grey_streak.png", {"seed": 21, "lesion_colour": "blue_grey", "lesion_shape": "elongated",
                                   "skin_tone": 4}),
)

#: Size (H, W) of the example photos: small enough to keep the repository light.
EXAMPLE_SIZE = (288, 384)


def example_paths() -> list[Path]:
    """The example photo files that exist, in EXAMPLES order."""
    return [EXAMPLES_DIR / name for name, _ in EXAMPLES if (EXAMPLES_DIR / name).is_file()]


def write_examples(directory: str | Path = EXAMPLES_DIR) -> list[Path]:
    """Draw every example photo into ``directory`` (PNG) and return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, kwargs in EXAMPLES:
        photo = make_skin_photo(size=EXAMPLE_SIZE, **kwargs)
        Image.fromarray(photo.pixels).save(out / name, optimize=True)
        paths.append(out / name)
    return paths
