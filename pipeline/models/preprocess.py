"""Input preprocessing as a serialisable Keras layer, so a saved model takes raw pixels.

Every model in the pipeline is fed float pixels in [0, 255]; the first layer after
augmentation maps them to what its weights expect.
"""

from __future__ import annotations

import keras
from keras import ops

# Caffe-style ImageNet preprocessing (keras.applications.vgg16.preprocess_input):
# RGB -> BGR, then subtract the ImageNet channel means (in BGR order), no scaling.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pipeline")
class Preprocess(keras.layers.Layer):
    """mode 'unit': x / 255 (the book's rescale); 'caffe': VGG16's ImageNet preprocessing;
    'affine': x * scale + offset (EfficientNet-Lite0's)."""

    def __init__(self, mode: str, scale: float = 1.0, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("unit", "caffe", "affine"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode, self.scale, self.offset = mode, scale, offset

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        return x * self.scale + self.offset

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "scale": self.scale,
            "offset": self.offset,
        }
