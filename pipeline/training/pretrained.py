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
    """Listing 5.22-5.23: continue from frozen_aug with the top of the base unfrozen."""
    from pipeline.models.model_io import check_keras_file, load_keras
    from pipeline.models.pretrained import unfreeze_from

    model = catalog.trained_model(params, "finetune", base)
    source = catalog.trained_model(params, "frozen_aug", base)
    check_keras_file(source.model_file)  # missing or truncated: before any data is read
    first_unfrozen = base_settings(params, base).finetune_from

    def build_model():
        network = load_keras(source.model_file, compile=True)
        unfreeze_from(network, base, first_unfrozen)
        return network

    data = load_image_splits(model.image_size)
    return train.run(make_job(params, model, build_model=build_model, data=data))


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
    from pipeline.data.dataset import make_dataset
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import extract_features

    extractor = _feature_extractor(params, base)
    augment = augmentation(params.augmentation, params.train.seed)
    x_train, y_train = images.train
    train_features = []
    for copy in range(copies):
        print(f"augmented copy {copy + 1}/{copies} through {base}")
        dataset = make_dataset(x_train, y_train, 32).map(lambda x, y: augment(x, training=True))
        train_features.append(extractor.predict(dataset, verbose=2).astype(np.float32))
    return Splits(
        (np.concatenate(train_features), np.tile(y_train, copies)),
        (extract_features(extractor, images.validation[0]), images.validation[1]),
        (extract_features(extractor, images.test[0]), images.test[1]),
    )
