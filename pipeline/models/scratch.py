"""The book's from-scratch convnet (listing 5.5), optionally with augmentation and dropout."""

from __future__ import annotations

import keras

from pipeline.models.preprocess import Preprocess


def build_convnet(
    image_size: int,
    dropout: float = 0.0,
    augmentation: keras.layers.Layer | None = None,
    name: str = "convnet",
) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = Preprocess("unit")(x)
    for filters in (32, 64, 128, 128):
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(
        x
    )  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=name)
