"""Filter patterns (the book's 5.4.2, keras.io "Visualizing what convnets learn"): the input
each filter responds to most, found by gradient ascent in input space.

Starting from a grey image with a little noise, each step moves the pixels along the
gradient of the filter's mean activation, normalised to unit RMS so that the step size is
in pixels (the book's `grads /= sqrt(mean(square(grads))) + 1e-5`, without the epsilon). The filters of one
layer climb together, one image each, in one batch: image i's loss is filter i's
activation, and no image's loss depends on another's pixels. The gradients are taken on
the Keras backend in use (gradients.py).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from pipeline.visualize.anatomy import rebuild
from pipeline.visualize.gradients import gradient_step


def layer_model(model: keras.Model, layer: str, image_size: int) -> keras.Model:
    """pixels at `image_size` -> the layer's pre-activation: a filter that a ReLU silences on
    the grey start image still gets a gradient, and its maximum is the same pattern."""
    tapped = rebuild(model, [layer], image_size=image_size, pre_activation=True)
    return keras.Model(tapped.inputs, tapped.outputs[0])


def _filter_means(activation, count: int):
    """Mean activation of filter i in image i; border pixels left out where the map is
    large enough, as keras.io does (they only see padding)."""
    activation = ops.cast(activation, "float32")
    if activation.shape[1] > 8:
        activation = activation[:, 2:-2, 2:-2, :]
    means = ops.mean(activation[..., :count], axis=(1, 2))  # (images, filters)
    return ops.diagonal(means)


def mean_activations(extractor: keras.Model, images: np.ndarray) -> np.ndarray:
    """Mean activation of filter i in image i, for each image i."""
    activation = extractor(ops.convert_to_tensor(images, "float32"), training=False)
    return ops.convert_to_numpy(_filter_means(activation, len(images)))


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

    def climb(images, _, grads):
        rms = ops.sqrt(ops.mean(ops.square(grads), axis=(1, 2, 3), keepdims=True))
        # Not the book's `rms + 1e-5`: behind x / 255 and a mean over the map, gradients
        # are ~1e-8 and that epsilon would shrink every step to nothing.
        return images + step_size * ops.divide_no_nan(grads, rms)

    def objective(activation):
        return ops.sum(_filter_means(activation, count)), None

    step = gradient_step(extractor, objective, climb)
    images = ops.convert_to_tensor(starting_images(extractor, count, seed))
    for _ in range(steps):
        images = step(images)
    return ops.convert_to_numpy(images)


def to_picture(pixels: np.ndarray) -> np.ndarray:
    """The book's deprocess_image: each image centred, scaled to std 0.1 around 0.5,
    clipped, as uint8."""
    x = pixels - pixels.mean(axis=(1, 2, 3), keepdims=True)
    x = x / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-5) * 0.1 + 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)
