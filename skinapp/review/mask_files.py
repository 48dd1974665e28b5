"""The review store's files: the photo and each save's concept masks, written atomically.

Layout under the data directory (see :mod:`skinapp.review.store`)::

    photos/<image_key>.png                a photo (8-bit RGB PNG)
    masks/<image_key>/<version>/<i>.png   concept i's mask (8-bit, 0/255) as written by one save
    masks/<image_key>/<i>.png             the same, for reviews saved before versions existed (version "")

Every file is written to a temporary file in its folder, fsynced and renamed over its name (``os.replace``),
so a reader (or a killed writer) never sees half a PNG. Which version folders are still wanted is the
database's business: :meth:`MaskFiles.remove_stale` is told the names to keep.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 [H, W] or [H, W, 3]) as a PNG at ``path``: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MaskFiles:
    """Paths, atomic writes and reads of the photos and masks under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def photo_path(self, image_key: str) -> Path:
        return self.data_dir / "photos" / f"{image_key}.png"

    def version_dir(self, image_key: str, version: str = "") -> Path:
        """The folder of one save's masks ("" = the pre-version layout)."""
        folder = self.data_dir / "masks" / image_key
        return folder / version if version else folder

    def mask_path(self, image_key: str, index: int, version: str = "") -> Path:
        """Where concept ``index``'s mask of one saved ``version`` lives."""
        return self.version_dir(image_key, version) / f"{index}.png"

    def write_save(self, image_key: str, pixels: np.ndarray, masks: np.ndarray, indices: list[int]) -> str:
        """Write the photo and masks[i] for each i in ``indices`` (bool [n, H, W]) into a new version folder.

        Returns:
            The version's name (a random hex id). On any error the folder is removed and the error re-raised.
        """
        version = uuid.uuid4().hex
        try:
            atomic_write_png(self.photo_path(image_key), pixels)  # same key -> same pixels: safe to share
            for i in indices:
                atomic_write_png(self.mask_path(image_key, i, version), masks[i].astype(np.uint8) * 255)
        except BaseException:
            self.discard(image_key, version)
            raise
        return version

    def discard(self, image_key: str, version: str) -> None:
        """Remove one version's folder (a save whose transaction did not commit)."""
        shutil.rmtree(self.version_dir(image_key, version), ignore_errors=True)

    def remove_stale(self, image_key: str, named: set[str], max_age: float) -> None:
        """Delete this photo's mask folders (and legacy flat files, unless "" is in ``named``) that ``named``
        does not list and that are older than ``max_age`` seconds (a slower concurrent writer keeps its files)."""
        folder = self.version_dir(image_key)
        if not folder.is_dir():
            return
        cutoff = time.time() - max_age
        for entry in folder.iterdir():
            if entry.name in named or entry.name.startswith(".tmp-") or (entry.is_file() and "" in named):
                continue
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:  # another process removed it first
                continue

    def read_mask(self, image_key: str, index: int, version: str) -> np.ndarray:
        """bool [H, W]. Raises FileNotFoundError when that version has no such mask."""
        return np.asarray(Image.open(self.mask_path(image_key, index, version))) > 127

    def read_photo(self, image_key: str) -> np.ndarray:
        """uint8 RGB [H, W, 3]."""
        return np.asarray(Image.open(self.photo_path(image_key)).convert("RGB"))
