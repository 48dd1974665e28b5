"""Contact sheet of the weight-free concepts on real photos: skin region and lesion masks drawn on thumbnails.

    python -m skinapp.bench.contact_sheet --data ../shared/data/pad_ufes_20 --out docs/contact_sheet_pad_ufes_20.jpg

Each tile is one photo (``--side`` px, default 256): outside the "skin" concept the photo is dimmed and
tinted blue; the first-ranked "lesion" concept is outlined in red, the next two in yellow, the
ground-truth lesion mask (when the data set has one) in green. ``--count`` photos are taken evenly
spaced from ``labels.csv`` (deterministic), ``--columns`` per row; the sheet is a JPEG (quality 85).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from skinapp.concepts.fallback import LESION_PHRASE, SKIN_PHRASE, ColourConceptExtractor
from skinapp.image import load_image

log = logging.getLogger(__name__)

RED, YELLOW, GREEN = (230, 30, 30), (255, 220, 0), (0, 220, 0)


def pick_rows(labels: Path, count: int) -> list[dict]:
    """``count`` rows of ``labels`` (a labels.csv with an ``image`` column), evenly spaced, in file order."""
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{labels} has no rows")
    idx = np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))
    return [rows[i] for i in idx]


def _outline(tile: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], width: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, rgb, width)


def draw_tile(pixels: np.ndarray, concepts, truth: np.ndarray | None, side: int) -> np.ndarray:
    """One tile: uint8 RGB [side, side', 3] with the skin region shown and lesion outlines drawn.

    Args:
        pixels: uint8 [H, W, 3] working image; concepts: its :class:`Concepts`; truth: bool [H, W] or None.
    """
    H, W = pixels.shape[:2]
    scale = side / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    small = lambda m: cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)  # noqa: E731
    tile = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA).astype(np.float32)
    skin = [m for m, p in zip(concepts.masks, concepts.phrases) if p == SKIN_PHRASE]
    outside = ~small(skin[0]) if skin else np.ones(tile.shape[:2], bool)
    tile[outside] = 0.45 * tile[outside] + 0.55 * np.array([20, 40, 140], np.float32)
    tile = np.clip(tile, 0, 255).astype(np.uint8)
    if truth is not None:
        _outline(tile, small(truth), GREEN, 2)
    lesions = [m for m, p in zip(concepts.masks, concepts.phrases) if p == LESION_PHRASE]
    for mask in lesions[1:3]:
        _outline(tile, small(mask), YELLOW, 1)
    if lesions:
        _outline(tile, small(lesions[0]), RED, 2)
    return tile


def contact_sheet(folder: str | Path, count: int = 12, columns: int = 4, side: int = 256) -> np.ndarray:
    """The sheet as uint8 RGB [rows x side, columns x side, 3] for ``count`` photos of ``folder``."""
    folder = Path(folder)
    extractor = ColourConceptExtractor(cache_size=1)
    tiles = []
    for row in pick_rows(folder / "labels.csv", count):
        image = load_image(folder / row["image"])
        concepts = extractor.extract(image, ["lesion", "skin"])
        truth = None
        if (row.get("mask") or "").strip():
            gt = Image.open(folder / row["mask"]).convert("L").resize((image.width, image.height), Image.NEAREST)
            truth = np.asarray(gt) > 127
        tile = draw_tile(image.pixels, concepts, truth, side)
        canvas = np.full((side, side, 3), 255, np.uint8)
        canvas[:tile.shape[0], :tile.shape[1]] = tile
        tiles.append(canvas)
    while len(tiles) % columns:
        tiles.append(np.full((side, side, 3), 255, np.uint8))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinapp.bench.contact_sheet", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with labels.csv (image, mask columns)")
    ap.add_argument("--out", required=True, help="output JPEG path")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--side", type=int, default=256, help="tile size in pixels")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sheet = contact_sheet(args.data, args.count, args.columns, args.side)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, quality=85, optimize=True)
    log.info("wrote %s (%d x %d px)", args.out, sheet.shape[1], sheet.shape[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
