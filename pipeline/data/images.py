"""A photo (file or bytes) to the pixels a model takes, as the prepare stage makes them.

prepare.py decodes the training images: RGB, a bilinear resize to a square (the aspect ratio
is not kept, as in the book). Photos from phones also store their orientation in EXIF, which
viewers apply: so does this, before resizing, or a portrait photo reaches the model on its side.

A huge photo is never held whole: a JPEG is decoded straight at 1/2, 1/4 or 1/8 of its size
(Pillow's `draft`: libjpeg scales while it decodes), keeping at least SHRINK_MARGIN times the
model's side, and any other image larger than that is reduced (`Image.reduce`) right after
decoding. What is decoded may hold at most MAX_PIXELS, far below Pillow's own bomb limit
(89 megapixels): a 144-megapixel JPEG decodes as 2.3 megapixels; a 50-megapixel PNG, which
cannot be decoded smaller, is refused. Photos up to SHRINK_MARGIN times the model's side
(every photo of the book's dataset) are decoded and resized exactly as prepare does.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 25_000_000  # decoded per photo: 75 MB as RGB (a 6000 x 4000 camera photo fits)
SHRINK_MARGIN = 4  # a photo is shrunk on decoding to no less than 4x the model's side

# This module bounds what it decodes (MAX_PIXELS, after a JPEG's draft), so Pillow's warning
# about images over its 89-megapixel limit says nothing true here; its error (twice that) stays.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImage(ValueError):
    """Not an image Pillow can decode (or a truncated one); the message says why."""


class ImageTooLarge(UnreadableImage):
    """An image whose decoding would hold more than MAX_PIXELS."""


def square_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB, resized bilinearly to a square (like keras.utils.image_dataset_from_directory; the
    aspect ratio is not kept, as in the book): what every model is fed, as uint8."""
    resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def decode(source: bytes | Path | str, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8 pixels of a JPEG, PNG or WebP file or its bytes."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            small = shrunk(image, image_size)
            ImageOps.exif_transpose(small, in_place=True)
            return square_pixels(small, image_size)
    # Pillow's decoders raise many types on malformed data (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...): every one of them means "not a readable image".
    except FileNotFoundError:
        raise UnreadableImage("no such file") from None
    except UnidentifiedImageError:  # its message repeats the path or a BytesIO repr
        raise UnreadableImage("not a readable image (not a format Pillow knows)") from None
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, checked when it opens a file
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageTooLarge(
            f"too large: more than {limit:.0f} megapixels; send a smaller copy"
        ) from None
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"not a readable image ({reason})") from None


def shrunk(image: Image.Image, image_size: int) -> Image.Image:
    """`image` (just opened) decoded at no less than SHRINK_MARGIN x image_size on its shorter
    side where it is larger: a JPEG by its draft, anything else reduced after decoding.
    ImageTooLarge where that still holds more than MAX_PIXELS."""
    wanted = image_size * SHRINK_MARGIN
    declared = image.size
    if image.format == "JPEG":
        image.draft("RGB", (wanted, wanted))  # sets image.size to the scaled size
    # A progressive JPEG keeps every DCT coefficient of the whole image while it decodes.
    progressive = bool(image.info.get("progressive"))
    held = declared if progressive else image.size
    if held[0] * held[1] > MAX_PIXELS:
        what = "a progressive JPEG (decoded whole) of " if progressive else ""
        raise ImageTooLarge(
            f"too large: {what}{declared[0]} x {declared[1]} pixels, "
            f"{held[0] * held[1] / 1e6:.3g} megapixels to decode, more than the "
            f"{MAX_PIXELS / 1e6:.3g} allowed; send a smaller copy"
        )
    image.load()
    factor = min(image.size) // wanted
    if factor < 2:
        return image
    if image.mode not in ("RGB", "L"):  # reduce needs plain samples (not a palette)
        image = image.convert("RGB")
    return image.reduce(factor)
