"""Filter patterns (the book's 5.4.2, keras.io "Visualizing what convnets learn"): the input
each filter responds to most, found by gradient ascent in input space.

Starting from a grey image with a little noise, each step moves the pixels along the
gradient of the filter's mean activation, normalised to unit RMS so that the step size is
in pixels (the book's `grads /= sqrt(mean(square(grads))) + 1e-5`, without the epsilon). The filters of one
layer climb together, one image each, in one batch: image i's loss is filter i's
activation, and no image's loss depends on another's pixels.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.visualize.anatomy import rebuild


def layer_model(model: keras.Model, layer: str, image_size: int) -> keras.Model:
    """pixels at `image_size` -> the layer's pre-activation: a filter that a ReLU silences on
    the grey start image still gets a gradient, and its maximum is the same pattern."""
    tapped = rebuild(model, [layer], image_size=image_size, pre_activation=True)
    return keras.Model(tapped.inputs, tapped.outputs[0])


def _filter_means(activation: tf.Tensor, count: int) -> tf.Tensor:
    """Mean activation of filter i in image i; border pixels left out where the map is
    large enough, as keras.io does (they only see padding)."""
    activation = tf.cast(activation, tf.float32)
    if activation.shape[1] > 8:
        activation = activation[:, 2:-2, 2:-2, :]
    means = tf.reduce_mean(activation[..., :count], axis=(1, 2))  # (images, filters)
    return tf.linalg.diag_part(means)


def mean_activations(extractor: keras.Model, images: np.ndarray) -> np.ndarray:
    """Mean activation of filter i in image i, for each image i."""
    activation = extractor(tf.convert_to_tensor(images, tf.float32), training=False)
    return _filter_means(activation, len(images)).numpy()


def starting_images(extractor: keras.Model, count: int, seed: int) -> np.ndarray:
    """The book's start: grey, with a little uniform noise."""
    rng = np.random.default_rng(seed)
    shape = (count, *extractor.input_shape[1:])
    return (128 + rng.uniform(-10, 10, shape)).astype(np.float32)


def ascend(
    extractor: keras.Model, count: int, steps: int, step_size: float, seed: int
) -> np.ndarray:
    """Pixels (float, unclipped) that maximise filters 0..count-1 of the extractor's layer."""
    count = min(count, extractor.output.shape[-1])
    images = tf.constant(starting_images(extractor, count, seed))

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(_filter_means(extractor(images, training=False), count))
        grads = tape.gradient(loss, images)
        rms = tf.sqrt(tf.reduce_mean(tf.square(grads), axis=(1, 2, 3), keepdims=True))
        # Not the book's `rms + 1e-5`: behind x / 255 and a mean over the map, gradients
        # are ~1e-8 and that epsilon would shrink every step to nothing.
        return images + step_size * tf.math.divide_no_nan(grads, rms)

    for _ in range(steps):
        images = step(images)
    return images.numpy()


def to_picture(pixels: np.ndarray) -> np.ndarray:
    """The book's deprocess_image: each image centred, scaled to std 0.1 around 0.5,
    clipped, as uint8."""
    x = pixels - pixels.mean(axis=(1, 2, 3), keepdims=True)
    x = x / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-5) * 0.1 + 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)
