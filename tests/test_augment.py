"""The book's ImageDataGenerator settings mean the same transforms here."""

import numpy as np

from pipeline.models.augment import augmentation_layers
from pipeline.params import AugmentationParams

ONLY_ZOOM = AugmentationParams(rotation_degrees=0, width_shift=0, height_shift=0, shear_degrees=0,
                               zoom=0.2, horizontal_flip=False)


def test_zoom_draws_height_and_width_factors_on_their_own():
    # ImageDataGenerator: zx, zy = np.random.uniform(1 - zoom, 1 + zoom, 2).
    zoom = augmentation_layers(ONLY_ZOOM, seed=0).layers[0]
    factors = zoom.get_random_transformation(np.zeros((256, 8, 8, 3), np.float32), training=True)
    height, width = np.asarray(factors["height_zoom"]).ravel(), np.asarray(factors["width_zoom"]).ravel()
    assert 0.8 <= height.min() and height.max() <= 1.2 and 0.8 <= width.min() and width.max() <= 1.2
    assert abs(np.corrcoef(height, width)[0, 1]) < 0.3


def test_augmentation_is_off_outside_training():
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    augment = augmentation_layers(AugmentationParams(), seed=0)
    np.testing.assert_array_equal(np.asarray(augment(images, training=False)), images)
    assert not np.allclose(np.asarray(augment(images, training=True)), images)
