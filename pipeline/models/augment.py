"""The book's ImageDataGenerator augmentation as Keras 3 preprocessing layers.

Unit conversions (the book's Keras 2.0 -> Keras 3):
- rotation_range=40 is degrees; RandomRotation takes a fraction of a full turn: 40/360.
- width/height_shift_range=0.2 are fractions of the size, as in RandomTranslation.
- shear_range=0.2 was *radians* in Keras 2.0 (degrees only since keras-preprocessing 1.0.2),
  about 11.5 degrees; RandomShear takes the horizontal displacement per unit height: tan(angle).
- zoom_range=0.2 draws the height and the width factor on their own from [0.8, 1.2]
  (ImageDataGenerator: `zx, zy = uniform(0.8, 1.2, 2)`); RandomZoom does so only when given
  width_factor too: alone, it keeps the aspect ratio.
- fill_mode='nearest' everywhere, horizontal flips only.
The layers are active in training only: Keras turns them off in evaluate/predict.
"""

from __future__ import annotations

import math

import keras

from pipeline.params import AugmentationParams


def augmentation_layers(params: AugmentationParams, seed: int) -> keras.Sequential:
    layers = []
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.rotation_degrees:
        layers.append(keras.layers.RandomRotation(params.rotation_degrees / 360, fill_mode="nearest", seed=seed + 1))
    if params.width_shift or params.height_shift:
        layers.append(keras.layers.RandomTranslation(params.height_shift, params.width_shift, fill_mode="nearest", seed=seed + 2))
    if params.shear_degrees:
        layers.append(keras.layers.RandomShear(x_factor=(0.0, math.tan(math.radians(params.shear_degrees))), fill_mode="nearest", seed=seed + 3))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, params.zoom, fill_mode="nearest", seed=seed + 4))
    return keras.Sequential(layers, name="augmentation")
