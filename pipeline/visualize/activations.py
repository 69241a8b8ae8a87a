"""Intermediate activations (the book's 5.4.1, figure 5.25): what each conv and pool layer
of a from-scratch convnet makes of one test image, channel by channel."""

from __future__ import annotations

import keras
import numpy as np

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
