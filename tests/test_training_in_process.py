"""The units behind the training stages, in this process: the one training routine on tiny
real Jobs, the registry crowning a champion, the report, and `predict` on the saved model.

No DVC here and no subprocess: a real MLflow store (sqlite) in a temporary folder, real Keras
convnets trained for a few epochs on learnable synthetic images (tests/helpers/synthetic.py).
A failure shows its own traceback, not a failed `dvc repro`.
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.project import ROOT, TINY_FIT, update_params
from tests.helpers.synthetic import synthetic_image
from tests.helpers.tracking import experiment_id, store_uri, tracked_runs

SIZE = 48
MODELS = ("baseline", "augmented")
FIT = {**TINY_FIT, "epochs": 4}


@dataclass
class Trained:
    """A folder laid out as a project, after baseline and augmented trained in it."""

    root: Path
    params: object  # pipeline.core.params.Params
    metrics: dict[str, dict]
    client: object  # mlflow.MlflowClient on the folder's store
    backend: str = "tensorflow"  # the Keras backend they trained on


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = [np.asarray(synthetic_image(("cat", "dog")[y], SIZE, rng)) for y in labels]
    return np.stack(images), labels.astype(np.int64)


def tiny_params(root: Path, backend: str = "tensorflow"):
    from pipeline.core.params import load_params

    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    patch = {
        "prepare": {"image_sizes": [SIZE]},
        "train": {
            "runtime": {"backend": backend},
            **{model: {"image_size": SIZE, **FIT} for model in MODELS},
        },
        "pretrained": {"bases": {"vgg16": None, "efficientnet_lite0": None}},
    }
    update_params(root, patch)
    return load_params(root / "params.yaml")


def train_in_process(params, name: str) -> dict:
    """What `python -m pipeline train <name>` runs after loading its data, on synthetic data."""
    from pipeline.core import catalog
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.training import train
    from pipeline.training.job import make_job

    model = catalog.trained_model(params, name)
    settings = getattr(params.train, name)

    def build_model():
        layer = (
            augmentation(params.augmentation, params.train.seed) if name == "augmented" else None
        )
        return build_convnet(SIZE, settings.dropout, layer, name)

    data = train.Splits(synthetic_split(60, 1), synthetic_split(20, 2), synthetic_split(20, 3))
    return train.run(make_job(params, model, build_model=build_model, data=data))


def train_models(root: Path, backend: str, patch: pytest.MonkeyPatch) -> dict[str, dict]:
    """What the `trained` fixture trains, in this process (whose Keras runs on `backend`)."""
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", store_uri(root))
    params = tiny_params(root, backend)
    metrics = {}
    sigterm = signal.getsignal(signal.SIGTERM)  # train.run makes SIGTERM a KeyboardInterrupt
    try:
        for name in MODELS:  # augmented with the stage timeline on, baseline without
            if name == "augmented":
                patch.setenv("PIPELINE_TIMELINE", str(root / "timeline.json"))
            metrics[name] = train_in_process(params, name)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return metrics


# The same trainings in a child on JAX, where TensorFlow cannot be imported
IN_CHILD = """
import json, sys
from pathlib import Path
import pytest
from tests.test_training_in_process import train_models
root = Path(sys.argv[1])
with pytest.MonkeyPatch.context() as patch:
    metrics = train_models(root, "jax", patch)
