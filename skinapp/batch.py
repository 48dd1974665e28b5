"""Batch analysis: the app's Analyzer over many photos, resumable, with CSV + COCO outputs.

Layout of the output folder::

    progress.rank<r>.jsonl   one JSON record per finished photo (ok or error), appended and flushed at once;
                             what a resumed run skips. Several ranks (torchrun) each write their own.
    predictions.csv          photo, image_key, predicted class, p_<class> per class, decisive concept, n_concepts,
                             trained, banner (untrained weights) -- one row per analysed photo
    concepts.json            COCO: images, categories (prompt phrases), annotations with RLE masks
    errors.csv               photo, reason -- photos that could not be analysed (broken symlinks included)
    overlays/<stem>_<key8>.png     the photo with its decisive concept (banner stamped when untrained)
    heatmaps/<stem>_<key8>.png     with phrases: one row per phrase (photo, Grad-CAM, Grad E-CLIP, MedGrad E-CLIP)
    phrases.csv              with phrases: photo, phrase, CLIP similarity

The three summary files are rebuilt from every rank's progress records at the end (rank 0 under torchrun).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skinapp.batch_encode import prefill
from skinapp.image import InvalidImageError
from skinapp.results import AnalysisResult, ExplainResult
from skinapp.review.export import rle_encode

log = logging.getLogger(__name__)

#: File name endings read as photos when a folder is given.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: CSV columns tried, in order, for the photo path (else the first column).
CSV_PATH_COLUMNS = ("image", "image_path", "path", "photo", "file")


def _file_or_broken_link(path: Path) -> bool:
    """A file, or a symlink whose target is missing (listed so that ``errors.csv`` says so, not skipped)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _csv_photos(path: Path) -> list[Path]:
    """The photo paths a CSV list names (see :func:`collect_photos`); ValueError when it names some but none exists
    (the wrong column, most likely)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        column = next((c for c in CSV_PATH_COLUMNS if c in (reader.fieldnames or [])),
                      (reader.fieldnames or [None])[0])
        listed = [path.parent / row[column] for row in reader if row.get(column)]
    if listed and not any(map(_file_or_broken_link, listed)):
        raise ValueError(f"{path}: none of its {len(listed)} rows names an existing file in column {column!r} (paths "
                         "are relative to the CSV's folder); the photo column is the first column named "
                         f"{', '.join(CSV_PATH_COLUMNS)}, else the first column.")
    return listed


def collect_photos(sources: Iterable[str | Path]) -> list[Path]:
    """Photo paths from files, folders (recursive), globs and CSV lists, sorted and de-duplicated.

    A CSV's first row names its columns; its paths are relative to the CSV's folder; its column is the first of
    :data:`CSV_PATH_COLUMNS` present, else the first column. Broken symlinks are listed like photos: their
    analysis fails and ``errors.csv`` says they are broken links.

    Raises:
        FileNotFoundError: a source that is neither a file, a folder nor a glob with matches.
        ValueError: a CSV whose rows name paths of which none exists (naming the column read and the recognised
            column names).
    """
    found: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and _file_or_broken_link(p)]
        elif path.is_file() and path.suffix.lower() == ".csv":
            found += _csv_photos(path)
        elif _file_or_broken_link(path):
            found.append(path)
        elif glob.has_magic(source) and glob.glob(source, recursive=True):
            found += [Path(p) for p in glob.glob(source, recursive=True) if _file_or_broken_link(Path(p))]
        else:
            raise FileNotFoundError(f"{source}: no such file or folder, and no glob match")
    # Absolute, not resolved: a symlinked photo is listed by the path the user gave, not by its target.
    return sorted({Path(os.path.abspath(p)) for p in found})


def shard(photos: Sequence[Path], rank: int, world: int) -> list[Path]:
    """This rank's share of the photos: every ``world``-th, starting at ``rank``."""
    return list(photos[rank::world])


@dataclass
class Record:
    """One finished photo, as stored in the progress file."""

    photo: str
    status: str  # "ok" or "error"
    reason: str = ""
    row: dict[str, Any] | None = None
    coco: dict[str, Any] | None = None
    phrases: list[tuple[str, float]] | None = None


def read_records(out: Path) -> dict[str, Record]:
    """Every rank's finished photos, by photo path (later records win)."""
    records: dict[str, Record] = {}
    for progress in sorted(out.glob("progress.rank*.jsonl")):
        for line in progress.read_text().splitlines():
            if line.strip():
                try:
                    record = Record(**json.loads(line))
                except (json.JSONDecodeError, TypeError):  # a line cut by a kill: that photo is redone
                    log.warning("skipping an unreadable progress line in %s", progress.name)
                    continue
                records[record.photo] = record
    return records


def _tag(photo: Path, key: str) -> str:
    return f"{photo.stem[:60]}_{key[:8]}"


