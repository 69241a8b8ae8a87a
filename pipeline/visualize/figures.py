"""Drawing the visualisations: heatmap overlays, galleries, tiled grids (matplotlib, Agg).

Grids of many small images (activation channels, filter patterns) are tiled into one
array and drawn with a single imshow: a subplot per channel would take seconds per figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np

from pipeline.data import CLASSES
from pipeline.reporting.plots import save_png
from pipeline.serving.inference import predicted_labels

HEAT_ALPHA = 0.4  # keras.io's Grad-CAM overlay weight


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 image with a jet-coloured heatmap (same height and width, in [0, 1]) over it."""
    jet = plt.get_cmap("jet")(heat)[..., :3]
    return ((1 - HEAT_ALPHA) * image / 255.0 + HEAT_ALPHA * jet).clip(0, 1)


def caption(label: int, p_dog: float) -> str:
    return f"{CLASSES[label]} · P(dog) {p_dog:.2f}"


def _is_wrong(label: int, p_dog: float) -> bool:
    return bool(predicted_labels(p_dog) != label)


def picture_grid(
    pictures: list[np.ndarray], titles: list[str], wrong: list[bool], title: str, out: Path
) -> None:
    """Pictures in rows of four, each titled; titles of wrong predictions in red."""
    columns = min(4, max(1, len(pictures)))
    rows = max(1, -(-len(pictures) // columns))
    width = 2.6 * columns * pictures[0].shape[1] / pictures[0].shape[0] if pictures else 4
    fig, axes = plt.subplots(
        rows, columns, figsize=(width, 2.9 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, picture, text, bad in zip(axes.ravel(), pictures, titles, wrong, strict=False):
        ax.imshow(picture)
        ax.set_title(text, fontsize=9, color="tab:red" if bad else "black")
    if not pictures:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=11)
    save_png(fig, out, dpi=100)


def heatmap_grid(images, heats, labels, p_dog, title: str, out: Path) -> None:
    """Grad-CAM grid: each image with its heatmap over it."""
    picture_grid(
        [overlay(image, heat) for image, heat in zip(images, heats, strict=True)],
        [caption(label, p) for label, p in zip(labels, p_dog, strict=True)],
        [_is_wrong(label, p) for label, p in zip(labels, p_dog, strict=True)],
        title,
        out,
    )


def mistake_gallery(images, heats, labels, p_dog, losses, title: str, out: Path) -> None:
    """The worst mistakes: each photo beside its heatmap overlay, with label, P(dog), loss."""
    picture_grid(
        [
            np.concatenate([image / 255.0, overlay(image, heat)], axis=1)
            for image, heat in zip(images, heats, strict=True)
        ],
        [
            f"{caption(label, p)} · loss {loss:.2f}"
            for label, p, loss in zip(labels, p_dog, losses, strict=True)
        ],
        [True] * len(images),
        title,
        out,
    )


def tile(images: np.ndarray, columns: int, margin: int = 2, fill: float = 1.0) -> np.ndarray:
    """(n, h, w[, c]) images -> one (rows*(h+margin), columns*(w+margin)[, c]) array."""
    n, height, width = images.shape[:3]
    rows = -(-n // columns)
    grid = np.full(
        (rows * (height + margin), columns * (width + margin), *images.shape[3:]),
        fill,
        dtype=np.float32,
    )
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + margin), (i % columns) * (width + margin)
        grid[top : top + height, left : left + width] = image
    return grid[:-margin, :-margin] if margin else grid


def activation_grid(activation: np.ndarray, title: str, out: Path, columns: int = 16) -> None:
    """Every channel of one layer's (h, w, c) activation, as the book's figure 5.25:
    each channel standardised, so that weak channels are visible too; dead ones stay grey."""
    channels = np.moveaxis(activation, -1, 0)
    mean = channels.mean(axis=(1, 2), keepdims=True)
    std = channels.std(axis=(1, 2), keepdims=True)
    scaled = np.clip((channels - mean) / np.where(std > 0, std, 1) * 0.25 + 0.5, 0, 1)
    grid = tile(scaled, min(columns, len(channels)), margin=1, fill=np.nan)  # white lines
    _tiled_figure(grid, title, out, cmap="viridis")


def pattern_grid(patterns: np.ndarray, title: str, out: Path, columns: int = 8) -> None:
    """uint8 filter patterns (n, h, w, 3) in rows of `columns`."""
    grid = tile(patterns / 255.0, min(columns, len(patterns)), margin=3)
    _tiled_figure(grid, title, out)


def _tiled_figure(grid: np.ndarray, title: str, out: Path, cmap: str | None = None) -> None:
    scale = 12 / max(grid.shape[:2])
    fig, ax = plt.subplots(figsize=(grid.shape[1] * scale + 0.4, grid.shape[0] * scale + 0.6))
    ax.imshow(grid, cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    save_png(fig, out, dpi=100)