(root / "metrics.json").write_text(json.dumps({**metrics, "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def trained(request, tmp_path_factory, migrated_store_template) -> Trained:
    """Trained in this process on TensorFlow, or in a child on JAX (tests/helpers/backends.py):
    the same tests read either."""
    from mlflow import MlflowClient

    from pipeline.core.params import load_params
    from tests.helpers.backends import backend_env, run_child

    backend, root = request.param, tmp_path_factory.mktemp(f"in-process-{request.param}")
    if backend == "tensorflow":
        with pytest.MonkeyPatch.context() as patch:
            metrics = train_models(root, backend, patch)
    else:
        shutil.copyfile(migrated_store_template, root / "mlflow.db")  # as this process's start
        run_child(IN_CHILD, backend_env(backend, root), timeout=600, args=[str(root)])
        metrics = json.loads((root / "metrics.json").read_text())
        assert metrics.pop("tensorflow") is False  # the training path needs none on JAX
    params = load_params(root / "params.yaml")
    return Trained(root, params, metrics, MlflowClient(store_uri(root)), backend)


def tensorflow_only(trained: Trained) -> None:
    """For the tests of what is the same whichever backend trained: one run of them."""
    if trained.backend != "tensorflow":
        pytest.skip("backend-independent: the TensorFlow variant runs it")


def test_timeline_marks_every_phase_of_every_epoch_in_order(trained):
    """PIPELINE_TIMELINE (benchmarks/benchmark.py): where the stage's time went, epoch by epoch."""
    timeline = json.loads((trained.root / "timeline.json").read_text())
    start = timeline["start"]
    order = ["data_loaded", "model_built", "fit_begin", "fit_end", "evaluated", "written"]
    assert [start[name] for name in order] == sorted(start[name] for name in order)
    epochs = timeline["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, FIT["epochs"] + 1))
    phases = ["begin", "first_step_end", "train_end", "validation_begin", "validation_end"]
    phases += ["callbacks_begin", "history_file", "mlflow", "backup"]
    for epoch, following in zip(epochs, epochs[1:] + [None], strict=True):
        times = [epoch[phase] for phase in phases]
        assert times == sorted(times), epoch
        assert following is None or following["begin"] >= epoch["backup"]
    assert start["fit_begin"] <= epochs[0]["begin"] and epochs[-1]["backup"] <= start["fit_end"]


def test_a_stage_without_timeline_writes_none_and_logs_every_epoch(trained):
    """The default path: no hooks in fit; each epoch still reaches MLflow (EpochLogger)."""
    run = run_of(trained, "baseline")
    history = trained.client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, FIT["epochs"] + 1))
    timeline = json.loads((trained.root / "timeline.json").read_text())
    assert len(timeline["epochs"]) == FIT["epochs"]  # augmented's alone: baseline wrote none


def run_of(trained: Trained, name: str):
    runs = tracked_runs(trained.client, name)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_train_run_learns_and_returns_its_scores(trained):
    for name in MODELS:
        metrics = trained.metrics[name]
        assert metrics["epochs"] == FIT["epochs"]
        assert 0 < metrics["best_epoch"] <= FIT["epochs"]
    assert trained.metrics["baseline"]["test_accuracy"] >= 0.85  # chance is 0.5


@pytest.mark.parametrize("name", MODELS)
def test_train_run_writes_every_output(trained, name):
    from pipeline.core.files import read_metrics

    root = trained.root
    assert read_metrics(root / f"reports/metrics/{name}.json") == trained.metrics[name]
    history = pd.read_csv(root / f"reports/history/{name}.csv")
    assert list(history["epoch"]) == list(range(1, FIT["epochs"] + 1))
    assert "epoch_seconds" not in history  # timing is not a DVC output (byte identity)
    details = json.loads((root / f"reports/details/{name}.json").read_text())
    assert (details["model"], details["base"], details["image_size"]) == (name, "none", "48")
    assert np.sum(details["confusion_matrix"]) == 20
    timing = json.loads((root / f"reports/timing/{name}.json").read_text())
    assert timing["train_seconds"] > 0
    for figure in ("curves.png", "confusion.png"):
        assert (root / f"reports/figures/{name}/{figure}").stat().st_size > 5_000
    assert not list(root.rglob("*.tmp")) and not (root / ".checkpoints" / name).exists()


@pytest.mark.parametrize("name", MODELS)
def test_train_run_is_one_mlflow_run_with_params_curves_scores_and_model(trained, name):
    from pipeline.core.files import sha256_of
    from pipeline.training.precision import choose, this_cpu_flags

    run = run_of(trained, name)
    assert run.info.status == "FINISHED"
    assert run.data.params[f"train.{name}.epochs"] == str(FIT["epochs"])
    assert run.data.params["train.seed"] == "42"
    assert ("augmentation.rotation_degrees" in run.data.params) == (name == "augmented")
    assert run.data.metrics["test_accuracy"] == trained.metrics[name]["test_accuracy"]
    steps = [m.step for m in trained.client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == list(range(1, FIT["epochs"] + 1))
    tags = run.data.tags
    assert (tags["dvc.stage"], tags["base"], tags["image_size"]) == (name, "none", "48")
    # mixed_precision: auto, decided from this machine's CPU flags; no XLA on a CPU, but JAX
    # compiles every step
    assert (tags["precision"], tags["precision_reason"]) == choose("auto", 0, this_cpu_flags())
    jit = "true" if trained.backend == "jax" else "false"
    assert (tags["backend"], tags["jit_compile"], tags["replicas"]) == (trained.backend, jit, "1")
    assert run.data.params["train.runtime.backend"] == trained.backend
    logged = trained.client.search_logged_models(
        [experiment_id(trained.client)], f"source_run_id = '{run.info.run_id}'"
    )
    assert len(logged) == 1
    digest = sha256_of(trained.root / f"models/{name}.keras")[:16]
    assert logged[0].tags["model_sha256"] == digest


def test_the_logged_model_takes_photos(trained, tmp_path):
    import mlflow

    run = run_of(trained, "baseline")
    mlflow.set_tracking_uri(store_uri(trained.root))
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/classifier")
    rng = np.random.default_rng(7)
    photos, labels = [], []
    for i in range(10):
        label = ("cat", "dog")[i % 2]
        path = tmp_path / f"{label}{i}.jpg"
        synthetic_image(label, 64, rng).save(path)
        photos.append(path.read_bytes())
        labels.append(label)
    answer = model.predict(pd.DataFrame({"image": photos}))
    assert list(answer.columns) == ["label", "p_dog"]
    assert (answer["label"] == labels).mean() >= 0.8


def test_report_crowns_the_best_on_validation_and_logs_a_run(trained):
    tensorflow_only(trained)
    from pipeline.reporting.report import report
    from pipeline.tracking.registry import CHAMPION

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained.root)
        patch.setenv("MLFLOW_TRACKING_URI", store_uri(trained.root))
        table = report(trained.params)
    assert list(table["model"]) == list(MODELS)
    best = max(MODELS, key=lambda m: trained.metrics[m]["best_val_accuracy"])  # first of equals
    champion = trained.client.get_model_version_by_alias("dogs-vs-cats", CHAMPION)
    assert champion.tags["model"] == best
    text = (trained.root / "reports/progression.md").read_text()
    assert f"**{best}**" in text and "chosen on validation, never on test" in text
    assert (trained.root / "reports/progression.png").stat().st_size > 10_000
    assert (
        run_of(trained, "report").data.metrics["baseline.test_accuracy"]
        == (trained.metrics["baseline"]["test_accuracy"])
    )


def test_registry_picks_validation_over_test_and_keeps_versions(trained):
    tensorflow_only(trained)
    from pipeline.tracking.registry import CHAMPION, crown_champion

    name = "champion-on-validation"
    rows = [  # augmented: the better test score, baseline: the better validation score
        {"model": "baseline", "best_val_accuracy": 0.9, "test_accuracy": 0.6},
        {"model": "augmented", "best_val_accuracy": 0.7, "test_accuracy": 0.99},
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained.root)
        patch.setenv("MLFLOW_TRACKING_URI", store_uri(trained.root))
        from pipeline.tracking import store

        store.connect()
        paragraph = crown_champion(pd.DataFrame(rows), name)
        again = crown_champion(pd.DataFrame(rows), name)  # registered already: no new version
    assert "**baseline**" in paragraph and paragraph == again
    versions = trained.client.search_model_versions(f"name = '{name}'")
    assert sorted(v.tags["model"] for v in versions) == ["augmented", "baseline"]
    assert trained.client.get_model_version_by_alias(name, CHAMPION).tags["model"] == "baseline"


def test_predict_a_saved_model_on_photos_and_a_broken_file(trained, tmp_path, capsys):
    from pipeline.serving.predict import predict

    rng = np.random.default_rng(11)
    for i in range(8):
        label = ("cat", "dog")[i % 2]
        synthetic_image(label, 80, rng).save(tmp_path / f"{label}{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "answers.csv"
    failed = predict([tmp_path], str(trained.root / "models/baseline.keras"), out, 4)
    assert failed == 1
    answers = pd.read_csv(out)
    assert len(answers) == 9
    good = answers[answers["error"].isna()]
    truth = good["file"].map(lambda f: "cat" if Path(f).name.startswith("cat") else "dog")
    assert (good["label"] == truth).mean() >= 0.75
    assert "broken.jpg" in answers.loc[answers["error"].notna(), "file"].iloc[0]
    assert "1 of 9 files could not be read" in capsys.readouterr().err


def test_report_table_on_hand_made_metrics(tmp_path):
    from pipeline.core.params import load_params
    from pipeline.reporting.report import markdown, progression_table

    params = load_params(ROOT / "params.yaml")
    names = [
        "baseline", "augmented", "features-vgg16", "features-efficientnet_lite0",
        "frozen_aug-vgg16", "frozen_aug-efficientnet_lite0",
        "finetune-vgg16", "finetune-efficientnet_lite0",
    ]  # fmt: skip
    for i, name in enumerate(names):
        scores = {"test_accuracy": 0.5 + i / 100, "best_val_accuracy": 0.6, "epochs": 3}
        (tmp_path / f"{name}.json").write_text(json.dumps({name: scores}))
    table = progression_table(params, tmp_path)
    assert list(table["model"]) == names  # the book's order, every base
    assert list(table["book"]) == [0.72, 0.82, 0.90, 0.90, 0.96, 0.96, 0.968, 0.968]
    text = markdown(table)
    assert '| finetune-vgg16 | vgg16 | 0.5600 | 0.6000 | 0.968 | test, "97%" | 3 |' in text
    (tmp_path / "baseline.json").unlink()
    from pipeline.core.errors import PipelineError

    with pytest.raises(PipelineError, match="baseline.json not found; run `dvc repro`"):
        progression_table(params, tmp_path)


@pytest.mark.parametrize("classes", [2, 10])
def test_test_scores_from_one_prediction_pass_match_evaluate(classes):
    """train.evaluate predicts the test set once; its loss and accuracy are evaluate's."""
    import keras

    from pipeline.data.dataset import make_dataset
    from pipeline.training.train import compile_model, test_scores

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, classes, size=50)
    keras.utils.set_random_seed(0)
    units, activation = (1, "sigmoid") if classes == 2 else (classes, "softmax")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(units, activation=activation)])
    compile_model(model, 1e-3, classes=classes)
    dataset = make_dataset(x, y, 20)
    loss, accuracy = model.evaluate(dataset, verbose=0)
    ours = test_scores(model, y, model.predict(dataset, verbose=0))
    assert ours == pytest.approx((loss, accuracy), abs=1e-6)


