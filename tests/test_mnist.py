"""Section 5.1 (mnist/dvc.yaml): the networks as the book summarises them, the params, the
data stage's bad inputs, a tiny 10-class training through the one training routine, the
report, and (slow) the whole pipeline under `dvc repro` in a real project.

Synthetic seven-segment digits (tests/helpers/digits.py) stand in for MNIST; the real
5,000-digit sample only where ../shared is present.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from tests.helpers.digits import write_mnist
from tests.helpers.project import ROOT, make_project, ran_stages, run, update_params
from tests.helpers.tracking import client_of, store_uri, tracked_runs

SAMPLE = ROOT.parent / "shared" / "data" / "mnist-5k.npz"
# The book's summary of listing 5.3's convnet (section 5.1), row by row.
BOOK_SUMMARY = [
    ("conv", (26, 26, 32), 320),
    ("max pool", (13, 13, 32), 0),
    ("conv", (11, 11, 64), 18_496),
    ("max pool", (5, 5, 64), 0),
    ("conv", (3, 3, 64), 36_928),
    ("flatten", (576,), 0),
    ("dense", (64,), 36_928),
    ("dense", (10,), 650),
]
TINY_FIT = {"epochs": 3, "batch_size": 32, "learning_rate": 3e-3}  # learns in ~50 steps


def mnist_patch(source: Path, **mnist) -> dict:
    """Params for a small run on `source`: one seed, the book's convnet only."""
    section = {
        "data": {"source": str(source), "sha256": ""},
        "validation": 50,
        "seeds": [1],
        "dense": {**TINY_FIT, "units": 64},
        "convnet": TINY_FIT,
        "grid": {"downsampling": ["max"], "padding": ["valid"]},
    }
    return {"mnist": {**section, **mnist}}


