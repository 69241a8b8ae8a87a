"""The stages of the models on a pretrained conv base (dvc.yaml `base_weights@<base>`,
`extract@<base>`, `features@<base>`, `frozen_aug@<base>`, `finetune@<base>`): each function
builds its model and data from its params and hands a Job to the one training routine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.core import catalog, paths
from pipeline.core.catalog import base_settings
from pipeline.core.files import atomic_dir
from pipeline.core.params import Params
from pipeline.data.prepare import load_prepared
from pipeline.data.split import SPLITS
from pipeline.training import train
from pipeline.training.job import load_feature_splits, load_image_splits, make_job
from pipeline.training.train import Splits


def base_weights(params: Params, base: str) -> Path:
    """Resolve pretrained.bases.<base>.weights once into models/bases/<base>.weights.h5."""
    from pipeline.models.bases import save_base_weights

    return save_base_weights(base, base_settings(params, base).weights, params.train.seed)


def extract(params: Params, base: str, batch_size: int = 32) -> Path:
    """Run the frozen base once over every split; cache the features for the dense head."""
    from pipeline.models.pretrained import extract_features

    extractor = _feature_extractor(params, base)
    image_size = base_settings(params, base).image_size
    out = paths.FEATURES_DIR / base
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            images, labels = load_prepared(image_size, split)
            print(f"extract {base} features of {len(images)} {split} images")
            features = extract_features(extractor, images, batch_size)
            np.savez(tmp / f"{split}.npz", features=features, labels=labels)
    print(f"wrote {out}")
    return out


def features(params: Params, base: str) -> dict:
    """The book's listing 5.17-5.18: a dense head on the cached conv-base features."""
    from pipeline.models.pretrained import dense_head, head_on_pixels

    model = catalog.trained_model(params, "features", base)
    settings, data = params.train.features, load_feature_splits(base)
    pooling = base_settings(params, base).pooling

    def build_model():
        width = data.train[0].shape[1]
        return dense_head(width, settings.dense_units, settings.dropout, f"features_{base}")

    def pixels_model(head):  # its MLflow Model takes photos: the conv base, then the head
        return head_on_pixels(base, model.image_size, pooling, head, f"{model.name}_on_images")

    job = make_job(params, model, build_model=build_model, data=data, pixels_model=pixels_model)
    return train.run(job)


def frozen_aug(params: Params, base: str) -> dict:
    """Listing 5.20-5.21: the frozen base inside the model, trained with augmentation.

    With `cached_copies: K` (the CPU fast path) the base runs once over K augmented copies
    of the training set and the dense head trains on those features; the saved model is
    the same architecture as on-the-fly training, so finetune continues from either."""
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import dense_head, frozen_base_model, with_head

    model = catalog.trained_model(params, "frozen_aug", base)
    settings, pooling = params.train.frozen_aug, base_settings(params, base).pooling

    def full_model():
        layer = augmentation(params.augmentation, params.train.seed)
        size, units = model.image_size, settings.dense_units
        return frozen_base_model(base, size, pooling, units, layer, f"frozen_aug_{base}")

    data = load_image_splits(model.image_size)
    if not settings.cached_copies:
        return train.run(make_job(params, model, build_model=full_model, data=data))
    started = time.perf_counter()
    data = _augmented_features(params, base, data, settings.cached_copies)
    width, units = data.train[0].shape[1], settings.dense_units
    job = make_job(
        params,
        model,
        build_model=lambda: dense_head(width, units, 0.0, f"frozen_aug_head_{base}"),
        data=data,
        export=lambda head: with_head(full_model(), head),
        extra_seconds=time.perf_counter() - started,
    )
    return train.run(job)


def finetune(params: Params, base: str) -> dict:
    """Listing 5.22-5.23: continue from frozen_aug with the top of the base unfrozen.

    With `cached_copies: K` (the CPU fast path) the frozen bottom of the base, below
    `finetune_from`, runs once over K augmented copies of the training set; the unfrozen top
    and the Dense layers train on those activations, sharing the network's layers, and the
    saved model is the whole network (pixels in), as on-the-fly training saves it."""
    from pipeline.models.model_io import check_keras_file, load_keras
    from pipeline.models.pretrained import unfreeze_from

    model = catalog.trained_model(params, "finetune", base)
    source = catalog.trained_model(params, "frozen_aug", base)
    check_keras_file(source.model_file)  # missing or truncated: before any data is read
    first_unfrozen = base_settings(params, base).finetune_from

    def build_network():
        network = load_keras(source.model_file, compile=True)
        unfreeze_from(network, base, first_unfrozen)
        return network

    data = load_image_splits(model.image_size)
    if not params.train.finetune.cached_copies:
        return train.run(make_job(params, model, build_model=build_network, data=data))
    return _finetune_on_activations(params, base, model, build_network, data)


