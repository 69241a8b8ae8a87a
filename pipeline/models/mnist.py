"""The networks of section 5.1 on MNIST: chapter 2's dense network and listing 5.1's convnet,
whose downsampling and padding are params (the section's questions as an experiment grid).

Both take raw 28 x 28 x 1 pixels in [0, 255] (the book's `/ 255` is the first layer, as in
every model of the pipeline) and end in a 10-way softmax.
"""

from __future__ import annotations

import keras

from pipeline.models.preprocess import Preprocess

SIDE, CLASSES = 28, 10
POOLS = {"max": keras.layers.MaxPooling2D, "average": keras.layers.AveragePooling2D}


def build_dense(units: int = 512, name: str = "mnist_dense") -> keras.Model:
    """Chapter 2: 784 -> Dense 512 relu -> Dense 10 softmax (407,050 params)."""
    inputs = keras.Input((SIDE, SIDE, 1), name="pixels")
    x = Preprocess("unit")(inputs)
    x = keras.layers.Flatten()(x)  # the book's reshape to 784
    x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def build_convnet(
    downsampling: str = "max", padding: str = "valid", name: str = "mnist_convnet"
) -> keras.Model:
    """Listing 5.1-5.3 (downsampling max, padding valid: 93,322 params). The other ways to
    shrink the maps after the first two convs: average pooling; `strided`, those two convs
    with stride 2 and no pooling; `none`, no downsampling at all (the book's
    model_no_max_pool, with the same dense head on its 22 x 22 x 64 maps)."""
    pool = POOLS.get(downsampling)
    stride = 2 if downsampling == "strided" else 1
    inputs = keras.Input((SIDE, SIDE, 1), name="pixels")
    x = Preprocess("unit")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=stride, padding=padding, activation="relu")(x)
    if pool:
        x = pool(2)(x)
    x = keras.layers.Conv2D(64, 3, strides=stride, padding=padding, activation="relu")(x)
    if pool:
        x = pool(2)(x)
    x = keras.layers.Conv2D(64, 3, padding=padding, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