def params_in(folder: Path, patch: dict):
    from pipeline.core.params import load_params

    (folder / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    update_params(folder, patch)
    return load_params(folder / "params.yaml")


# --- the networks, as built (no training) ----------------------------------------------


def test_the_book_convnet_is_the_books_summary_exactly():
    from pipeline.models.mnist import build_convnet
    from pipeline.reporting.convolution import layer_table

    rows = layer_table(build_convnet("max", "valid"))
    assert [(r.kind, r.output, r.params) for r in rows] == BOOK_SUMMARY
    assert sum(r.params for r in rows) == 93_322
    assert [r.receptive_field for r in rows[:5]] == [3, 4, 8, 10, 18]


def test_without_pooling_the_third_conv_sees_only_7x7_and_the_head_is_huge():
    from pipeline.models.mnist import build_convnet
    from pipeline.reporting.convolution import layer_table

    rows = layer_table(build_convnet("none", "valid"))
    convs = [r for r in rows if r.kind == "conv"]
    assert [r.output for r in convs] == [(26, 26, 32), (24, 24, 64), (22, 22, 64)]
    assert [r.receptive_field for r in convs] == [3, 5, 7]
    assert rows[3].output == (30_976,)
    assert rows[4].params == 30_976 * 64 + 64  # "about 2 million" weights in the dense layer


@pytest.mark.parametrize(
    ("downsampling", "padding", "maps"),
    [
        ("average", "valid", [(26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (3, 3, 64)]),
        ("strided", "valid", [(13, 13, 32), (6, 6, 64), (4, 4, 64)]),
        ("max", "same", [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (7, 7, 64)]),
    ],
)
def test_each_variant_shrinks_its_maps_as_it_says(downsampling, padding, maps):
    from pipeline.models.mnist import build_convnet
    from pipeline.reporting.convolution import layer_table

    rows = layer_table(build_convnet(downsampling, padding))
    assert [r.output for r in rows if len(r.output) == 3] == maps


# --- params ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"convnet": {"epoch": 5}}, "unknown key 'mnist.convnet.epoch': did you mean 'epochs'?"),
        ({"grid": {"downsampling": ["maximum"]}}, "mnist.grid.downsampling.0: Input should be"),
        ({"data": {"sha256": "abc"}}, "mnist.data.sha256: empty, or 64 hex digits"),
        ({"visualize": {"seed": 7}}, "mnist: visualize.seed: 7 is not in mnist.seeds [1, 2, 3]"),
    ],
)
def test_a_bad_mnist_param_is_one_line_naming_it(tmp_path, patch, message):
    from pipeline.core.params import load_params

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    update_params(tmp_path, {"mnist": patch})
    with pytest.raises(PipelineError) as error:
        load_params(tmp_path / "params.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


# --- the data stage ----------------------------------------------------------------------


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def data_params(source: str, sha256: str = "", attempts: int = 1):
    from pipeline.core.params import MnistDataParams, MnistParams, TransferParams

    transfer = TransferParams(timeout_seconds=2, attempts=attempts, min_bytes_per_second=10_000)
    data = MnistDataParams(source=source, sha256=sha256, transfer=transfer)
    grid = {"downsampling": ["max"], "padding": ["valid"]}
    return MnistParams(data=data, validation=50, seeds=[1], dense=TINY_FIT, convnet=TINY_FIT, grid=grid)  # fmt: skip


def test_the_data_stage_downloads_checks_and_splits(in_folder, archive_server):
    from pipeline.core.files import sha256_of
    from pipeline.data.mnist import load_digits, mnist

    served = write_mnist(archive_server.directory / "mnist.npz")
    mnist(data_params(f"{archive_server.url}/mnist.npz", sha256_of(served)))
    splits = load_digits()
    assert {s: len(y) for s, (_, y) in splits.items()} == {
        "train": 250,
        "validation": 50,
        "test": 100,
    }
    assert splits["train"][0].shape[1:] == (28, 28, 1) and splits["train"][0].dtype == np.uint8
    assert np.bincount(splits["validation"][1]).tolist() == [5] * 10  # balanced
    report = json.loads((in_folder / "mnist/reports/data.json").read_text())
    assert sum(report["splits"]["test"].values()) == 100


def bad_sources(folder: Path) -> dict[str, tuple[Path, str]]:
    from tests.helpers.digits import digits

    x, y = digits(20, 3)
    text = folder / "text.npz"
    text.write_text("not an npz\n")
    return {
        "not an npz": (text, "text.npz: not a readable .npz file"),
        "missing keys": (write_mnist(folder / "a.npz", y_test=None), "a.npz: no array y_test"),
        "wrong shape": (
            write_mnist(folder / "b.npz", x_train=x[:, :, :27]),
            "b.npz: x_train has shape (20, 28, 27), expected (N, 28, 28)",
        ),
        "wrong dtype": (
            write_mnist(folder / "c.npz", x_test=x.astype(np.float32)),
            "c.npz: x_test has dtype float32, expected uint8",
        ),
        "labels out of range": (
            write_mnist(folder / "d.npz", x_train=x, y_train=y + 1),
            "d.npz: y_train holds labels 1..10, expected 0-9",
        ),
    }


def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(in_folder):
    from pipeline.data.mnist import mnist

    for case, (source, message) in bad_sources(in_folder).items():
        with pytest.raises(PipelineError) as error:
            mnist(data_params(str(source)))
        assert message in str(error.value) and "\n" not in str(error.value), case
        assert not (in_folder / "mnist").exists(), case
    good = write_mnist(in_folder / "good.npz")
    with pytest.raises(PipelineError, match=r"^mnist.data.sha256 mismatch for .*good.npz"):
        mnist(data_params(str(good), "0" * 64))
    assert not (in_folder / "mnist").exists()


def test_an_unreachable_url_fails_in_one_line(in_folder, archive_server):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.data.mnist import mnist

    with pytest.raises(PipelineError, match=r"^mnist.data.source: HTTP 404 .*mnist.npz"):
        mnist(data_params(f"{archive_server.url}/mnist.npz"))
    with pytest.raises(PipelineError, match=r"^mnist.data.source: cannot download .* 1 attempt"):
        mnist(data_params("http://127.0.0.1:9/mnist.npz"))
    # The command: the same line on stderr, exit 1.
    params_in(in_folder, mnist_patch(in_folder / "missing.npz"))
    result = CliRunner().invoke(app, ["mnist"])
    assert result.exit_code == 1 and "missing.npz does not exist" in result.output
    assert not (in_folder / "mnist").exists()


# --- a tiny training through train.run, and predict -------------------------------------


@pytest.fixture(scope="module")
def trained_convnet(tmp_path_factory):
    """The book's convnet trained in this process on synthetic digits (3 epochs)."""
    from pipeline.data.mnist import mnist
    from pipeline.training.mnist import mnist_convnet

    root = tmp_path_factory.mktemp("mnist-in-process")
    sigterm = signal.getsignal(signal.SIGTERM)  # train.run makes SIGTERM a KeyboardInterrupt
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", store_uri(root))
        params = params_in(root, mnist_patch(write_mnist(root / "digits.npz", train=600)))
        mnist(params.mnist)
        try:
            metrics = mnist_convnet(params, "max", "valid", 1)
        finally:
            signal.signal(signal.SIGTERM, sigterm)
    return root, metrics, params


def test_the_convnet_learns_ten_classes_through_the_one_training_routine(trained_convnet):

    root, metrics, _ = trained_convnet
    assert metrics["test_accuracy"] >= 0.8  # chance is 0.1
    name = "mnist_convnet-max-valid-1"
    details = json.loads((root / f"mnist/reports/details/{name}.json").read_text())
    confusion = np.array(details["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 100
    assert np.trace(confusion) / 100 == pytest.approx(metrics["test_accuracy"], abs=0.011)
    for path in (f"models/{name}.keras", f"reports/figures/{name}/confusion.png"):
        assert (root / "mnist" / path).is_file(), path
    client = client_of(root)
    (found,) = tracked_runs(client, name)
    assert found.data.params["mnist.convnet.downsampling"] == "max"
    assert found.data.params["mnist.seed"] == "1" and "train.seed" not in found.data.params
    assert found.data.metrics["test_accuracy"] == metrics["test_accuracy"]


def test_predict_names_the_digit_of_an_image(trained_convnet, tmp_path, capsys):
    from pipeline.serving.predict import predict
    from tests.helpers.digits import digits

    root, _, _ = trained_convnet
    images, labels = digits(10, 5)
    files = []
    for image, label in zip(images, labels, strict=True):
        files.append(tmp_path / f"digit-{label}.png")
        Image.fromarray(image).convert("RGB").save(files[-1])  # a photo: RGB, made grey
    model = root / "mnist/models/mnist_convnet-max-valid-1.keras"
    assert predict(files, str(model), tmp_path / "out.csv", 4) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert len(lines) == 10 and all(label in "0123456789" for _, label, _ in lines)
    right = sum(Path(file).stem == f"digit-{label}" for file, label, _ in lines)
    assert right >= 8, lines
    assert (tmp_path / "out.csv").read_text().startswith("file,label,probability,error")


def test_the_visualize_stage_draws_what_the_convnet_learns(trained_convnet, monkeypatch):
    """mnist_visualize's function in this process (the slow test's repro stops before it):
    one digit through every layer, filter patterns of every conv, logged to the run."""

    from pipeline.visualize.digits import mnist_visualize

    root, _, params = trained_convnet
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(root))
    filters = params.visualize.filters.model_copy(update={"count": 2, "steps": 2})
    visualize = params.visualize.model_copy(update={"filters": filters})
    mnist_visualize(params.model_copy(update={"visualize": visualize}))
    figures = root / "mnist/reports/figures/mnist_convnet-max-valid-1/visualize"
    assert len(list(figures.glob("activations/*.png"))) == 6  # the digit, 3 convs, 2 pools
    assert len(list(figures.glob("filters/*.png"))) == 3
    client = client_of(root)
    (run_,) = tracked_runs(client, "mnist_convnet-max-valid-1")
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id, "visualize")}
    assert artifacts == {"visualize/activations", "visualize/filters"}


