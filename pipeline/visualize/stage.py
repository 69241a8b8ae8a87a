"""Stages `visualize@<model>` and `visualize_<kind>@<base>`: the book's section 5.4 for one
trained model, into reports/figures/<model>/visualize/ (swapped in whole when complete):

  gradcam.png                   Grad-CAM over a seeded sample of test images, half of each class
  mistakes.png                  the misclassified test images of highest loss, with heatmaps
  activations/NN-<layer>.png    from-scratch convnets: one test image through every conv and pool
  filters/<layer>.png           filter patterns: every conv layer of a from-scratch convnet; the
                                layers `visualize.filters.layers.<base>` of a conv base, drawn in
                                features-<base> (frozen_aug-<base> has the same frozen base)

then logged to the model's training run in MLflow (tracked_run.py) under visualize/.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from pipeline.core import catalog, paths
from pipeline.core.catalog import TrainedModel
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_dir
from pipeline.core.params import Params, VisualizeParams
from pipeline.data import CLASSES
from pipeline.data.prepare import load_prepared
from pipeline.models.model_io import load_keras
from pipeline.serving.inference import predicted_labels
from pipeline.visualize import figures, filters
from pipeline.visualize.activations import draw_activations
from pipeline.visualize.anatomy import conv_layer_names, head_after_base
from pipeline.visualize.gradcam import GradCam, upsample
from pipeline.visualize.mistakes import balanced_sample, losses, worst_mistakes


def load_model(params: Params, target: TrainedModel) -> tuple[keras.Model, keras.Model]:
    """(the saved model, a model from raw pixels to P(dog)). They are the same model except
    for features-<base>, a dense head on cached features: its pixel model is the conv base
    (from models/bases/, as extract@<base> ran it) followed by the head."""
    saved = load_keras(target.model_file)
    if target.kind.name != "features":
        return saved, saved
    from pipeline.models.pretrained import head_on_pixels

    settings = params.pretrained.bases[target.base]
    pixel_model = head_on_pixels(
        target.base, settings.image_size, settings.pooling, saved, target.name
    )
    return saved, pixel_model


def predict_test_set(
    target: TrainedModel, saved: keras.Model, model: keras.Model, images
) -> np.ndarray:
    """P(dog) of every test image. Where the conv base is the frozen one of extract@<base>
    (features-, frozen_aug-<base>), from its cached test features: running VGG16 over the
    test set again would be most of the stage's time."""
    from pipeline.models.pretrained import extract_features

    cached = paths.features_file(str(target.base), "test")
    if target.kind.name in ("features", "frozen_aug") and cached.is_file():
        head = saved if target.kind.name == "features" else head_after_base(saved)
        with np.load(cached) as arrays:
            return head.predict(arrays["features"], batch_size=256, verbose=0).ravel()
    return extract_features(model, images).ravel()


def visualize(params: Params, name: str) -> dict[str, float]:
    """Draw every figure of one trained model, log them to its MLflow run; return the
    seconds each kind of figure took."""
    from pipeline.visualize import tracked_run

    target, settings = catalog.by_name(params, name), params.visualize
    started = time.perf_counter()
    saved, model = load_model(params, target)
    images, labels = load_prepared(target.image_size, "test")
    if settings.activation_image >= len(images):
        raise PipelineError(
            f"visualize.activation_image: {settings.activation_image} is not a test image "
            f"index (the test split has {len(images)} images)"
        )
    patterns = pattern_source(params, target, model)  # bad layer names fail before any work
    seconds = {"load": time.perf_counter() - started}
    with atomic_dir(target.visualize_dir) as out:
        seconds |= _draw_all(target, settings, (saved, model), (images, labels), patterns, out)
    tracked_run.finish("visualize", target, seconds)
    return seconds


