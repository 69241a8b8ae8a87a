"""Models on an ImageNet conv base (the book's listings 5.17-5.22), for any base in bases.py."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.models.bases import BASES, load_base


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
    from pipeline.data.dataset import make_dataset

    dataset = make_dataset(images, np.zeros(len(images)), batch_size).map(lambda x, y: x)
    return extractor.predict(dataset, verbose=2).astype(np.float32)


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
    stays frozen, and so does every batch-norm layer."""
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


def with_head(model: keras.Model, head: keras.Model) -> keras.Model:
    """`model` (a frozen_base_model) with the Dense weights of `head` (a dense_head of the
    same sizes, trained on cached features)."""
    targets = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    sources = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    for target, source in zip(targets, sources, strict=True):
        target.set_weights(source.get_weights())
    return model