def _finetune_on_activations(
    params: Params, base: str, model: catalog.TrainedModel, build_network, images: Splits
) -> dict:
    """The cached path of finetune: its top trains on the bottom's activations."""
    from pipeline.models.pretrained import split_at

    first_unfrozen = base_settings(params, base).finetune_from
    copies = params.train.finetune.cached_copies
    started = time.perf_counter()
    data = _bottom_activations(build_network(), base, first_unfrozen, images, copies)
    networks = []  # the one build_top loads inside the strategy's scope: the model saved

    def build_top():
        networks.append(build_network())
        return split_at(networks[-1], base, first_unfrozen)[1]

    job = make_job(
        params,
        model,
        build_model=build_top,
        data=data,
        export=lambda top: networks[-1],  # the top trained the network's own layers
        extra_seconds=time.perf_counter() - started,
    )
    return train.run(job)


def _feature_extractor(params: Params, base: str):
    """The frozen base + pooling, in the precision the runtime params ask for."""
    import keras

    from pipeline.models.pretrained import feature_extractor
    from pipeline.training import runtime

    settings = base_settings(params, base)
    policy, _ = runtime.precision_policy(params.train.runtime)
    keras.mixed_precision.set_global_policy(policy)
    return feature_extractor(base, settings.image_size, settings.pooling)


def _augmented_features(params: Params, base: str, images, copies: int):
    """Features of `copies` augmented passes over the training set, and of the clean
    validation and test sets, through the frozen base."""
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import extract_features

    extractor = _feature_extractor(params, base)
    augment = augmentation(params.augmentation, params.train.seed)
    x_train, y_train = images.train
    features = _augmented_passes(extractor, augment, x_train, copies, base, np.float32)
    return Splits(
        (features, np.tile(y_train, copies)),
        (extract_features(extractor, images.validation[0]), images.validation[1]),
        (extract_features(extractor, images.test[0]), images.test[1]),
    )


def _bottom_activations(network, base: str, first_unfrozen: str, images, copies: int) -> Splits:
    """The activations below `first_unfrozen` of `copies` augmented passes over the training
    set (through the network's own seeded augmentation layer), and of the clean validation
    and test sets.

    They keep the dtype the bottom computes in (float32, or bfloat16/float16 under mixed
    precision): exactly what the whole network feeds its top, and half the memory of
    float32 under mixed precision (Lite0 at 224 px: 14 x 14 x 112, 88 KB an image in
    float32). Validation and test go through the network's own bottom, so the top on them
    computes what the whole network computes on the images, and the test accuracy train.run
    records is the saved network's; the training copies go through the faster folded one."""
    import keras

    from pipeline.data.dataset import image_batches, predictions
    from pipeline.models.pretrained import folded_bottom, split_at

    exact = split_at(network, base, first_unfrozen)[0]
    # the folded copy is built afresh: in the network's precision, not the global default
    policy = network.get_layer(base).get_layer(first_unfrozen).dtype_policy.name
    keras.mixed_precision.set_global_policy(policy)
    fast = folded_bottom(network, base, first_unfrozen)
    augment = network.get_layer("augmentation")
    x_train, y_train = images.train
    activations = _augmented_passes(fast, augment, x_train, copies, base, fast.outputs[0].dtype)

    def clean(split):
        x, y = split
        return predictions(exact, image_batches(x, 32), verbose=2), y

    training = (activations, np.tile(y_train, copies))
    return Splits(training, clean(images.validation), clean(images.test))


def _augmented_passes(model, augment, images, copies: int, base: str, dtype) -> np.ndarray:
    """`model`'s outputs, as `dtype`, on `copies` augmented passes over `images` (through
    `augment`, training=True): the cached copies of both fast paths. One dataset serves
    every pass: the layer draws afresh each time (its seed generator's state moves on)."""
    from pipeline.data.dataset import image_batches, predictions

    n = len(images)
    outputs = np.empty((copies * n, *model.output_shape[1:]), dtype)
    dataset = image_batches(images, 32, lambda x: augment(x, training=True))
    for copy in range(copies):  # filled in place: a list then np.concatenate holds it twice
        print(f"augmented copy {copy + 1}/{copies} through {base}")
        outputs[copy * n : (copy + 1) * n] = predictions(model, dataset, verbose=2)
    return outputs
