"""Decoding a photo (pipeline/data/images.py): ordinary photos as prepare decodes them, huge
ones reduced on decoding or refused within the pixel limit, and EXIF orientation applied."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.data import images
from tests.helpers.photos import encoded, photo


def test_ordinary_photos_decode_exactly_as_prepare_does():
    # The book's photos are about 500 x 375: no draft, no reduce, prepare's resize.
    for fmt in ("JPEG", "PNG"):
        data = encoded(photo((500, 375)), fmt)
        with Image.open(io.BytesIO(data)) as image:
            expected = images.square_pixels(image, 150)
        np.testing.assert_array_equal(images.decode(data, 150), expected)


def test_a_huge_jpeg_decodes_small_within_the_pixel_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    big = photo((2400, 2400))  # 5.8 megapixels: over this limit unless decoded at 1/4
    data = encoded(big, "JPEG", quality=90)
    pixels = images.decode(data, 150)
    full = images.square_pixels(big, 150)  # the whole image, resized as prepare does
    assert np.abs(pixels.astype(int) - full).mean() < 2  # of 255
    with pytest.raises(images.ImageTooLarge, match=r"too large: 2400 x 2400 pixels, 5.76 mega"):
        images.decode(encoded(big, "PNG"), 150)  # a PNG cannot be decoded smaller
    progressive = encoded(big, "JPEG", progressive=True)
    with pytest.raises(images.ImageTooLarge, match=r"a progressive JPEG \(decoded whole\)"):
        images.decode(progressive, 150)


def test_decode_applies_exif_orientation():
    rng = np.random.default_rng(3)
    upright = Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).resize((80, 48))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    plain = io.BytesIO()
    upright.save(plain, format="PNG")
    np.testing.assert_array_equal(
        images.decode(buffer.getvalue(), 32), images.decode(plain.getvalue(), 32)
    )


def test_exif_orientation_survives_the_reduction():
    upright = photo((1024, 512), seed=4)  # reduced 2x on decoding for 64 px
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side; rotate 90 degrees clockwise to display
    stored = encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    np.testing.assert_array_equal(
        images.decode(stored, 64), images.decode(encoded(upright, "PNG"), 64)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be `width` x `height`: Pillow refuses it on opening."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_pillows_own_bomb_limit_reads_as_too_large():
    with pytest.raises(images.ImageTooLarge, match=r"^too large: more than 179 megapixels"):
        images.decode(png_header_only(20_000, 10_000), 150)
