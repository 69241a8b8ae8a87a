"""What the convnets learn (pipeline/visualize), in process, on a convnet that really learned.

The images' class is decided only by a small striped patch at a random place
(synthetic.patch_images), so a model that learned it must look at the patch: Grad-CAM's
peak has to fall inside it. The stage as a whole (every model, `dvc repro`, MLflow) is
tested in test_pipeline_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.core.catalog import KINDS, TrainedModel
from pipeline.core.errors import PipelineError
from pipeline.core.params import FilterPatternParams, VisualizeParams, load_params
from tests.helpers.project import ROOT, update_params
from tests.helpers.synthetic import patch_images

# keras, and pipeline.models and pipeline.visualize's modules (which import keras or mlflow),
# are imported in the functions that use them, not at collection in every worker

SIZE, PATCH = 64, 12


def tiny_convnet():
    """Three 'same' convs, so a map position sits over the same place of the picture."""
    import keras

    from pipeline.models.preprocess import Preprocess

    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = Preprocess("unit")(inputs)
    for filters_ in (16, 32):
        x = keras.layers.Conv2D(filters_, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="patch_finder")


@pytest.fixture(scope="module")
def trained():
    import keras

    keras.utils.set_random_seed(0)
    x_train, y_train, _ = patch_images(480, SIZE, PATCH, seed=1)
    x_test, y_test, boxes = patch_images(120, SIZE, PATCH, seed=2)
    model = tiny_convnet()
    model.compile(keras.optimizers.Adam(2e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x_train.astype(np.float32), y_train, batch_size=32, epochs=8, verbose=0)
    accuracy = model.evaluate(x_test.astype(np.float32), y_test, verbose=0)[1]
    return model, x_test, y_test, boxes, accuracy


def test_the_model_learned_the_patches(trained):
    *_, accuracy = trained
    assert accuracy >= 0.9  # chance is 0.5


def test_gradcam_peaks_inside_the_patch(trained):
    from pipeline.visualize.gradcam import GradCam, peaks, upsample

    model, images, labels, boxes, _ = trained
    gradcam = GradCam(model)
    assert gradcam.layer == "last_conv"
    heats, p_dog = gradcam(images)
    assert heats.shape == (len(images), SIZE // 4, SIZE // 4)
    np.testing.assert_allclose(p_dog, model.predict(images, verbose=0).ravel(), atol=1e-5)
    assert heats.min() >= 0 and np.allclose(heats.max(axis=(1, 2)), 1)

    rows, cols = peaks(upsample(heats, SIZE)).T
    top, left, bottom, right = boxes.T
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    correct = (p_dog > 0.5) == labels
    rate = inside[correct].mean()
    # A map peaking at a random place would hit the patch with probability (12/64)^2 = 3.5%.
    assert correct.sum() >= 100 and rate >= 0.8, rate


def test_gradcam_of_a_mixed_precision_model(trained):
    """A model trained with train.runtime.mixed_precision: on computes in bfloat16."""
    import keras

    from pipeline.visualize.gradcam import GradCam

    model, images, *_ = trained
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        half = tiny_convnet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    half.set_weights(model.get_weights())
    heats, p_dog = GradCam(half)(images[:16])
    assert np.isfinite(heats).all() and np.allclose(heats.max(axis=(1, 2)), 1)
    np.testing.assert_allclose(p_dog, GradCam(model)(images[:16])[1], atol=0.05)


def test_mistakes_gallery_holds_the_misclassified_images_of_highest_loss(trained, tmp_path):
    import keras

    from pipeline.visualize.gradcam import GradCam
    from pipeline.visualize.mistakes import worst_mistakes
    from pipeline.visualize.stage import draw_mistakes

    model, images, labels, _, _ = trained
    noisy = labels.copy()
    noisy[::7] ^= 1  # wrong labels make confident mistakes
    p_dog = model.predict(images, verbose=0).ravel()
    loss = keras.losses.binary_crossentropy(noisy[:, None].astype(np.float32), p_dog[:, None])
    wrong = np.flatnonzero((p_dog > 0.5) != noisy)
    expected = wrong[np.argsort(-np.asarray(loss)[wrong])]
    assert len(wrong) >= 12

    target = TrainedModel(KINDS["baseline"], None, SIZE)
    settings = VisualizeParams(mistakes=8, filters=FilterPatternParams())
    shown = draw_mistakes(target, GradCam(model), images, noisy, p_dog, tmp_path, settings)
    assert list(shown) == list(expected[:8])
    assert (tmp_path / "mistakes.png").stat().st_size > 10_000
    assert list(worst_mistakes(p_dog, noisy, 1000)) == list(expected)  # never a right answer


def test_balanced_sample_is_seeded_and_half_of_each_class():
    from pipeline.visualize.mistakes import balanced_sample

    labels = np.array([0] * 30 + [1] * 5)
    sample = balanced_sample(labels, 16, seed=3)
    assert len(set(sample)) == 16 and labels[sample].sum() == 5  # every dog, the rest cats
    assert list(balanced_sample(labels, 16, seed=3)) == list(sample)
    alternating = np.array([0, 1] * 20)
    assert alternating[balanced_sample(alternating, 8, seed=0)].sum() == 4


def test_activations_have_their_layers_shapes():
    import keras

    from pipeline.models.augment import BookAugmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.visualize.activations import activation_layer_names, activations

    model = build_convnet(64, 0.5, BookAugmentation(40.0, name="augmentation"))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    shown = activations(model, image)
    expected = {
        layer.name: tuple(layer.output.shape[1:])
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.MaxPooling2D)
    }
    assert list(shown) == list(expected) == activation_layer_names(model)
    assert len(shown) == 8
    assert {name: a.shape for name, a in shown.items()} == expected


def test_gradient_ascent_raises_each_filters_mean_activation(trained):
    from pipeline.visualize import filters

    model, *_ = trained
    extractor = filters.layer_model(model, "last_conv", 48)  # any size: the convs take it
    start = filters.starting_images(extractor, 8, seed=0)
    pixels = filters.ascend(extractor, 8, steps=20, step_size=5.0, seed=0)
    before = filters.mean_activations(extractor, start)
    after = filters.mean_activations(extractor, pixels)
    assert pixels.shape == (8, 48, 48, 3)
    # Pre-activations: a filter silent on the grey start climbs too, if slowly.
    assert np.all(after > before) and np.max(after - before) > 2, (before, after)
    pictures = filters.to_picture(pixels)
    assert pictures.dtype == np.uint8 and pictures.std() > 10


def test_gradcam_through_a_nested_conv_base(tmp_path, monkeypatch):
    """frozen_aug/finetune hold the base as a nested model; features-<base> is a head on
    cached features, rebuilt on the base. Tiny VGG16 with random weights."""
    import keras

    from pipeline.models.augment import BookAugmentation
    from pipeline.models.bases import save_base_weights
    from pipeline.models.pretrained import (
        dense_head,
        extract_features,
        feature_extractor,
        frozen_base_model,
        head_on_pixels,
    )
    from pipeline.visualize.anatomy import head_after_base
    from pipeline.visualize.gradcam import GradCam
    from pipeline.visualize.stage import pattern_source

    monkeypatch.chdir(tmp_path)  # models/bases/vgg16.weights.h5 is read from the project root
    save_base_weights("vgg16", "random", seed=42)
    frozen = frozen_base_model(
        "vgg16", 32, "flatten", 16, BookAugmentation(name="augmentation"), "frozen_aug_vgg16"
    )
    frozen.save(tmp_path / "frozen.keras")
    frozen = keras.models.load_model(tmp_path / "frozen.keras")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

    gradcam = GradCam(frozen)
    heats, p_dog = gradcam(images)
    assert gradcam.layer == "block5_conv3" and heats.shape == (6, 2, 2)
    assert np.isfinite(heats).all() and heats.min() >= 0 and heats.max() == 1
    np.testing.assert_allclose(p_dog, frozen.predict(images, verbose=0).ravel(), rtol=1e-4)
    features = extract_features(feature_extractor("vgg16", 32, "flatten"), images)
    from_features = head_after_base(frozen).predict(features, verbose=0).ravel()
    np.testing.assert_allclose(from_features, p_dog, rtol=1e-4)  # the cached-features path

    head = dense_head(512, 8, 0.5, "features_vgg16")
    pixel_model = head_on_pixels("vgg16", 32, "flatten", head, "features-vgg16")
    heats, p_dog = GradCam(pixel_model)(images)
    assert heats.shape == (6, 2, 2)
    np.testing.assert_allclose(p_dog, head.predict(features, verbose=0).ravel(), rtol=1e-4)

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    update_params(tmp_path, {"visualize": {"filters": {"layers": {"vgg16": ["block9_conv1"]}}}})
    target = TrainedModel(KINDS["features"], "vgg16", 32)
    with pytest.raises(PipelineError) as err:
        pattern_source(load_params(tmp_path / "params.yaml"), target, pixel_model)
    assert "visualize.filters.layers.vgg16: vgg16 has no layer block9_conv1" in str(err.value)
    assert "block5_conv3" in str(err.value)  # the names it does have


def test_an_unknown_model_is_one_line_before_tensorflow_loads():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "visualize", "finetune-resnet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: visualize: unknown model 'finetune-resnet'; one of baseline, augmented, "
        "features-vgg16, features-efficientnet_lite0, frozen_aug-vgg16, "
        "frozen_aug-efficientnet_lite0, finetune-vgg16, finetune-efficientnet_lite0"
    ]
