"""Load and normalise a photo once, before any model sees it.

Every entry point (app, training, benchmarks) goes through :func:`load_image`, which turns whatever
the user gave us into a :class:`LoadedImage`: 8-bit RGB pixels at a bounded working size, upright
(EXIF orientation applied), with a content hash that keys every per-image cache downstream.

Bad input raises :class:`InvalidImageError` (a ``ValueError``) with a message fit to show a user.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Refuse to decode more pixels than this (decompression-bomb guard): 100 megapixels.
MAX_DECODED_PIXELS = 100_000_000
#: Pillow's own decompression-bomb guard must never refuse a photo below our limit (it warns at
#: MAX_IMAGE_PIXELS and refuses at twice that): raise it to our limit, keep it where it is higher.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_DECODED_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS
#: Refuse files larger than this many bytes before decoding.
MAX_FILE_BYTES = 60 * 1024 * 1024
#: Images are downscaled so that their long side is at most this for all models and displays.
MAX_WORKING_SIDE = 1024
#: Images whose short side is below this are refused: nothing can be diagnosed on them.
MIN_SIDE = 32


class InvalidImageError(ValueError):
    """The input is not a usable photo. The message is written for the end user."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A normalised photo.

    Attributes:
        pixels: uint8 array [H, W, 3], RGB, at working resolution (long side <= MAX_WORKING_SIDE).
        key: SHA-256 hex digest of the working pixels and their shape; keys every per-image cache.
        original_size: (H0, W0) of the upright decoded photo before downscaling.
        scale: working size / original size (<= 1.0); multiply original coordinates by it.
        notes: human-readable notes about conversions applied (e.g. "converted from CMYK").
    """

    pixels: np.ndarray
    key: str
    original_size: tuple[int, int]
    scale: float = 1.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the working pixels."""
        return self.height, self.width

    def pil(self) -> Image.Image:
        """A PIL copy of the working pixels."""
        return Image.fromarray(self.pixels)

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map pixel boxes [n, 4] (x0, y0, x1, y1) from working to original coordinates."""
        return np.asarray(boxes_xyxy, dtype=np.float64) / self.scale


def content_key(pixels: np.ndarray) -> str:
    """SHA-256 of an image array's shape and bytes."""
    h = hashlib.sha256()
    h.update(repr((pixels.shape, str(pixels.dtype))).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _open(source: Any, notes: list[str]) -> Image.Image:
    """Open ``source`` (path, bytes, file object, PIL image or array) as a PIL image; decoding notes go to
    ``notes``."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, notes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InvalidImageError("The file is empty.")
        if len(data) > MAX_FILE_BYTES:
            raise InvalidImageError(f"The file is too large ({len(data) / 2**20:.0f} MB; limit "
                                    f"{MAX_FILE_BYTES / 2**20:.0f} MB).")
        return _open_stream(io.BytesIO(data), notes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_symlink() and not path.exists():
            raise InvalidImageError("The photo file is a broken link: the file it points to is missing (moved or "
                                    "deleted?).")
        if not path.is_file():
            raise InvalidImageError("The photo file could not be found (moved or deleted?).")
        size = path.stat().st_size
        if size == 0:
            raise InvalidImageError("The file is empty.")
        if size > MAX_FILE_BYTES:
            raise InvalidImageError(f"The file is too large ({size / 2**20:.0f} MB; limit "
                                    f"{MAX_FILE_BYTES / 2**20:.0f} MB).")
        return _open_stream(io.BytesIO(path.read_bytes()), notes)
    if hasattr(source, "read"):
        return _open(source.read(), notes)
    raise InvalidImageError(f"Unsupported input type: {type(source).__name__}")


def _too_large(width: int, height: int) -> InvalidImageError:
    return InvalidImageError(f"The image is too large to process ({width}x{height} = {width * height / 1e6:.0f} MP; "
                             f"limit {MAX_DECODED_PIXELS / 1e6:.0f} MP).")


#: PNG colour types (IHDR byte 9) that Pillow narrows to 8 bits per channel when stored at 16 (16-bit grayscale,
#: type 0, stays 16-bit as mode I;16 and is noted by :func:`_to_rgb`).
_PNG_NARROWED = {2: "RGB", 4: "grayscale with alpha", 6: "RGBA"}


def _png_narrowed(data: bytes) -> str | None:
    """The note for a PNG stored at 16 bits per channel that Pillow decodes to 8 (from its IHDR chunk), else None.

    IHDR is the first chunk (PNG spec): 8-byte signature, length, b"IHDR", width, height, then bit depth and
    colour type at bytes 24 and 25.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    depth, colour = data[24], data[25]
    if depth == 16 and colour in _PNG_NARROWED:
        return f"converted from 16-bit {_PNG_NARROWED[colour]} (high bit depth) to 8-bit"
    return None


def _open_stream(stream: io.BytesIO, notes: list[str]) -> Image.Image:
    narrowed = _png_narrowed(stream.read(26))
    stream.seek(0)
    if narrowed:
        notes.append(narrowed)
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it: our own check below decides, with the size in the message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
        w, h = img.size
        if w * h > MAX_DECODED_PIXELS:
            raise _too_large(w, h)
        img.load()
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused before the size is known
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP; " if found else ""
        raise InvalidImageError(f"The image is too large to process ({size}limit "
                                f"{MAX_DECODED_PIXELS / 1e6:.0f} MP).") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("This file is not an image we can read (try JPEG or PNG).") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # the decoder's words ("12 bytes not processed") stay in DEBUG
        log.debug("image decoding failed: %s", exc)
        raise InvalidImageError("The image file is incomplete or damaged (was it fully copied?); save or export it "
                                "again as JPEG or PNG.") from exc
    return img


def _from_array(arr: np.ndarray, notes: list[str]) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(f"Expected an image array [H, W], [H, W, 3] or [H, W, 4]; got {arr.shape}.")
    if arr.size == 0:
        raise InvalidImageError("The image is empty.")
    if arr.shape[0] * arr.shape[1] > MAX_DECODED_PIXELS:
        raise _too_large(arr.shape[1], arr.shape[0])
    if arr.dtype != np.uint8:
        kind = arr.dtype.name
        arr, reading = _read_as_uint8(arr.astype(np.float64))
        notes.append(f"{kind} values {reading}")
    return Image.fromarray(arr)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 (16-bit, float, int32 images); see :func:`_read_as_uint8`."""
    return _read_as_uint8(values)[0]


def _read_as_uint8(values: np.ndarray) -> tuple[np.ndarray, str]:
    """(uint8 array, how the values were read). The dtype says little (a float photo may hold 0..1 or 0..255),
    so the range decides: [0, 1] is scaled by 255, [0, 255] kept, [0, 65535] read as 16-bit (/ 257), anything
    else stretched from its own min..max (colours then relative to the photo)."""
    if not np.isfinite(values).all():
        raise InvalidImageError("The image contains invalid (NaN or infinite) values.")
    lo, hi = float(values.min()), float(values.max())
    if hi <= 1.0 and lo >= 0.0:
        scaled, reading = values * 255.0, "in [0, 1] scaled to 8-bit"
    elif hi <= 255 and lo >= 0:
        scaled, reading = values, "in [0, 255] read as 8-bit"
    elif lo >= 0 and hi <= 65535:
        scaled, reading = values / 257.0, "read as 16-bit and narrowed to 8-bit"
    else:
        scaled = (values - lo) / max(hi - lo, 1e-12) * 255.0
        reading = f"from {lo:g} to {hi:g} stretched to 8-bit: colours are relative to the photo's own range"
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8), reading


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        notes.append(f"converted from {mode} (high bit depth) to 8-bit")
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_to_uint8(arr)).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("transparent areas placed on white")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("converted from CMYK")
    elif mode in ("L", "1"):
        notes.append("grayscale photo: colour cues are unavailable")
    elif mode != "P":
        notes.append(f"converted from {mode}")
    return img.convert("RGB")


def load_image(source: Any, max_side: int = MAX_WORKING_SIDE) -> LoadedImage:
    """Decode, orient, convert and bound a photo.

    Args:
        source: a path, bytes, a binary file object, a PIL image or a numpy array
            ([H, W], [H, W, 3] or [H, W, 4]; uint8, uint16 or float).
        max_side: the long side of the working image; larger photos are downscaled (area filter).

    Returns:
        A :class:`LoadedImage` with RGB uint8 pixels [H, W, 3].

    Raises:
        InvalidImageError: not an image, damaged, empty, too small, too large.
    """
    if isinstance(source, LoadedImage):
        return source
    if source is None:
        raise InvalidImageError("No image was given.")
    notes: list[str] = []
    img = _open(source, notes)
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        notes.append(f"{'animated' if img.format == 'GIF' else 'multi-frame'} image ({frames} frames): only the "
                     "first frame is analysed")
    upright = img
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation not in (1, None):
            upright = ImageOps.exif_transpose(img)
            notes.append("rotated upright from EXIF orientation")
    except Exception as exc:  # damaged EXIF must not stop the photo from loading
        log.warning("Ignoring unreadable EXIF orientation: %s", exc)
    rgb = _to_rgb(upright, notes)
    w0, h0 = rgb.size
    if min(w0, h0) < MIN_SIDE:
        raise InvalidImageError(f"The image is too small ({w0}x{h0}); at least {MIN_SIDE} pixels per side "
                                "are needed.")
    if max(w0, h0) / min(w0, h0) > 20:
        raise InvalidImageError(f"The image shape is too extreme ({w0}x{h0}) to be a photo of skin.")
    scale = min(1.0, max_side / max(w0, h0))
    if scale < 1.0:
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX if scale < 0.5 else Image.Resampling.BILINEAR)
        notes.append(f"downscaled from {w0}x{h0} to {size[0]}x{size[1]}")
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    pixels.setflags(write=False)
    return LoadedImage(pixels=pixels, key=content_key(pixels), original_size=(h0, w0), scale=scale,
                       notes=tuple(notes))