# --- the report, on hand-made metrics -----------------------------------------------------


def test_the_report_gives_mean_std_noise_and_the_error_reduction(tmp_path, monkeypatch):
    from pipeline.core import catalog
    from pipeline.reporting import compare
    from pipeline.reporting.convolution import (
        against_the_book,
        error_reduction,
        markdown,
        runs_table,
        variant_models,
        variant_of,
    )

    monkeypatch.chdir(tmp_path)
    grid = {"downsampling": ["max", "none"], "padding": ["valid"]}
    patch = mnist_patch(tmp_path / "x.npz", seeds=[1, 2, 3], grid=grid, dense={"units": 512})
    params = params_in(tmp_path, patch)
    with pytest.raises(PipelineError, match="mnist_dense-1.json not found; run `dvc repro mnist"):
        runs_table(params)
    accuracy = {"dense": [0.90, 0.91, 0.89], "max-valid": [0.95, 0.951, 0.949]}
    accuracy["none-valid"] = [0.94, 0.96, 0.95]
    for model in catalog.every_mnist_model(params):
        seed = int(model.variant.rsplit("-", 1)[-1])
        value = accuracy[variant_of(model)][seed - 1]
        model.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics = {"test_accuracy": value, "best_val_accuracy": value}
        model.metrics_file.write_text(json.dumps({model.name: metrics}))
    runs = runs_table(params)
    summary = compare.summarise(runs)
    samples = {g: m["test_accuracy"].to_numpy() for g, m in runs.groupby("group", sort=False)}
    text = markdown(variant_models(params), runs, summary, against_the_book(samples))
    assert "| dense | 407,050 | 0.9000 ± 0.0100 |" in text
    assert "| max-valid | 93,322 | 0.9500 ± 0.0010 |" in text
    assert "**50% fewer errors**" in text and '"we decreased the error rate by 68%"' in text
    assert "| dense | max-valid | -0.0500 | 0.0124 | 0.0124 | yes |" in text  # one planned test
    assert "| none-valid | max-valid | +0.0000 | 1 | 1 | no |" in text
    assert "| dense | none-valid |" not in text  # only what the section asks
    assert "| flatten | 30,976 |  | 28×28 |" in text
    assert "| conv | (22, 22, 64) | 36,928 | 7×7 |" in text  # none-valid's third conv
    assert error_reduction(0.978, 0.993) == pytest.approx(0.68, abs=0.005)


