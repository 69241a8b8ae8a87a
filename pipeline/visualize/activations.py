"""Intermediate activations (the book's 5.4.1, figure 5.25): what each conv and pool layer
of a from-scratch convnet makes of one test image, channel by channel."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.visualize import figures
from pipeline.visualize.anatomy import CONV_TYPES, POOL_TYPES, conv_owner, rebuild


def activation_layer_names(model: keras.Model) -> list[str]:
    """Every conv and pool layer, in order."""
    return [
        layer.name
        for layer in conv_owner(model).layers
        if isinstance(layer, CONV_TYPES + POOL_TYPES)
    ]


def activations(model: keras.Model, image: np.ndarray) -> dict[str, np.ndarray]:
    """Layer name -> its (height, width, channels) activation of one uint8 image."""
    names = activation_layer_names(model)
    outputs = rebuild(model, names)(image[None].astype(np.float32), training=False)
    return {
        name: np.asarray(output[0], np.float32) for name, output in zip(names, outputs, strict=True)
    }


def draw_activations(target, model, image, caption: str, out: Path, shown=None):
    """The input picture (`shown`, default `image`) and every layer's activations of it."""
    figures.picture_grid(
        [image if shown is None else shown], [caption], [False], target.name,
        out / "activations/00-input.png",
    )  # fmt: skip
    for number, (layer, activation) in enumerate(activations(model, image).items(), 1):
        h, w, c = activation.shape
        figures.activation_grid(
            activation,
            f"{target.name}: {layer} ({h}x{w}, {c} channels) of {caption}",
            out / f"activations/{number:02d}-{layer}.png",
        )
