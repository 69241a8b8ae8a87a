"""Models on an ImageNet conv base (the book's listings 5.17-5.22), for any base in bases.py."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.models.bases import BASES, load_base
from pipeline.models.depthwise import float32_backward


def _pool(pooling: str) -> keras.layers.Layer:
    return (
        keras.layers.Flatten(name="flatten")
        if pooling == "flatten"
        else keras.layers.GlobalAveragePooling2D(name="avg_pool")
    )


def feature_extractor(base_name: str, image_size: int, pooling: str) -> keras.Model:
    """Raw pixels -> preprocessing -> frozen conv base -> flattened or pooled features."""
    base = BASES[base_name].for_inference(load_base(base_name, image_size))
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = BASES[base_name].preprocess()(inputs)
    outputs = _pool(pooling)(base(x, training=False))
    return keras.Model(inputs, outputs, name=f"{base_name}_features")


def head_on_pixels(
    base_name: str, image_size: int, pooling: str, head: keras.Model, name: str
) -> keras.Model:
    """Raw pixels -> the frozen base as extract@<base> runs it -> `head`, a dense head trained
    on its cached features: the features model as one that takes images."""
    extractor = feature_extractor(base_name, image_size, pooling)
    return keras.Model(extractor.inputs, head(extractor.outputs[0]), name=name)


def extract_features(
    extractor: keras.Model, images: np.ndarray, batch_size: int = 32
) -> np.ndarray:
    from pipeline.data.dataset import image_batches, predictions

    return predictions(extractor, image_batches(images, batch_size), verbose=2).astype(np.float32)


def dense_head(input_dim: int, dense_units: int, dropout: float, name: str) -> keras.Model:
    """The book's classifier on cached features: Dense(256, relu) -> Dropout -> Dense(1)."""
    inputs = keras.Input((input_dim,), name="features")
    x = keras.layers.Dense(dense_units, activation="relu")(inputs)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(
        x
    )  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=name)


def frozen_base_model(
    base_name: str,
    image_size: int,
    pooling: str,
    dense_units: int,
    augmentation: keras.layers.Layer,
    name: str,
) -> keras.Model:
    """Augmentation -> preprocessing -> frozen base -> Flatten/pool -> Dense -> Dense(1)."""
    base = load_base(base_name, image_size)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = augmentation(inputs)
    x = BASES[base_name].preprocess()(x)
    # training=False keeps batch-norm statistics frozen, also once the top is unfrozen later.
    x = _pool(pooling)(base(x, training=False))
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(
        x
    )  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=name)


def unfreeze_from(model: keras.Model, base_name: str, first_layer: str) -> None:
    """Make the base trainable from `first_layer` on (the book: block5_conv1); all before it
    stays frozen, and so does every batch-norm layer. Depthwise convolutions from there on
    take their gradients in float32 under bfloat16 (depthwise.py)."""
    base = model.get_layer(base_name)
    names = [layer.name for layer in base.layers]
    if first_layer not in names:
        raise PipelineError(
            f"pretrained.bases.{base_name}.finetune_from: {base_name} has no layer {first_layer!r}; "
            f"its layers include {', '.join(n for n in names if 'conv' in n)[:400]}"
        )
    base.trainable = True
    start = names.index(first_layer)
    for layer in base.layers[:start]:
        layer.trainable = False
    # Batch norm stays frozen (Keras 3 runs a non-trainable BatchNormalization in inference
    # mode); the `training=False` of the base's call is not honoured after load_model, and
    # batch statistics of 20 images would wreck the ImageNet ones (EfficientNet-Lite0).
    for layer in base.layers[start:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            float32_backward(layer)  # bfloat16's CPU kernels for its gradients are slow


def split_at(
    model: keras.Model, base_name: str, first_layer: str
) -> tuple[keras.Model, keras.Model]:
    """`model` (a frozen_base_model) cut where its base reaches `first_layer`: (bottom, top).

    bottom: pixels -> preprocessing -> the base below `first_layer` (no augmentation);
    top: the activations there -> the rest of the base -> pooling -> the Dense layers.
    Both call `model`'s own layers, so training the top trains `model`; the batch norms
    stay as unfreeze_from left them."""
    base = model.get_layer(base_name)
    cut = base.get_layer(first_layer).input
    try:
        # Keras 3 builds a model between intermediate tensors by cloning the graph's nodes
        # onto a new Input: only that Input is new, every layer (and weight) is shared.
        below, above = keras.Model(base.input, cut), keras.Model(cut, base.output)
    except ValueError:  # "not connected": a layer above the cut reads a tensor below it
        raise PipelineError(
            f"pretrained.bases.{base_name}.finetune_from: {first_layer!r} is inside a residual "
            f"block of {base_name}; train.finetune.cached_copies needs a layer that starts one "
            "(or set cached_copies to 0)"
        ) from None
    activations = keras.Input(cut.shape[1:], dtype=cut.dtype, name="activations")
    x = above(activations)
    for layer in model.layers[model.layers.index(base) + 1 :]:  # pooling, Dense layers
        x = layer(x)
    top = keras.Model(activations, x, name=f"{model.name}_top")
    return _on_pixels(model, base_name, below), top


def folded_bottom(model: keras.Model, base_name: str, first_layer: str) -> keras.Model:
    """split_at's bottom as a faster inference-only copy (bases.py for_inference: Lite0's
    batch norms folded into its convs, the same activations to 1e-4), in the current dtype
    policy; split_at's own bottom where the copy has no `first_layer` (a batch norm)."""
    base = BASES[base_name].for_inference(model.get_layer(base_name))
    if first_layer not in {layer.name for layer in base.layers}:
        return split_at(model, base_name, first_layer)[0]
    below = keras.Model(base.input, base.get_layer(first_layer).input)
    return _on_pixels(model, base_name, below)


def _on_pixels(model: keras.Model, base_name: str, below: keras.Model) -> keras.Model:
    """Pixels -> `model`'s preprocessing -> `below`, skipping its augmentation."""
    # frozen_base_model is a chain: pixels, augmentation, preprocessing, base, pooling, Dense
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    x = pixels
    for layer in model.layers[1 : model.layers.index(model.get_layer(base_name))]:
        x = x if layer.name == "augmentation" else layer(x)
    return keras.Model(pixels, below(x), name=f"{model.name}_bottom")


def with_head(model: keras.Model, head: keras.Model) -> keras.Model:
    """`model` (a frozen_base_model) with the Dense weights of `head` (a dense_head of the
    same sizes, trained on cached features)."""
    targets = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    sources = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    for target, source in zip(targets, sources, strict=True):
        target.set_weights(source.get_weights())
    return model
