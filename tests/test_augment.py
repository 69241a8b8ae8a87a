"""The book's ImageDataGenerator settings mean the same transforms here."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.params import AugmentationParams

# keras and pipeline.models (which imports it) are imported in the tests that use them, not at
# collection in every worker


def image_data_generator(image, theta, tx, ty, shear, zx, zy, flip):
    """keras-preprocessing's apply_affine_transform (order=1, fill 'nearest'), then flip."""
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shearing = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    h, w = image.shape[:2]
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    m = offset @ rotation @ shift @ shearing @ zoom @ reset
    out = np.stack(
        [
            ndimage.affine_transform(image[..., c], m[:2, :2], m[:2, 2], order=1, mode="nearest")
            for c in range(image.shape[-1])
        ],
        axis=-1,
    )
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize(
    "draw",
    [
        (0.3, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0),
        (0.0, 4.0, -7.0, 0.0, 1.0, 1.0, 0.0),
        (0.0, 0.0, 0.0, 0.2, 1.0, 1.0, 0.0),
        (0.0, 0.0, 0.0, 0.0, 0.8, 1.15, 0.0),
        (-0.5, -3.0, 5.0, -0.15, 1.1, 0.9, 1.0),
    ],
)
def test_one_resampling_equals_image_data_generator(draw):
    import keras

    from pipeline.models.augment import book_transforms

    rng = np.random.default_rng(0)
    image = ndimage.zoom(
        rng.uniform(0, 255, (6, 5, 3)), (8, 8, 1), order=1
    )  # smooth, 48 x 40, not square
    transform = book_transforms(*(np.array([v], np.float32) for v in draw), *image.shape[:2])
    ours = keras.ops.image.affine_transform(
        image[None].astype(np.float32), transform, fill_mode="nearest"
    )
    expected = image_data_generator(image, *draw)
    # Bilinear sampling of the same points; only edge rows beyond the image may differ a bit.
    np.testing.assert_allclose(np.asarray(ours)[0, 2:-2, 2:-2], expected[2:-2, 2:-2], atol=0.05)


def test_zoom_scales_height_and_width_on_their_own():
    from pipeline.models.augment import BookAugmentation

    # A horizontal and a vertical bar: a zoom keeping the aspect ratio scales both alike.
    image = np.zeros((1, 41, 41, 1), np.float32)
    image[0, 20, 10:31] = 255.0  # horizontal, 21 px, through the centre
    image[0, 5:36, 20] = 255.0  # vertical, 31 px, through the centre
    layer = BookAugmentation(zoom=0.2, seed=0)
    out = np.asarray(layer(np.repeat(image, 64, axis=0), training=True))
    widths = (out[:, 20, :, 0] > 128).sum(axis=1) / 21
    heights = (out[:, :, 20, 0] > 128).sum(axis=1) / 31
    assert np.ptp(widths) > 0.1 and np.ptp(heights) > 0.1  # it zooms
    assert abs(np.corrcoef(widths, heights)[0, 1]) < 0.5  # and the two factors are independent


def test_augmentation_is_off_outside_training_and_survives_saving(tmp_path):
    import keras

    from pipeline.models.augment import augmentation

    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, augmentation(AugmentationParams(), seed=0)(inputs))
    np.testing.assert_array_equal(np.asarray(model(images, training=False)), images)
    assert not np.allclose(np.asarray(model(images, training=True)), images)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert (
        loaded.get_layer("augmentation").get_config()
        == model.get_layer("augmentation").get_config()
    )
