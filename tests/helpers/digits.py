"""Synthetic MNIST that a tiny network learns in a few steps: seven-segment digits, white on
black as MNIST's, 28 x 28 uint8, each shifted a few pixels and drawn with noise, so a model has
to look at the strokes. Written as an `mnist.npz` in the layout of keras.datasets.mnist."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Segments a (top), b (top right), c (bottom right), d (bottom), e (bottom left), f (top left),
# g (middle) lit for each digit.
SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abfgcd")
# Each segment as (top, left, bottom, right) in a 20 x 12 box, exclusive.
BOXES = {
    "a": (0, 0, 3, 12), "g": (9, 0, 12, 12), "d": (17, 0, 20, 12),
    "f": (0, 0, 11, 3), "b": (0, 9, 11, 12), "e": (9, 0, 20, 3), "c": (9, 9, 20, 12),
}  # fmt: skip


def digit_image(digit: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(0, 12, (28, 28)).clip(0, 255)
    top, left = rng.integers(1, 8), rng.integers(4, 13)
    brightness = rng.uniform(180, 255)
    for segment in SEGMENTS[digit]:
        t, lf, b, r = BOXES[segment]
        image[top + t : top + b, left + lf : left + r] = brightness
    return image.astype(np.uint8)


def digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` digits, the classes in turn: (uint8 (count, 28, 28), uint8 labels)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return np.stack([digit_image(int(d), rng) for d in labels]), labels


def write_mnist(path: Path, train: int = 300, test: int = 100, **replace) -> Path:
    """An mnist.npz of synthetic digits; `replace` swaps arrays (x_train=...) or, with None,
    leaves one out: for the bad inputs."""
    (x_train, y_train), (x_test, y_test) = digits(train, 1), digits(test, 2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays |= replace
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path
