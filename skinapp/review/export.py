"""Export reviewed concepts as COCO-style instance annotations (RLE masks) plus PNG masks.

Each image names the review version exported (``revision``, ``version``, ``reviewer``, ``saved_at``); each
annotation its concept's provenance ("model", "refined", "painted", "added", "imported") and ``edited`` (any
provenance but "model": a mask a person drew or corrected). Only concepts with a final label (accepted, or
relabelled) are exported; rejected and pending
ones are left out. The output directory holds::

    annotations.json          COCO: images, categories, annotations (segmentation = RLE)
    images/<image_key>.png    the reviewed photos
    masks/<image_key>/<annotation_id>_<label>.png
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from skinapp.review.store import ReviewStore

log = logging.getLogger(__name__)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool mask [H, W], JSON-ready (``counts`` as str)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: bool [H, W]."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:60] or "concept"


def export_coco(store: ReviewStore, out_dir: str | Path, image_keys: list[str] | None = None) -> Path:
    """Write the reviewed concepts of ``image_keys`` (all reviews when None) to ``out_dir``.

    Returns:
        The path of ``annotations.json``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    reviews = store.list_reviews()
    if image_keys is not None:
        wanted = set(image_keys)
        reviews = [r for r in reviews if r.image_key in wanted]
    categories: dict[str, int] = {}
    images, annotations = [], []
    for image_id, review in enumerate(reviews, start=1):
        shutil.copyfile(store.photo_path(review.image_key), out / "images" / f"{review.image_key}.png")
        images.append({"id": image_id, "file_name": f"images/{review.image_key}.png", "width": review.width,
                       "height": review.height, "image_key": review.image_key, "reviewer": review.reviewer,
                       "note": review.note, "revision": review.revision, "version": review.version,
                       "saved_at": review.updated_at})
        for concept in review.concepts:
            label = concept.final_label
            if not label:
                continue
            category_id = categories.setdefault(label, len(categories) + 1)
            mask = store.load_mask(review.image_key, concept.index, review.version)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ann_id = len(annotations) + 1
            mask_file = f"masks/{review.image_key}/{ann_id}_{_safe(label)}.png"
            (out / mask_file).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_file)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": category_id,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0, "score": concept.score, "mask_file": mask_file,
                "attributes": {"decision": concept.decision, "original_phrase": concept.phrase,
                               "comment": concept.comment, "concept_index": concept.index,
                               "provenance": concept.provenance, "edited": concept.provenance != "model",
                               "reviewer": review.reviewer, "revision": review.revision},
            })
    coco = {
        "info": {"description": "skinapp reviewed concept masks", "date_created": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "version": "1.0"},
        "images": images,
        "categories": [{"id": i, "name": name, "supercategory": "concept"} for name, i in categories.items()],
        "annotations": annotations,
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1))
    log.info("Exported %d annotations over %d images", len(annotations), len(images))  # the folder: the caller's
    return path


def export_zip(store: ReviewStore, out_dir: str | Path, image_keys: list[str] | None = None) -> Path:
    """:func:`export_coco` into ``out_dir/export-<time>/`` and zip it; returns the zip path."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    folder = Path(out_dir) / f"export-{stamp}"
    export_coco(store, folder, image_keys)
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder))
    return archive