def analysis_record(photo: Path, result: AnalysisResult) -> Record:
    """The CSV row and COCO image entry of one analysed photo."""
    concepts = result.concepts
    row = {"photo": str(photo), "image_key": result.image_key, "predicted_class": result.prediction.predicted,
           **{f"p_{name}": round(p, 6) for name, p in result.class_probabilities().items()},
           "decisive_concept": ("" if result.decisive_index is None
                                else f"#{result.decisive_index} {concepts.phrases[result.decisive_index]}"),
           "n_concepts": len(concepts), "trained": result.trained, "banner": bool(result.banner)}
    annotations = []
    for i in range(len(concepts)):
        x0, y0, x1, y1 = (float(v) for v in concepts.boxes[i])
        annotations.append({"phrase": concepts.phrases[i], "score": float(concepts.scores[i]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(concepts.masks[i].sum()),
                            "segmentation": rle_encode(concepts.masks[i])})
    coco = {"file_name": str(photo), "width": result.image.width, "height": result.image.height,
            "image_key": result.image_key, "annotations": annotations}
    return Record(photo=str(photo), status="ok", row=row, coco=coco)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def heatmap_sheet(explained: ExplainResult) -> np.ndarray:
    """uint8 [T*S, 4*S, 3]: one row per phrase: the photo, then each method's overlay."""
    return np.concatenate([np.concatenate(row, axis=1) for row in explained.overlays], axis=0)


def analyse_photos(analyzer: Any, photos: Sequence[Path], out: Path, rank: int = 0, prompts: str | None = None,
                   phrases: Sequence[str] | None = None, overlays: bool = True,
                   progress: Callable[[Iterable], Iterable] = lambda it: it,
                   batch_size: int = 1) -> tuple[int, int, int]:
    """Analyse ``photos`` not already finished in ``out``; append a record per photo as it finishes.

    Args:
        batch_size: photos whose image encoders run in one batch (:func:`skinapp.batch_encode.prefill`) before
            each is analysed; 1: one by one.

    Returns:
        (analysed, failed, skipped) counts for this call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    cached = getattr(getattr(analyzer, "states", None), "maxsize", batch_size)
    if batch_size > cached:  # a prefilled photo must still be cached when its turn comes
        log.warning("batch size %d is above the Analyzer's photo cache (%d); using %d", batch_size, cached, cached)
        batch_size = cached
    out.mkdir(parents=True, exist_ok=True)
    done = read_records(out)
    todo = [p for p in photos if str(p) not in done]
    analysed = failed = 0
    clip_choice = analyzer.clip_choices[0] if phrases else None
    with (out / f"progress.rank{rank}.jsonl").open("a") as sink:
        for index, photo in enumerate(progress(todo)):
            if batch_size > 1 and index % batch_size == 0:
                prefill(analyzer, todo[index:index + batch_size], clip_choice=clip_choice)
            try:
                result = analyzer.analyze(photo, prompts=prompts)
                record = analysis_record(photo, result)
                if overlays:
                    # the result's decisive image already carries the banner when the weights are untrained
                    _save_png(out / "overlays" / f"{_tag(photo, result.image_key)}.png", result.decisive_image)
                if phrases:
                    explained = analyzer.explain(photo, list(phrases))
                    record.phrases = [(p, float(s)) for p, s in zip(explained.phrases, explained.similarities)]
                    _save_png(out / "heatmaps" / f"{_tag(photo, result.image_key)}.png", heatmap_sheet(explained))
                analysed += 1
            except (InvalidImageError, ValueError, OSError) as exc:  # this photo's fault: note it, go on
                record = Record(photo=str(photo), status="error", reason=str(exc))
                failed += 1
                log.info("photo %d could not be analysed: %s", analysed + failed, type(exc).__name__)
            sink.write(json.dumps(record.__dict__) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
    return analysed, failed, len(photos) - len(todo)


def write_summaries(out: Path) -> dict[str, int]:
    """Rebuild predictions.csv, concepts.json, errors.csv (and phrases.csv) from every progress record."""
    records = sorted(read_records(out).values(), key=lambda r: r.photo)
    ok = [r for r in records if r.status == "ok"]
    columns: list[str] = []
    for r in ok:
        columns += [c for c in r.row if c not in columns]
    with (out / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or ["photo"])
        writer.writeheader()
        writer.writerows(r.row for r in ok)
    with (out / "errors.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["photo", "reason"])
        writer.writerows((r.photo, r.reason) for r in records if r.status == "error")
    categories: dict[str, int] = {}
    images, annotations = [], []
    for image_id, r in enumerate(ok, start=1):
        images.append({"id": image_id, **{k: v for k, v in r.coco.items() if k != "annotations"}})
        for ann in r.coco["annotations"]:
            category = categories.setdefault(ann["phrase"], len(categories) + 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "iscrowd": 0, **{k: v for k, v in ann.items() if k != "phrase"}})
    coco = {"info": {"description": "skinapp batch analysis"}, "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    (out / "concepts.json").write_text(json.dumps(coco))
    if any(r.phrases for r in ok):
        with (out / "phrases.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["photo", "phrase", "clip_similarity"])
            writer.writerows((r.photo, p, s) for r in ok for p, s in (r.phrases or []))
    return {"analysed": len(ok), "errors": len(records) - len(ok)}
