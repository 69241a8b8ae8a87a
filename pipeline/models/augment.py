"""The book's ImageDataGenerator augmentation as one Keras 3 layer.

ImageDataGenerator draws a rotation, a shift, a shear and a zoom per image, multiplies their
matrices into one affine map and resamples the image once, then maybe flips it. Keras 3's
RandomRotation/RandomTranslation/RandomShear/RandomZoom resample once each: four
interpolations (blurrier) and four passes (3-4x slower on a CPU). This layer does what the
book's generator did, in one `keras.ops.image.affine_transform` per batch.

Units (the book's Keras 2.0 -> here):
- rotation_range=40 is degrees: an angle from uniform(-40, 40) degrees;
- width/height_shift_range=0.2 are fractions of the width/height;
- shear_range=0.2 was *radians* in Keras 2.0 (degrees only since keras-preprocessing 1.0.2):
  shear_degrees 11.46;
- zoom_range=0.2: height and width factors drawn on their own from [0.8, 1.2];
- fill_mode='nearest', horizontal flips with probability 1/2.
The layer is active in training only: Keras turns it off in evaluate/predict.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from pipeline.params import AugmentationParams


def book_transforms(theta, tx, ty, shear, zx, zy, flip, height: int, width: int):
    """Per-image draws -> (N, 8) transforms for keras.ops.image.affine_transform.

    As keras-preprocessing's apply_affine_transform, in (row, col) pixel coordinates:
    output -> input is offset @ rotation @ shift @ shear @ zoom @ reset (about the image
    centre), after an optional horizontal flip of the output. `tx` shifts rows, `ty` columns
    (pixels); `flip` is 1.0 to flip, 0.0 not to."""
    one, zero = ops.ones_like(theta), ops.zeros_like(theta)

    def matrix(*rows):
        return ops.stack([ops.stack(row, axis=-1) for row in rows], axis=-2)

    cos, sin = ops.cos(theta), ops.sin(theta)
    rotation = matrix((cos, -sin, zero), (sin, cos, zero), (zero, zero, one))
    shift = matrix((one, zero, tx), (zero, one, ty), (zero, zero, one))
    shearing = matrix((one, -ops.sin(shear), zero), (zero, ops.cos(shear), zero), (zero, zero, one))
    zoom = matrix((zx, zero, zero), (zero, zy, zero), (zero, zero, one))
    centre_row, centre_col = height / 2 - 0.5, width / 2 - 0.5
    offset = matrix((one, zero, centre_row * one), (zero, one, centre_col * one), (zero, zero, one))
    reset = matrix(
        (one, zero, -centre_row * one), (zero, one, -centre_col * one), (zero, zero, one)
    )
    mirror = matrix(
        (one, zero, zero), (zero, one - 2 * flip, flip * (width - 1)), (zero, zero, one)
    )
    m = offset @ rotation @ shift @ shearing @ zoom @ reset @ mirror
    # affine_transform maps output (x, y) = (col, row) to input (x', y') = (col', row').
    return ops.stack(
        [m[:, 1, 1], m[:, 1, 0], m[:, 1, 2], m[:, 0, 1], m[:, 0, 0], m[:, 0, 2], zero, zero],
        axis=-1,
    )


@keras.saving.register_keras_serializable(package="pipeline")
class BookAugmentation(keras.layers.Layer):
    """Random rotation, shift, shear, zoom and horizontal flip, resampled once."""

    def __init__(
        self,
        rotation_degrees=0.0,
        width_shift=0.0,
        height_shift=0.0,
        shear_degrees=0.0,
        zoom=0.0,
        horizontal_flip=False,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixels, also under mixed precision
        super().__init__(**kwargs)
        self.rotation_degrees, self.width_shift, self.height_shift = (
            rotation_degrees,
            width_shift,
            height_shift,
        )
        self.shear_degrees, self.zoom, self.horizontal_flip, self.seed = (
            shear_degrees,
            zoom,
            horizontal_flip,
            seed,
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        n, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]

        def uniform(low, high):
            return keras.random.uniform((n,), low, high, seed=self.seed_generator)

        def symmetric(limit):
            return uniform(-limit, limit) if limit else ops.zeros((n,))

        theta = symmetric(math.radians(self.rotation_degrees))
        tx, ty = symmetric(self.height_shift) * height, symmetric(self.width_shift) * width
        shear = symmetric(math.radians(self.shear_degrees))
        zx, zy = 1 + symmetric(self.zoom), 1 + symmetric(self.zoom)
        flip = ops.cast(uniform(0, 1) < 0.5, "float32") if self.horizontal_flip else ops.zeros((n,))
        transforms = book_transforms(theta, tx, ty, shear, zx, zy, flip, height, width)
        return ops.image.affine_transform(
            images, transforms, interpolation="bilinear", fill_mode="nearest"
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation_degrees": self.rotation_degrees,
            "width_shift": self.width_shift,
            "height_shift": self.height_shift,
            "shear_degrees": self.shear_degrees,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "seed": self.seed,
        }


def augmentation(params: AugmentationParams, seed: int) -> BookAugmentation:
    return BookAugmentation(
        params.rotation_degrees,
        params.width_shift,
        params.height_shift,
        params.shear_degrees,
        params.zoom,
        params.horizontal_flip,
        seed=seed,
        name="augmentation",
    )
