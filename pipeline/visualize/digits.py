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

import numpy as np

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_dir
from pipeline.core.params import Params


def mnist_visualize(params: Params) -> dict[str, float]:
    from pipeline.data.mnist import load_digits
    from pipeline.models.model_io import load_keras
    from pipeline.visualize import figures, filters, tracked_run
    from pipeline.visualize.activations import draw_activations
    from pipeline.visualize.anatomy import conv_layer_names

    chosen = catalog.mnist_settings(params).visualize
    target = catalog.mnist_model(
        params, "mnist_convnet", chosen.seed, chosen.downsampling, chosen.padding
    )
    settings = params.visualize
    catalog.model_file_advice(target.model_file)
    model = load_keras(target.model_file)
    images, labels = load_digits()["test"]
    index = settings.activation_image
    if index >= len(images):
        raise PipelineError(
            f"visualize.activation_image: {index} is not a test digit index "
            f"(the test split has {len(images)} digits)"
        )
    seconds = {}
    with atomic_dir(target.visualize_dir) as out:
        started = time.perf_counter()
        caption = f"test digit {index} (a {labels[index]})"
        draw_activations(target, model, images[index], caption, out, rgb(images[index]))
        seconds["activations"] = time.perf_counter() - started
        started = time.perf_counter()
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
        seconds["filters"] = time.perf_counter() - started
    tracked_run.finish("mnist_visualize", target, seconds)
    return seconds


def rgb(grey: np.ndarray) -> np.ndarray:
    """(..., H, W, 1) -> (..., H, W, 3): the figures draw RGB pictures."""
    return np.repeat(grey, 3, axis=-1)
