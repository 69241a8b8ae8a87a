"""Synthetic dogs-vs-cats archives that a tiny convnet can learn, in both public layouts.

Cats are reddish with horizontal stripes, dogs bluish with vertical stripes, each with
random phase, stripe width and noise, so a model has to look at the picture to tell them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.uniform(6, 12)
    axis = yy if label == "cat" else xx
    stripes = (np.sin(2 * np.pi * axis / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    tint = np.array([200, 90, 60] if label == "cat" else [60, 90, 200], np.float32)
    pixels = stripes[..., None] * tint + rng.normal(40, 25, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def member_name(layout: str, label: str, number: int) -> str:
    if layout == "kaggle":
        return f"train/{label}.{number}.jpg"
    return f"PetImages/{label.capitalize()}/{number}.jpg"


def write_archive(
    path: Path,
    layout: str = "kaggle",
    per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    bad: dict[tuple[str, int], bytes] | None = None,
    classes: tuple[str, ...] = ("cat", "dog"),
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write a zip of `per_class` images per class; `bad` replaces some images' bytes."""
    rng = np.random.default_rng(seed)
    bad = bad or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for label in classes:
            for number in range(per_class):
                image = jpeg_bytes(synthetic_image(label, size, rng))
                data = bad.get((label, number), image)
                archive.writestr(member_name(layout, label, number), data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def corrupt_jpeg(seed: int = 1) -> bytes:
    """A JPEG cut in the middle of its scan data: the header is fine, decoding fails."""
    data = jpeg_bytes(synthetic_image("cat", 64, np.random.default_rng(seed)))
    return data[: len(data) // 2]


def patch_images(
    count: int, size: int = 64, patch: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose class is decided only by a small patch at a random place: grey noise
    everywhere, and a patch of horizontal (cat, 0) or vertical (dog, 1) stripes.
    Returns uint8 images, labels and each patch's box (top, left, bottom, right), exclusive."""
    rng = np.random.default_rng(seed)
    images = rng.normal(120, 30, (count, size, size, 3)).clip(0, 255)
    labels = rng.integers(0, 2, count).astype(np.uint8)
    corners = rng.integers(0, size - patch + 1, (count, 2))
    yy, xx = np.mgrid[0:patch, 0:patch]
    for image, label, (top, left) in zip(images, labels, corners, strict=True):
        stripes = ((xx if label else yy) // 2) % 2  # 2-pixel stripes
        image[top : top + patch, left : left + patch] = np.where(stripes[..., None], 250, 10)
    boxes = np.concatenate([corners, corners + patch], axis=1)
    return images.astype(np.uint8), labels, boxes
