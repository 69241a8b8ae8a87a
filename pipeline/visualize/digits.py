"""Stage `mnist_visualize` (mnist/dvc.yaml): what the section 5.1 convnet learns, as the
visualize stages draw it for the dogs-vs-cats convnets (the book's 5.4.1 and 5.4.2), into
mnist/reports/figures/<model>/visualize/ and the model's MLflow run:

  activations/NN-<layer>.png    one test digit through every conv and pool layer
  filters/<layer>.png           filter patterns of every conv layer, by gradient ascent

The model is the one of `mnist.visualize`; how many filters and steps: `visualize.filters`,
which digit: `visualize.activation_image`. Patterns are drawn at the model's 28 x 28.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_dir
from pipeline.core.params import Params, VisualizeParams


def mnist_visualize(params: Params) -> dict[str, float]:
    from pipeline.models.model_io import load_keras
    from pipeline.visualize import tracked_run
    from pipeline.visualize.activations import draw_activations

    target = _target(params)
    catalog.model_file_advice(target.model_file)
    model = load_keras(target.model_file)
    digit, caption = _activation_digit(params.visualize.activation_image)
    seconds = {}
    with atomic_dir(target.visualize_dir) as out:
        started = time.perf_counter()
        draw_activations(target, model, digit, caption, out, rgb(digit))
        seconds["activations"] = time.perf_counter() - started
        started = time.perf_counter()
        _draw_filters(target, model, params.visualize, out)
        seconds["filters"] = time.perf_counter() - started
    tracked_run.finish("mnist_visualize", target, seconds)
    return seconds


def _target(params: Params) -> catalog.TrainedModel:
    """The convnet of `mnist.visualize`."""
    chosen = catalog.mnist_settings(params).visualize
    return catalog.mnist_model(
        params, "mnist_convnet", chosen.seed, chosen.downsampling, chosen.padding
    )


def _activation_digit(index: int) -> tuple[np.ndarray, str]:
    """Test digit `index` and its caption."""
    from pipeline.data.mnist import load_digits

    images, labels = load_digits()["test"]
    if index >= len(images):
        raise PipelineError(
            f"visualize.activation_image: {index} is not a test digit index "
            f"(the test split has {len(images)} digits)"
        )
    return images[index], f"test digit {index} (a {labels[index]})"


def _draw_filters(
    target: catalog.TrainedModel, model, settings: VisualizeParams, out: Path
) -> None:
    """The filter patterns of every conv layer, one grid a layer."""
    from pipeline.visualize import figures, filters
    from pipeline.visualize.anatomy import conv_layer_names

    config = settings.filters
    for layer in conv_layer_names(model):
        extractor = filters.layer_model(model, layer, int(model.input_shape[1]))
        pixels = filters.ascend(
            extractor, config.count, config.steps, config.step_size, settings.seed
        )
        figures.pattern_grid(
            rgb(filters.to_picture(pixels)),
            f"{target.name}: {layer}, filters 0-{len(pixels) - 1} "
            f"({config.steps} steps of gradient ascent)",
            out / f"filters/{layer}.png",
        )


def rgb(grey: np.ndarray) -> np.ndarray:
    """(..., H, W, 1) -> (..., H, W, 3): the figures draw RGB pictures."""
    return np.repeat(grey, 3, axis=-1)
