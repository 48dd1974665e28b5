"""Image-folder loader: ``root/<label>/<image>``; each image is its own case."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from train.data.manifest import IMAGE_SUFFIXES, ImageRecord, LabelledImages, SkipLog, check_classes


def load_folder(root: str | Path, class_names: Sequence[str] | None = None) -> LabelledImages:
    """Read ``root/<label>/<image>`` (image suffixes: IMAGE_SUFFIXES, any case); other files are logged and skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Image folder not found: {root}; check the path given (--data folder:ROOT).")
    skips = SkipLog()
    records: list[ImageRecord] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(label_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skips.skip("non-image files", f"{rel}: not an image file")
                continue
            records.append(ImageRecord(path, rel, label_dir.name, rel))
    records, names = check_classes(records, class_names, skips)
    if not records:
        raise ValueError(f"{root}: no images found in root/<label>/ folders ({skips.summary()}); put each class's "
                         "images in a subfolder named after the class.")
    return LabelledImages(records, names, skips, f"folder:{root}")
