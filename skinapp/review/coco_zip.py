"""Read the zip :func:`skinapp.review.export.export_zip` writes (``annotations.json`` + ``images/<key>.png``) for
:func:`skinapp.review.coco_import.import_coco`, so an export imports into another store with its photos.

A photo from the zip is trusted only when its pixels give the key its name says (:func:`skinapp.image.content_key`,
the key the app gives every photo): a zip cannot slip another photo under a known key.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from skinapp.image import MAX_DECODED_PIXELS, content_key

#: Largest ``annotations.json`` (bytes, uncompressed) read from a zip.
MAX_JSON_BYTES = 512 * 1024 * 1024


def is_archive(path: str | Path) -> bool:
    """True when ``path`` is a readable zip file (False for a JSON file, a folder or a missing file)."""
    try:
        return Path(path).is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


class ExportArchive:
    """An export zip opened for reading (use as a context manager).

    Raises:
        ValueError: the zip cannot be read.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"The zip could not be read ({exc.__class__.__name__}).") from None
        self._names = set(self._zip.namelist())

    def __enter__(self) -> ExportArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def annotations_text(self) -> bytes:
        """The bytes of ``annotations.json``; ValueError when the zip has none, or it is too large or damaged."""
        if "annotations.json" not in self._names:
            raise ValueError("The zip holds no annotations.json: import the zip the Review tab exported, or a COCO "
                             "JSON file.")
        if self._zip.getinfo("annotations.json").file_size > MAX_JSON_BYTES:
            raise ValueError(f"The zip's annotations.json is over {MAX_JSON_BYTES // 2 ** 20} MiB.")
        return self._read("annotations.json")

    def photo(self, key: str) -> np.ndarray | None:
        """uint8 RGB [H, W, 3] of ``images/<key>.png``, or None when the zip has no such photo.

        Raises:
            ValueError: the photo cannot be decoded, is too large, or its pixels give another key than ``key``.
        """
        name = f"images/{key}.png"
        if name not in self._names:
            return None
        shown = f"images/{key[:12]}….png"
        try:
            with Image.open(io.BytesIO(self._read(name))) as image:
                if image.width * image.height > MAX_DECODED_PIXELS:
                    raise ValueError(f"the zip's photo {shown} is too large")
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"the zip's photo {shown} cannot be decoded ({exc.__class__.__name__})") from None
        if content_key(pixels) != key:
            raise ValueError(f"the zip's photo {shown} is not the photo its name says (its pixels give another key)")
        return pixels

    def _read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"The zip's {name} could not be read ({exc.__class__.__name__}).") from None