def test_input_pipeline_reads_the_arrays_in_place():
    """make_dataset gathers its batches from the NumPy arrays: no copy of them in tf.data's
    graph (a captured tensor was copied there once per dataset: finetune's 30 cached copies
    peaked at 13.3 GB), and each row comes once an epoch, shuffled by the seed, in its dtype."""
    import ml_dtypes

    from pipeline.data.dataset import make_dataset

    pixels = np.random.default_rng(0).integers(0, 256, (300, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(300)  # each row's label is its index: a batch says which rows it holds
    dataset = make_dataset(pixels, labels, 32, training=True, seed=3)
    graph_bytes = len(dataset._as_serialized_graph().numpy())
    assert graph_bytes < pixels.nbytes / 20, graph_bytes
    # no autotuning thread: freeing an iterator waited a second for it (README: Performance)
    assert dataset.options().autotune.enabled is False

    def epoch(dataset) -> tuple[np.ndarray, np.ndarray]:
        batches = list(dataset.as_numpy_iterator())
        rows = np.concatenate([y for _, y in batches]).ravel().astype(int)
        return np.concatenate([x for x, _ in batches]), rows

    x, rows = epoch(dataset)
    assert sorted(rows) == list(range(300)) and not np.array_equal(rows, np.arange(300))
    assert x.dtype == np.float32 and np.array_equal(x, pixels[rows].astype(np.float32))
    again = make_dataset(pixels, labels, 32, training=True, seed=3)
    assert np.array_equal(epoch(again)[1], rows)  # the seed's order

    activations = pixels.astype(ml_dtypes.bfloat16)  # finetune's cached activations
    x, rows = epoch(make_dataset(activations, labels, 32))
    assert x.dtype == ml_dtypes.bfloat16 and np.array_equal(x, activations)  # in order
