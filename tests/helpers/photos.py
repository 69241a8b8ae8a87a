"""Photo-like images of any size, and their bytes in a given format."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth photo-like image of `size` (w, h): noise of a 50th of the size, upscaled."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(size[1] // 50, 2), max(size[0] // 50, 2), 3), np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    if fmt == "PNG":
        options.setdefault("compress_level", 1)  # fast
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
