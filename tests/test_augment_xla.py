"""The augmentation under XLA: the gather sampler it uses there resamples as the book's
generator (SciPy) and as affine_transform do, and a model holding it trains compiled."""

import functools

import numpy as np
import pytest
from scipy import ndimage

from tests.test_augment import image_data_generator

# keras, tensorflow and pipeline.models (which imports keras) are imported in the tests that
# use them, not at collection in every worker

DRAWS = [
    (0.3, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -7.0, 0.0, 1.0, 1.0, 0.0),
    (0.0, 0.0, 0.0, 0.2, 1.0, 1.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.8, 1.15, 0.0),
    (-0.5, -3.0, 5.0, -0.15, 1.1, 0.9, 1.0),
]


@functools.cache
def sampler(compiled: bool):
    """The gather sampler, eager or as one tf.function compiled with XLA for every test."""
    import tensorflow as tf

    from pipeline.models.augment import sample_bilinear

    return tf.function(sample_bilinear, jit_compile=True) if compiled else sample_bilinear


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("draw", DRAWS)
def test_gather_sampler_equals_image_data_generator(draw, compiled):
    from pipeline.models.augment import book_transforms

    rng = np.random.default_rng(0)
    image = ndimage.zoom(rng.uniform(0, 255, (6, 5, 3)), (8, 8, 1), order=1)  # smooth, 48 x 40
    transform = book_transforms(*(np.array([v], np.float32) for v in draw), *image.shape[:2])
    ours = sampler(compiled)(image[None].astype(np.float32), transform)
    expected = image_data_generator(image, *draw)
    # As for affine_transform (test_augment.py): only edge rows beyond the image may differ.
    np.testing.assert_allclose(np.asarray(ours)[0, 2:-2, 2:-2], expected[2:-2, 2:-2], atol=0.05)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_gather_sampler_equals_affine_transform_everywhere(compiled):
    """Random book draws, strong enough to reach far outside the image (fill 'nearest')."""
    import keras

    from pipeline.models.augment import book_transforms

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (16, 40, 56, 3)).astype(np.float32)

    def draw(limit):
        return rng.uniform(-limit, limit, 16).astype(np.float32)

    transforms = book_transforms(
        draw(1.2), draw(20), draw(30), draw(0.4), 1 + draw(0.5), 1 + draw(0.5),
        (rng.uniform(size=16) < 0.5).astype(np.float32), 40, 56,
    )  # fmt: skip
    expected = keras.ops.image.affine_transform(images, transforms, fill_mode="nearest")
    ours = sampler(compiled)(images, transforms)
    # Every pixel, borders included; XLA's fused float arithmetic differs in the last bits.
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=0.02)


def test_xla_is_detected_only_while_compiling_for_it():
    import tensorflow as tf

    from pipeline.models.augment import compiling_with_xla

    seen = []

    def probe():
        seen.append(compiling_with_xla())
        return tf.constant(0)

    probe()
    tf.function(probe)()
    tf.function(probe, jit_compile=True)()
    assert seen == [False, False, True]


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_a_model_holding_the_augmentation_trains_under_xla(strategy):
    """ImageProjectiveTransformV3 has no XLA kernel, so the layer must not reach it under XLA. Here also inside
    a mirrored strategy's step (one device: XLA cannot place a replica on a second CPU)."""
    import keras
    import tensorflow as tf

    from pipeline.models.augment import BookAugmentation

    scope = (
        tf.distribute.MirroredStrategy(["/cpu:0"]) if strategy == "mirrored" else tf.distribute.get_strategy()
    )  # fmt: skip
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 24, 24, 3)).astype(np.float32)
    labels = (images[:, :, :, 0].mean(axis=(1, 2)) > 127.5).astype(np.float32)
    with scope.scope():
        inputs = keras.Input((24, 24, 3))
        x = BookAugmentation(rotation_degrees=40, zoom=0.2, horizontal_flip=True, seed=0)(inputs)
        x = keras.layers.Rescaling(1 / 255)(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x))
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "binary_crossentropy", jit_compile=True)
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
