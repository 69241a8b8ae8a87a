"""A photo (file or bytes) to the pixels a model takes, as the prepare stage makes them.

prepare.py decodes the training images: RGB, a bilinear resize to a square (the aspect ratio
is not kept, as in the book). Photos from phones also store their orientation in EXIF, which
viewers apply: so does this, before resizing, or a portrait photo reaches the model on its side.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class UnreadableImage(ValueError):
    """Not an image Pillow can decode (or a truncated one); the message says why."""


def square_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB, resized bilinearly to a square (like keras.utils.image_dataset_from_directory; the
    aspect ratio is not kept, as in the book): what every model is fed, as uint8."""
    resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def decode(source: bytes | Path | str, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8 pixels of a JPEG, PNG or WebP file or its bytes."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return square_pixels(ImageOps.exif_transpose(image), image_size)
    # Pillow's decoders raise many types on malformed data (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...): every one of them means "not a readable image".
    except FileNotFoundError:
        raise UnreadableImage("no such file") from None
    except UnidentifiedImageError:  # its message repeats the path or a BytesIO repr
        raise UnreadableImage("not a readable image (not a format Pillow knows)") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"not a readable image ({reason})") from None
