"""The concept numbers written on the photo (skinapp.drawing.numbered_photo): readable at any photo size and
never on top of each other. Plain arrays, no model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from skinapp.drawing import BANNER_MIN_SCALE, banner_layout, label_positions, numbered_photo, stamp_banner
from skinapp.provenance import UNTRAINED_WARNING


def _ink(photo: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """bool [H, W]: where a number was written."""
    return np.any(shown != photo, axis=-1)


def _height(ink: np.ndarray) -> int:
    rows = np.flatnonzero(ink.any(axis=1))
    return int(rows[-1] - rows[0] + 1)


def test_numbers_grow_with_the_photo_so_they_stay_readable():
    """The text scale is min(H, W) / 350 (at least 0.7): on a 1050-px photo a number is ~3x as tall as on a
    350-px one, so it is not a speck on a phone photo."""
    heights = {}
    for side in (350, 1050):
        photo = np.full((side, side + side // 3, 3), 128, np.uint8)
        heights[side] = _height(_ink(photo, numbered_photo(photo, np.ones((1, *photo.shape[:2]), bool), [7])))
    assert 2.5 < heights[1050] / heights[350] < 3.5, heights


def test_two_numbers_whose_masks_share_a_centre_are_written_apart():
    """A lesion inside a larger patch of skin: both masks are deepest at the same point; the second number
    goes at least 2.5 text heights away, so the two never overlap (two separate words of ink)."""
    photo = np.full((300, 400, 3), 128, np.uint8)
    masks = np.zeros((2, 300, 400), bool)
    masks[0, 100:200, 150:250] = True  # lesion
    masks[1, 20:280, 50:350] = True  # skin around it, same centre
    ink = _ink(photo, numbered_photo(photo, masks, [0, 1])).astype(np.uint8)
    words = cv2.dilate(ink, np.ones((7, 7), np.uint8))  # the glyphs of one number join into one blob
    n_blobs, _ = cv2.connectedComponents(words)
    assert n_blobs - 1 == 2


def test_the_number_of_a_mask_around_a_lesion_is_written_on_its_own_part_not_on_the_lesion():
    """Found by a new user: "#0 skin" sat on the lesion (the skin mask holds the lesion, so its deepest point was
    the lesion's centre, just min_gap from the lesion's number)."""
    masks = np.zeros((2, 300, 400), bool)
    masks[0, 60:240, 110:290] = True  # a large lesion
    masks[1] = True  # the skin, lesion included
    lesion_at, skin_at = label_positions(masks, min_gap=20)
    assert masks[0][lesion_at[1], lesion_at[0]] and not masks[0][skin_at[1], skin_at[0]]


def test_the_untrained_banner_goes_above_the_photo_and_hides_none_of_it():
    """Found by a new user: the red strip was drawn over the photo's top rows, so a concept's label or a lesion at
    the top edge was hidden under it."""
    photo = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    stamped = stamp_banner(photo)
    strip = max(14, 300 // 14)
    assert stamped.shape == (300 + strip, 200, 3)
    np.testing.assert_array_equal(stamped[strip:], photo)
    assert np.all(stamped[:strip, :3] == (200, 0, 0)) and (stamped[:strip] == 255).any(), "red strip with white text"


@pytest.mark.parametrize("width", [64, 120, 150])
def test_the_untrained_banner_is_whole_and_inside_a_narrow_photo(width):
    """Known defect: on photos narrower than about 150 px the banner's one line ran past the right edge, cut to
    "UNTRAINED WEIGHTS - NOT A DI". Now its words wrap onto more lines (the strip grows) at a readable size."""
    photo = np.full((100, width, 3), 90, np.uint8)
    stamped = stamp_banner(photo)
    layout = banner_layout(UNTRAINED_WARNING, width, 100)
    assert stamped.shape == (100 + layout.strip, width, 3)
    np.testing.assert_array_equal(stamped[layout.strip:], photo)
    assert " ".join(layout.lines) == UNTRAINED_WARNING.replace("\u2014", "-"), "every word is drawn, in order"
    assert layout.scale >= BANNER_MIN_SCALE, "no smaller than the readable minimum"
    for line in layout.lines:  # measured with the font that draws them
        (line_width, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, layout.scale, 1)
        assert line_width <= width - 4, (line, line_width)
    ink = np.any(stamped[:layout.strip] != (200, 0, 0), axis=-1)
    assert ink.any() and not ink[:, :2].any() and not ink[:, -2:].any(), "no letter touches or crosses the edge"
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows[0] >= 1 and rows[-1] <= layout.strip - 2, "no letter touches the photo or the top"
    line_rows = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    assert len(line_rows) == len(layout.lines) > 1, "one band of ink per line"


def test_the_untrained_banner_on_a_wide_photo_stays_one_line_in_the_old_strip():
    photo = np.zeros((300, 640, 3), np.uint8)
    layout = banner_layout(UNTRAINED_WARNING, 640, 300)
    assert layout.lines == ("UNTRAINED WEIGHTS - NOT A DIAGNOSIS",) and layout.strip == max(14, 300 // 14)
    assert stamp_banner(photo).shape == (300 + layout.strip, 640, 3)
