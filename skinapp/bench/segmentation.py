"""Lesion segmentation on real photos with ground-truth masks: IoU and Dice per method, per image and overall.

    python -m skinapp.bench.segmentation --data ../shared/data/pad_ufes_20 --data ../shared/data/ham10000 \
        [--out bench_results/segmentation] [--side 1024] [--limit N] [--threads 1] [--no-grounded]

A data folder holds ``labels.csv`` with columns ``image`` and ``mask`` (paths relative to the folder;
rows with an empty ``mask`` are skipped; masks are 8-bit, lesion > 127, the image's pixel size).
Every photo is resized to ``--side`` pixels on its long side (mask: nearest neighbour), then each
method (see :mod:`skinapp.bench.seg_methods`) ranks its lesion masks. Reported per image and as
means per data set: IoU and Dice of the top-ranked lesion mask ("top-1") and of the best one
("best"), the rank of the best one (1-based), misses (no lesion mask at all) and seconds per photo.

IoU comes from ``pycocotools.mask.iou`` on RLE-encoded masks (the COCO reference implementation);
Dice is its monotone transform ``2 IoU / (1 + IoU)`` (identical to ``2|A∩B| / (|A|+|B|)``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from skinapp.bench.seg_methods import LesionMethod, baseline_methods, extractor_method, grounded_method
from skinapp.cli_types import checked_number
from skinapp.image import load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One photo with its ground-truth lesion mask (paths absolute)."""

    dataset: str
    image: Path
    mask: Path


@dataclass
class ImageResult:
    """One method on one photo."""

    dataset: str
    image: str
    method: str
    n_lesions: int
    top1_iou: float
    top1_dice: float
    best_iou: float
    best_dice: float
    best_rank: int | None  # 1-based rank of the best mask; None when there is none
    seconds: float