def _draw_all(
    target: TrainedModel, settings, models, test, patterns, out: Path
) -> dict[str, float]:
    """Every figure into `out`; the seconds of each kind."""
    (saved, model), (images, labels) = models, test
    seconds = {}
    gradcam = GradCam(model)
    seconds["gradcam"] = _timed(draw_gradcam, target, gradcam, images, labels, settings, out)
    started = time.perf_counter()
    p_dog = predict_test_set(target, saved, model, images)
    draw_mistakes(target, gradcam, images, labels, p_dog, out, settings)
    seconds["mistakes"] = time.perf_counter() - started  # the predictions it needs included
    if not target.kind.pretrained:
        index = settings.activation_image
        caption = f"test image {index} ({CLASSES[labels[index]]})"
        seconds["activations"] = _timed(
            draw_activations, target, model, images[index], caption, out
        )
    if patterns is not None:
        seconds["filters"] = _timed(draw_filters, target, *patterns, settings, out)
    return seconds


def _timed(draw, *args) -> float:
    started = time.perf_counter()
    draw(*args)
    return time.perf_counter() - started


def draw_gradcam(
    target: TrainedModel, gradcam: GradCam, images, labels, settings, out: Path
) -> None:
    sample = balanced_sample(labels, settings.gradcam_images, settings.seed)
    heats, p_dog = gradcam(images[sample])
    figures.heatmap_grid(
        images[sample],
        upsample(heats, target.image_size),
        labels[sample],
        p_dog,
        f"{target.name}: Grad-CAM on {gradcam.layer}, heat = where the predicted class comes from",
        out / "gradcam.png",
    )


def draw_mistakes(
    target: TrainedModel,
    gradcam: GradCam,
    images,
    labels,
    p_dog,
    out: Path,
    settings: VisualizeParams,
) -> np.ndarray:
    """The gallery of the worst mistakes; returns the indices of the test images shown."""
    worst = worst_mistakes(p_dog, labels, settings.mistakes)
    wrong = int((predicted_labels(p_dog) != labels).sum())
    title = (
        f"{target.name}: the {len(worst)} most confident mistakes "
        f"({wrong} of {len(labels)} test images wrong); photo, then Grad-CAM"
        if wrong
        else f"{target.name}: no mistakes on the {len(labels)} test images"
    )
    figures.mistake_gallery(
        images[worst],
        upsample(gradcam(images[worst])[0], target.image_size),
        labels[worst],
        p_dog[worst],
        losses(p_dog[worst], labels[worst]),
        title,
        out / "mistakes.png",
    )
    return worst


def pattern_source(params: Params, target: TrainedModel, model) -> tuple[keras.Model, list] | None:
    """(a model from pixels through the convs, the layers whose filters are drawn), or None
    for models whose filters another stage draws."""
    if not target.kind.pretrained:
        return model, conv_layer_names(model)
    layers = params.visualize.filters.layers.get(target.base, [])
    if target.kind.name != "features" or not layers:
        return None
    from pipeline.models.bases import BASES, load_base

    base = load_base(target.base, params.visualize.filters.image_size)
    unknown = [name for name in layers if name not in {layer.name for layer in base.layers}]
    if unknown:
        convs = ", ".join(conv_layer_names(base))
        raise PipelineError(
            f"visualize.filters.layers.{target.base}: {target.base} has no layer "
            f"{', '.join(unknown)}; its conv layers are {convs[:400]}"
        )
    pixels = keras.Input(base.input_shape[1:], name="pixels")
    return keras.Model(pixels, base(BASES[target.base].preprocess()(pixels))), layers


def draw_filters(
    target: TrainedModel, source: keras.Model, layers: list, settings, out: Path
) -> None:
    config = settings.filters
    owner = target.base or target.name
    for layer in layers:
        extractor = filters.layer_model(source, layer, config.image_size)
        pixels = filters.ascend(
            extractor, config.count, config.steps, config.step_size, settings.seed
        )
        figures.pattern_grid(
            filters.to_picture(pixels),
            f"{owner}: {layer}, filters 0-{len(pixels) - 1} "
            f"({config.steps} steps of gradient ascent, {config.image_size} px)",
            out / f"filters/{layer}.png",
        )