# --- slow: the pipeline under DVC ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.extended
def test_dvc_repro_runs_the_mnist_pipeline_and_then_nothing(tmp_path, monkeypatch):
    """`dvc repro` of mnist/dvc.yaml up to its report, in a real project on synthetic digits:
    one seed, the dense network and the book's convnet (each stage is a process, ~10 s of
    imports apiece: mnist_visualize is tested in this process above)."""

    from pipeline.serving.predict import load_classifier

    source = write_mnist(tmp_path / "digits.npz", train=600)
    project = make_project(tmp_path / "project", mnist_patch(source))
    target = "mnist/dvc.yaml:convolution"
    first = run(["dvc", "repro", target], project)
    stages = ["mnist", "mnist_dense@1", "mnist_convnet@max-valid-1", "convolution"]
    assert sorted(ran_stages(first.stdout)) == sorted(f"mnist/dvc.yaml:{s}" for s in stages)
    for name in ("mnist_dense-1", "mnist_convnet-max-valid-1"):
        metrics = json.loads((project / f"mnist/reports/metrics/{name}.json").read_text())[name]
        assert 0.3 <= metrics["test_accuracy"] <= 1, name  # chance is 0.1
    report = (project / "reports/convolution.md").read_text()
    assert "| max-valid | 93,322 |" in report and "`models:/mnist@champion`" in report
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    listed = next(iter(shown.values()))["data"]
    assert "mnist_dense-1" in listed["mnist/reports/metrics/mnist_dense-1.json"]["data"]

    client = client_of(project)
    runs = {r.info.run_name: r for r in tracked_runs(client)}
    assert {"mnist_dense-1", "mnist_convnet-max-valid-1", "convolution"} <= set(runs)
    convnet = runs["mnist_convnet-max-valid-1"]
    artifacts = {a.path for a in client.list_artifacts(convnet.info.run_id, "figures")}
    assert "figures/confusion.png" in artifacts
    assert client.get_model_version_by_alias("mnist", "champion")

    # The champion classifies a digit, from the registry (a pyfunc taking photos).
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(project))
    size, scores = load_classifier("models:/mnist@champion")
    digit = np.load(source)["x_test"][:4]
    frame = scores(np.repeat(digit[..., None], 3, axis=-1))
    assert size == 28 and list(frame.columns) == ["label", "probability"]

    # compare: seeds are draws of one model (tag pipeline.model), dogs-vs-cats runs left out.
    from pipeline.reporting.compare import Selection, run_compare

    summary = run_compare(Selection(over="mnist.seed"))
    assert set(summary["group"]) == {"mnist_dense", "mnist_convnet-max-valid"}

    second = run(["dvc", "repro", target], project)
    assert ran_stages(second.stdout) == []


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"{SAMPLE} (the offline MNIST sample) is absent")
def test_the_real_sample_passes_the_data_stage(in_folder):
    from pipeline.data.mnist import load_digits, mnist

    mnist(
        data_params(str(SAMPLE), "e8c1f74d90bf751ff78fa43f8d05e5167fc3f366ea927d02c69925cd6fdffd93")
    )
    splits = load_digits()
    assert {s: len(y) for s, (_, y) in splits.items()} == {
        "train": 3950, "validation": 50, "test": 1000
    }  # fmt: skip
    assert np.bincount(splits["test"][1]).tolist() == [100] * 10