def read_samples(folder: str | Path, limit: int | None = None) -> list[Sample]:
    """Rows of ``folder/labels.csv`` with a mask, in file order (at most ``limit``).

    Raises:
        FileNotFoundError: no labels.csv in ``folder``.
        ValueError: labels.csv lacks the ``image`` or ``mask`` column.
    """
    folder = Path(folder)
    with open(folder / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"image", "mask"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{folder / 'labels.csv'} needs the columns 'image' and 'mask'")
        rows = [r for r in reader if (r.get("mask") or "").strip()]
    samples = [Sample(folder.name, folder / r["image"], folder / r["mask"]) for r in rows]
    return samples[:limit] if limit else samples


def iou_dice(predictions: Sequence[np.ndarray], truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice of each bool mask [H, W] in ``predictions`` with bool ``truth`` [H, W]: float64 [n] each."""
    if not len(predictions):
        return np.zeros(0), np.zeros(0)
    encode = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
    gt = [encode(truth)]
    dt = [encode(m) for m in predictions]
    iou = np.asarray(mask_utils.iou(dt, gt, [0]), np.float64).reshape(-1)
    return iou, 2.0 * iou / (1.0 + iou)


def load_pair(sample: Sample, side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [H, W, 3] and bool mask [H, W], resized so the long side is ``side`` (None: as stored)."""
    rgb = np.asarray(Image.open(sample.image).convert("RGB"))
    truth = np.asarray(Image.open(sample.mask).convert("L")) > 127
    if truth.shape != rgb.shape[:2]:
        raise ValueError(f"{sample.mask.name}: mask size {truth.shape} differs from the image {rgb.shape[:2]}")
    if side:
        h, w = truth.shape
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        truth = cv2.resize(truth.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return rgb, truth


def evaluate(method: LesionMethod, sample: Sample, rgb: np.ndarray, truth: np.ndarray) -> ImageResult:
    """Run ``method`` on one photo (timed, including the photo's hashing/bounding by ``load_image``)."""
    t0 = time.perf_counter()
    image = load_image(rgb, max_side=max(rgb.shape[:2]))
    masks = method.masks(image)
    seconds = time.perf_counter() - t0
    iou, dice = iou_dice(masks, truth)
    best = int(np.argmax(iou)) if iou.size else None
    return ImageResult(
        dataset=sample.dataset, image=sample.image.name, method=method.name, n_lesions=len(masks),
        top1_iou=float(iou[0]) if iou.size else 0.0, top1_dice=float(dice[0]) if dice.size else 0.0,
        best_iou=0.0 if best is None else float(iou[best]), best_dice=0.0 if best is None else float(dice[best]),
        best_rank=None if best is None else best + 1, seconds=seconds)


def summarise(results: Sequence[ImageResult]) -> list[dict]:
    """Means per (data set, method): IoU/Dice top-1 and best, top-1 IoU > 0.5 count, misses, seconds."""
    groups: dict[tuple[str, str], list[ImageResult]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.method), []).append(r)
    rows = []
    for (dataset, method), rs in groups.items():
        ranks = [r.best_rank for r in rs if r.best_rank is not None]
        def mean(field: str, rs: list[ImageResult] = rs) -> float:
            return float(np.mean([getattr(r, field) for r in rs]))

        rows.append({
            "dataset": dataset, "method": method, "images": len(rs),
            "top1_iou": mean("top1_iou"), "top1_dice": mean("top1_dice"),
            "best_iou": mean("best_iou"), "best_dice": mean("best_dice"),
            "top1_over_0.5": sum(r.top1_iou > 0.5 for r in rs), "misses": sum(r.n_lesions == 0 for r in rs),
            "mean_best_rank": float(np.mean(ranks)) if ranks else None,
            "seconds_per_photo": mean("seconds"),
        })
    return rows


def default_methods(grounded: bool = True) -> tuple[list[LesionMethod], list[str]]:
    """The weight-free extractor, the classic baselines and (``grounded`` and its weights present) the grounded one.

    Returns (methods, notes): a note says why a method was skipped.
    """
    from skinapp.concepts.fallback import ColourConceptExtractor

    methods = [extractor_method("colour_fallback", ColourConceptExtractor(max_concepts=30, cache_size=1),
                                "the app's weight-free extractor")]
    notes: list[str] = []
    if grounded:
        found = grounded_method()
        if isinstance(found, str):
            notes.append(found)
        else:
            methods.append(found)
    else:
        notes.append("grounded extractor not run (--no-grounded)")
    return methods + baseline_methods(), notes


def warm_up(methods: Sequence[LesionMethod]) -> None:
    """Run every method once on a small synthetic photo, untimed: the first calls into OpenCV / scikit-image pay a
    one-time initialisation (about 3 s here) that is not a per-photo cost."""
    from skinapp.synthetic import make_skin_photo

    image = load_image(make_skin_photo(seed=0, size=(256, 256)).pixels)
    for method in methods:
        method.masks(image)


def run(folders: Sequence[str | Path], methods: Sequence[LesionMethod], side: int | None = 1024,
        limit: int | None = None) -> list[ImageResult]:
    """Every method on every masked photo of every folder (after :func:`warm_up`)."""
    warm_up(methods)
    results = []
    for folder in folders:
        for sample in read_samples(folder, limit):
            rgb, truth = load_pair(sample, side)
            for method in methods:
                results.append(evaluate(method, sample, rgb, truth))
            log.info("%s %s: top-1 IoU %s", sample.dataset, sample.image.name,
                     ", ".join(f"{r.method} {r.top1_iou:.2f}" for r in results[-len(methods):]))
    return results


def to_markdown(summary: Sequence[dict], results: Sequence[ImageResult], notes: Sequence[str] = (),
                per_image: bool = True) -> str:
    """The summary table (and, with ``per_image``, one top-1 IoU table per data set)."""
    lines = ["| data | method | images | top-1 IoU | top-1 Dice | best IoU | best Dice | top-1 IoU > 0.5 | misses "
             "| mean rank of best | s / photo |", "|---" * 11 + "|"]
    for s in summary:
        rank = "–" if s["mean_best_rank"] is None else f"{s['mean_best_rank']:.1f}"
        lines.append(f"| {s['dataset']} | {s['method']} | {s['images']} | {s['top1_iou']:.2f} | {s['top1_dice']:.2f} "
                     f"| {s['best_iou']:.2f} | {s['best_dice']:.2f} | {s['top1_over_0.5']}/{s['images']} "
                     f"| {s['misses']} | {rank} | {s['seconds_per_photo']:.3f} |")
    lines += [f"\n_{n}_" for n in notes]
    if per_image:
        methods = list(dict.fromkeys(r.method for r in results))
        for dataset in dict.fromkeys(r.dataset for r in results):
            lines += ["", f"### {dataset}: top-1 IoU per image (best IoU, rank of best)", "",
                      "| image | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
            by_image: dict[str, dict[str, ImageResult]] = {}
            for r in results:
                if r.dataset == dataset:
                    by_image.setdefault(r.image, {})[r.method] = r
            for image, rs in by_image.items():
                cells = [f"{rs[m].top1_iou:.2f} ({rs[m].best_iou:.2f}, {rs[m].best_rank or '–'})" for m in methods]
                lines.append(f"| {image} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(results: Sequence[ImageResult], summary: Sequence[dict], notes: Sequence[str], out: str | Path,
          settings: dict) -> tuple[Path, Path]:
    """``segmentation.json`` (settings, summary, per image) and ``segmentation.md`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "segmentation.json", out / "segmentation.md"
    json_path.write_text(json.dumps({"settings": settings, "notes": list(notes), "summary": list(summary),
                                     "images": [asdict(r) for r in results]}, indent=1))
    md_path.write_text(to_markdown(summary, results, notes))
    return json_path, md_path


#: argparse type: 0 (photos as stored) or a long side of at least 64 pixels.
_side = checked_number(int, lambda s: s == 0 or s >= 64, "not a number of pixels: {text!r}",
                       "0 (as stored) or at least 64 pixels; got {value}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinapp.bench.segmentation", description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="folder with labels.csv (repeatable)")
    ap.add_argument("--out", default="bench_results/segmentation", help="folder for segmentation.json/.md")
    ap.add_argument("--side", type=_side, default=1024, help="long side each photo is resized to (0: as stored)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many masked photos per folder (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (timings in the README use 1)")
    ap.add_argument("--no-grounded", dest="grounded", action="store_false",
                    help="skip Grounding DINO + SAM even when their checkpoints resolve locally")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    cv2.setNumThreads(max(1, args.threads))
    methods, notes = default_methods(args.grounded)
    try:
        for folder in args.data:  # every folder's labels before the first photo is timed
            read_samples(folder, 1)
        results = run(args.data, methods, args.side or None, args.limit or None)
        summary = summarise(results)
        settings = {"side": args.side, "threads": args.threads, "methods": {m.name: m.note for m in methods},
                    "cpu": platform.processor() or platform.machine(), "limit": args.limit}
        json_path, md_path = write(results, summary, notes, args.out, settings)
    except (OSError, ValueError) as exc:  # a missing folder, labels.csv, photo or mask; an unwritable --out
        log.error("error: %s", exc)
        return 2
    print(to_markdown(summary, results, notes, per_image=False))  # the report is this command's output
    log.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
