"""Grad-CAM (Selvaraju et al. 2017; the book's 5.4.3, keras.io "Grad-CAM class activation
visualization"): which places of a picture the predicted class comes from.

The gradient of the class score with respect to the last conv maps, averaged over each
map, weighs the maps; their weighted sum, rectified, is the heatmap. The score is the
logit for "dog" and minus the logit for "cat", whichever the model predicts. Keras 3 has
no K.gradients: on TensorFlow one tf.GradientTape in a tf.function records the model from
pixels to [maps, logit] and differentiates the score with respect to the maps; on JAX
(no tape to watch an inner tensor) the model is cut at the maps, pixels -> maps and
maps -> logit, and the second part is differentiated with respect to its input
(gradients.py). The heatmap arithmetic is keras.ops, the same on both.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from pipeline.visualize.anatomy import head_model, last_conv_name, rebuild
from pipeline.visualize.gradients import gradient_step


class GradCam:
    """Heatmaps and P(dog) of `model` (a pipeline model: raw pixels in, P(dog) out)."""

    def __init__(self, model: keras.Model):
        self.layer = last_conv_name(model)
        if keras.backend.backend() == "tensorflow":
            split = rebuild(model, [self.layer], logit=True)  # pixels -> [maps, logit]
            self._step, maps = _tensorflow_step(split), split.outputs[0]
        else:
            tapped = rebuild(model, [self.layer])  # pixels -> maps
            front = keras.Model(tapped.inputs, tapped.outputs[0])
            self._step, maps = _cut_step(front, head_model(model, self.layer)), front.output
        self.map_size = tuple(maps.shape[1:3])

    def __call__(self, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps in [0, 1] at the conv map's resolution, P(dog)) of uint8 images."""
        heats, probabilities = [np.zeros((0, *self.map_size), np.float32)], [np.zeros(0)]
        for start in range(0, len(images), batch_size):
            batch = ops.convert_to_tensor(images[start : start + batch_size], "float32")
            heat, probability = self._step(batch)
            heats.append(ops.convert_to_numpy(heat))
            probabilities.append(ops.convert_to_numpy(probability))
        return np.concatenate(heats), np.concatenate(probabilities)


def _score(logit):
    """(the predicted class's logit, the logit), as float32 vectors."""
    logit = ops.cast(logit[:, 0], "float32")
    return ops.where(logit >= 0, logit, -logit), logit


def _heat(maps, grads, logit):
    """(normalised heatmaps, P(dog)) from the maps and the score's gradients."""
    grads, maps = ops.cast(grads, "float32"), ops.cast(maps, "float32")
    weights = ops.mean(grads, axis=(1, 2))  # one weight per map
    heat = ops.relu(ops.einsum("bhwc,bc->bhw", maps, weights))
    peak = ops.max(heat, axis=(1, 2), keepdims=True)
    return ops.divide_no_nan(heat, peak), ops.sigmoid(logit)


def _tensorflow_step(split: keras.Model):
    import tensorflow as tf

    def step(images):
        with tf.GradientTape() as tape:
            maps, logit = split(images, training=False)
            score, logit = _score(logit)
        # Mixed-precision models give bfloat16 maps: differentiate with respect to those,
        # then cast (a cast copy would not be on the way to the score: no gradient).
        return _heat(maps, tape.gradient(score, maps), logit)

    return tf.function(step, reduce_retracing=True)


def _cut_step(front: keras.Model, head: keras.Model):
    """Grad-CAM from pixels -> maps (`front`) and maps -> logit (`head`)."""

    def objective(logit):
        score, logit = _score(logit)
        return ops.sum(score), logit  # each image's score depends on its own maps only

    step = gradient_step(head, objective, lambda maps, logit, grads: _heat(maps, grads, logit))
    return lambda images: step(front.predict_on_batch(images))


def upsample(heatmaps: np.ndarray, size: int) -> np.ndarray:
    """Heatmaps resized bilinearly to the images' size, for overlays and peak positions."""
    resized = ops.image.resize(heatmaps[..., None], (size, size), interpolation="bilinear")
    return ops.convert_to_numpy(resized)[..., 0]


def peaks(heatmaps: np.ndarray) -> np.ndarray:
    """(row, col) of each heatmap's maximum, in the heatmap's pixels."""
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, heatmaps.shape[1:]), axis=1)
