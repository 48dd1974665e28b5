"""Bad and unusual photos: each gives a correct result or a clear InvalidImageError, never a deep crash."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from skinapp.image import MAX_WORKING_SIDE, InvalidImageError, LoadedImage, load_image


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_array_roundtrip(skin_photo):
    li = load_image(skin_photo.pixels)
    assert isinstance(li, LoadedImage)
    assert li.pixels.dtype == np.uint8 and li.pixels.shape == skin_photo.pixels.shape
    assert np.array_equal(li.pixels, skin_photo.pixels)
    assert li.scale == 1.0 and li.notes == ()
    assert load_image(skin_photo.pixels.copy()).key == li.key
    other = skin_photo.pixels.copy()
    other[0, 0, 0] ^= 1
    assert load_image(other).key != li.key


def test_path_and_bytes_agree(tmp_path, skin_photo):
    path = tmp_path / "photo.png"
    Image.fromarray(skin_photo.pixels).save(path)
    assert load_image(path).key == load_image(path.read_bytes()).key == load_image(str(path)).key
    with open(path, "rb") as f:
        assert load_image(f).key == load_image(skin_photo.pixels).key


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"this is a text file, not a photo", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|damaged"),
])
def test_not_an_image(payload, message):
    with pytest.raises(InvalidImageError, match=message):
        load_image(payload)


def test_truncated_jpeg_says_what_to_do_not_what_the_decoder_saw(skin_photo):
    """Found by a new user: "The image file is damaged or truncated (image file is truncated (12 bytes not
    processed))." repeated itself and said nothing a user can act on."""
    data = _png_bytes(Image.fromarray(skin_photo.pixels), "JPEG")
    with pytest.raises(InvalidImageError) as info:
        load_image(data[: len(data) // 2])
    assert str(info.value) == ("The image file is incomplete or damaged (was it fully copied?); save or export it "
                               "again as JPEG or PNG.")


def test_missing_file_message_names_no_file(tmp_path):
    missing = r"^The photo file could not be found \(moved or deleted\?\)\.$"
    with pytest.raises(InvalidImageError, match=missing) as info:
        load_image(tmp_path / "Jane_Doe_forearm.jpg")  # the same words in the app and the batch command
    assert "Jane" not in str(info.value), "file names may hold patient names: never in messages or logs"


def test_none_and_wrong_type():
    with pytest.raises(InvalidImageError, match="No image was given"):
        load_image(None)
    with pytest.raises(InvalidImageError, match="Unsupported"):
        load_image(3.5)


@pytest.mark.parametrize("size", [(1, 1), (10, 500), (31, 31)])
def test_tiny_images_refused(size):
    with pytest.raises(InvalidImageError, match="too small"):
        load_image(np.zeros((*size, 3), np.uint8))


def test_absurd_aspect_refused():
    with pytest.raises(InvalidImageError, match="extreme"):
        load_image(np.zeros((40, 2000, 3), np.uint8))


def test_huge_image_is_downscaled_and_keeps_original_coordinates():
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[1000:2000, 2000:3000] = 200
    li = load_image(_png_bytes(Image.fromarray(big)))
    assert max(li.size) == MAX_WORKING_SIDE
    assert li.original_size == (3000, 4000)
    assert li.scale == pytest.approx(MAX_WORKING_SIDE / 4000)
    box = np.array([[2000, 1000, 3000, 2000]]) * li.scale
    assert np.allclose(li.boxes_to_original(box), [[2000, 1000, 3000, 2000]])
    assert any("downscaled" in n for n in li.notes)


def test_decompression_bomb_refused():
    # A 12000x12000 PNG header is cheap to write as a 1-bit image; decoding it would be 144 MP.
    bomb = Image.new("1", (12000, 12000))
    with pytest.raises(InvalidImageError, match=r"12000x12000 = 144 MP; limit 100 MP"):
        load_image(_png_bytes(bomb))
    # over twice Pillow's limit: Pillow refuses before we see the size; the message still says both numbers
    with pytest.raises(InvalidImageError, match=r"\(\d+ MP; limit 100 MP\)"):
        load_image(_png_bytes(Image.new("1", (20000, 15000))))


def test_pillow_limit_does_not_refuse_images_below_ours():
    # 95 MP: above Pillow's default 89.5 MP warning threshold, below our 100 MP limit
    image = Image.new("1", (10000, 9500))
    li = load_image(_png_bytes(image))
    assert li.original_size == (9500, 10000)


def test_animated_gif_says_first_frame(skin_photo):
    frames = [Image.fromarray(skin_photo.pixels), Image.fromarray(255 - skin_photo.pixels)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    li = load_image(buf.getvalue())
    assert any("first frame" in n and "2 frames" in n for n in li.notes)


def test_grayscale_rgba_16bit_cmyk_palette(skin_photo):
    rgb = Image.fromarray(skin_photo.pixels)
    gray = load_image(_png_bytes(rgb.convert("L")))
    assert gray.pixels.shape[2] == 3 and np.array_equal(gray.pixels[..., 0], gray.pixels[..., 1])
    assert any("grayscale" in n for n in gray.notes)

    rgba = rgb.convert("RGBA")
    alpha = np.array(rgba)
    alpha[:50, :50, 3] = 0
    li = load_image(_png_bytes(Image.fromarray(alpha)))
    assert (li.pixels[:50, :50] == 255).all(), "transparent pixels go on white"
    assert np.array_equal(li.pixels[100:, 100:], skin_photo.pixels[100:, 100:])

    sixteen = (np.asarray(rgb.convert("L"), np.uint16) * 257)
    li16 = load_image(_png_bytes(Image.fromarray(sixteen)))
    assert li16.pixels.dtype == np.uint8
    assert np.abs(li16.pixels[..., 0].astype(int) - np.asarray(rgb.convert("L"), int)).max() <= 1

    cmyk = load_image(_png_bytes(rgb.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.pixels.shape == skin_photo.pixels.shape
    assert np.abs(cmyk.pixels.astype(int) - skin_photo.pixels.astype(int)).mean() < 12
    assert any("CMYK" in n for n in cmyk.notes)

    pal = load_image(_png_bytes(rgb.convert("P")))
    assert pal.pixels.shape == skin_photo.pixels.shape

    floats = load_image(skin_photo.pixels.astype(np.float32) / 255.0)
    assert np.abs(floats.pixels.astype(int) - skin_photo.pixels.astype(int)).max() <= 1


def test_a_16_bit_rgb_png_is_noted_like_the_other_conversions(tmp_path, skin_photo):
    """Known defect: Pillow narrows a 16-bit-per-channel RGB(A) PNG to 8 bits without a word, while a 16-bit
    grayscale PNG, CMYK or alpha each got a note. Written by OpenCV (BGR order), as scanners and raw converters
    write them."""
    rgb = skin_photo.pixels
    path = tmp_path / "sixteen.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1].astype(np.uint16) * 257)
    for source in (path, path.read_bytes()):
        li = load_image(source)
        np.testing.assert_array_equal(li.pixels, rgb)  # v * 257 narrows back to v
        assert li.notes == ("converted from 16-bit RGB (high bit depth) to 8-bit",)
    alpha = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]).astype(np.uint16) * 257
    assert cv2.imwrite(str(path), alpha)
    assert load_image(path).notes == ("converted from 16-bit RGBA (high bit depth) to 8-bit",
                                      "transparent areas placed on white")
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # 8-bit: nothing to say
    assert load_image(path).notes == ()


@pytest.mark.parametrize("scale, dtype, note", [
    (257, np.uint16, "uint16 values read as 16-bit and narrowed to 8-bit"),
    (1 / 255, np.float32, "float32 values in [0, 1] scaled to 8-bit"),
    (1, np.int32, "int32 values in [0, 255] read as 8-bit"),
    (1000, np.int64, "int64 values from {lo} to {hi} stretched to 8-bit: colours are relative to the photo's own "
                     "range"),
])
def test_an_array_that_is_not_8_bit_is_noted_with_how_it_was_read(skin_photo, scale, dtype, note):
    """API callers pass arrays; a file's high bit depth gets a note, so does an array's (the reading is a guess
    from the dtype and the values' range, and the user should see which guess was made)."""
    arr = (skin_photo.pixels.astype(np.float64) * scale).astype(dtype)
    li = load_image(arr)
    assert li.notes == (note.format(lo=arr.min(), hi=arr.max()),)
    if scale in (257, 1 / 255, 1):
        assert np.abs(li.pixels.astype(int) - skin_photo.pixels.astype(int)).max() <= 1
    assert load_image(skin_photo.pixels).notes == ()  # uint8: nothing to say


def test_nan_array_refused():
    arr = np.full((64, 64, 3), np.nan, np.float32)
    with pytest.raises(InvalidImageError, match="NaN"):
        load_image(arr)


@pytest.mark.parametrize("orientation, transform", [
    (3, lambda a: a[::-1, ::-1]),          # rotated 180
    (6, lambda a: np.rot90(a, k=-1)),      # rotate 90 CW to display
    (8, lambda a: np.rot90(a, k=1)),       # rotate 90 CCW to display
])
def test_exif_rotation_applied(orientation, transform):
    arr = np.zeros((60, 100, 3), np.uint8)
    arr[:20, :30] = (255, 0, 0)  # a red marker in the stored top-left corner
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    li = load_image(_png_bytes(img, "PNG", exif=exif.tobytes()))
    expected = np.ascontiguousarray(transform(arr))
    assert li.pixels.shape == expected.shape
    assert np.array_equal(li.pixels, expected)
    assert any("EXIF" in n for n in li.notes)
