"""Grad-CAM (Selvaraju et al. 2017; the book's 5.4.3, keras.io "Grad-CAM class activation
visualization"): which places of a picture the predicted class comes from.

The gradient of the class score with respect to the last conv maps, averaged over each
map, weighs the maps; their weighted sum, rectified, is the heatmap. The score is the
logit for "dog" and minus the logit for "cat", whichever the model predicts. Gradients
are taken with tf.GradientTape (Keras 3 has no K.gradients), in a tf.function.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.visualize.anatomy import last_conv_name, rebuild


class GradCam:
    """Heatmaps and P(dog) of `model` (a pipeline model: raw pixels in, P(dog) out)."""

    def __init__(self, model: keras.Model):
        self.layer = last_conv_name(model)
        self.split = rebuild(model, [self.layer], logit=True)  # pixels -> [maps, logit]
        self._step = tf.function(self._maps, reduce_retracing=True)

    def _maps(self, images):
        with tf.GradientTape() as tape:
            maps, logit = self.split(images, training=False)
            logit = tf.cast(logit[:, 0], tf.float32)
            score = tf.where(logit >= 0, logit, -logit)  # the predicted class's logit
        # Mixed-precision models give bfloat16 maps: differentiate with respect to those,
        # then cast (a cast copy would not be on the way to the score: no gradient).
        grads = tf.cast(tape.gradient(score, maps), tf.float32)
        maps = tf.cast(maps, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per map
        heat = tf.nn.relu(tf.einsum("bhwc,bc->bhw", maps, weights))
        peak = tf.reduce_max(heat, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(heat, peak), tf.sigmoid(logit)

    def __call__(self, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps in [0, 1] at the conv map's resolution, P(dog)) of uint8 images."""
        height, width = self.split.outputs[0].shape[1:3]
        heats, probabilities = [np.zeros((0, height, width), np.float32)], [np.zeros(0)]
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start : start + batch_size], tf.float32)
            heat, probability = self._step(batch)
            heats.append(heat.numpy())
            probabilities.append(probability.numpy())
        return np.concatenate(heats), np.concatenate(probabilities)


def upsample(heatmaps: np.ndarray, size: int) -> np.ndarray:
    """Heatmaps resized bilinearly to the images' size, for overlays and peak positions."""
    resized = tf.image.resize(heatmaps[..., None], (size, size), method="bilinear")
    return resized.numpy()[..., 0]


def peaks(heatmaps: np.ndarray) -> np.ndarray:
    """(row, col) of each heatmap's maximum, in the heatmap's pixels."""
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, heatmaps.shape[1:]), axis=1)
