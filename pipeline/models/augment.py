"""The book's ImageDataGenerator augmentation as one Keras 3 layer.

ImageDataGenerator draws a rotation, a shift, a shear and a zoom per image, multiplies their
matrices into one affine map and resamples the image once, then maybe flips it. Keras 3's
RandomRotation/RandomTranslation/RandomShear/RandomZoom resample once each: four
interpolations (blurrier) and four passes (3-4x slower on a CPU). This layer does what the
book's generator did, in one bilinear resampling per batch.

Under XLA (`jit_compile`, on by default on a GPU) `keras.ops.image.affine_transform` cannot
run: on TensorFlow it is ImageProjectiveTransformV3, which has no XLA kernel in TF 2.21
(tensorflow/tensorflow#100865). There the layer resamples with `sample_bilinear`, the same
sampling written as gathers, which XLA compiles; without XLA it keeps affine_transform's C++
kernel, faster than the gathers there (python -m benchmarks.benchmark --xla).

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

from pipeline.core.params import AugmentationParams


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


def sample_bilinear(images, transforms):
    """`ops.image.affine_transform(images, transforms, "bilinear", fill_mode="nearest")` in
    ops that XLA compiles: per output pixel, the four input pixels around its source point,
    gathered from the flattened batch and weighted bilinearly. Fill 'nearest' is a clamp of
    the source point to the image, as in TensorFlow's kernel. `transforms` is (N, 8), the
    last two (projective) entries zero."""
    shape = ops.shape(images)
    n, height, width, channels = shape[0], images.shape[1], images.shape[2], images.shape[3]
    a0, a1, a2, b0, b1, b2 = (ops.cast(transforms[:, i, None, None], "float32") for i in range(6))
    cols = ops.arange(width, dtype="float32")[None, None, :]
    rows = ops.arange(height, dtype="float32")[None, :, None]
    x = ops.clip(a0 * cols + a1 * rows + a2, 0.0, width - 1.0)  # source column of each pixel
    y = ops.clip(b0 * cols + b1 * rows + b2, 0.0, height - 1.0)  # source row
    x0, y0 = ops.floor(x), ops.floor(y)
    fx, fy = ops.reshape(x - x0, (-1, 1)), ops.reshape(y - y0, (-1, 1))
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    x1, y1 = ops.minimum(x0 + 1, width - 1), ops.minimum(y0 + 1, height - 1)
    pixels = ops.cast(ops.reshape(images, (-1, channels)), "float32")
    first = (ops.arange(n, dtype="int32") * (height * width))[:, None, None]

    def at(row, col):
        return ops.take(pixels, ops.reshape(first + row * width + col, (-1,)), axis=0)

    top_left, bottom_left = at(y0, x0), at(y1, x0)
    top = top_left + fx * (at(y0, x1) - top_left)
    bottom = bottom_left + fx * (at(y1, x1) - bottom_left)
    return ops.cast(ops.reshape(top + fy * (bottom - top), shape), images.dtype)


def compiling_with_xla() -> bool:
    """True while TensorFlow traces a function for XLA (`jit_compile=True`, also a
    distribution strategy's step inside one): tf.function enters an XLA control-flow
    context on the graph it traces into, the check TensorFlow itself makes to avoid
    nesting compilations. Eager and plain tf.function/tf.data tracing: False.
    The check is TensorFlow-internal: should a release drop it, every graph counts as
    compiled (the gathers are correct everywhere, only slower without XLA)."""
    if keras.backend.backend() != "tensorflow":
        return False  # JAX compiles affine_transform itself; torch has no XLA step here
    import tensorflow as tf

    try:
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
    except ImportError:
        return not tf.executing_eagerly()
    return GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


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
        if compiling_with_xla():
            return sample_bilinear(images, transforms)
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
