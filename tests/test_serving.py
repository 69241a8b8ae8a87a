"""Trained models you can use: MLflow Models, the registry's champion, `predict`, a served model.

Slow: the test run's trained project (synthetic photos; VGG16 with random weights), trained
by a real `dvc repro` with a real MLflow store; its models are loaded in fresh processes and
served by a real `mlflow models serve` on 127.0.0.1. Fast, in this process: `predict`'s model
argument and the served model's refusals, on a tiny Keras model saved here."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline.core.errors import PipelineError
from pipeline.core.files import read_metrics
from pipeline.data import images
from tests.helpers.photos import encoded, photo
from tests.helpers.project import TINY_MODELS, command_env, run
from tests.helpers.servers import wait_until_up
from tests.helpers.synthetic import corrupt_jpeg, jpeg_bytes, synthetic_image
from tests.helpers.tiny_model import save_tiny_keras
from tests.helpers.tracking import client_of, experiment_id, store_uri, tracked_runs
from tests.helpers.visual_backends import jax_without_tensorflow

NAME = "dogs-vs-cats"
MODELS = TINY_MODELS  # the trained project's


# Function-scoped, as cheap: a test reading the trained project shares no module fixture, so
# those tests spread over the workers once it is built (tests/run_order.py)
@pytest.fixture
def project(trained_project):
    """The shared trained project (tests/conftest.py): every model, on VGG16."""
    return trained_project.project


@pytest.fixture
def photos(tmp_path):
    """Held-out photos (a seed the training archive did not use) in the three formats, and
    their labels."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng, labels = np.random.default_rng(99), {}
    for i in range(12):
        for label in ("cat", "dog"):
            path = folder / f"{label}{i}.{('jpg', 'png', 'webp')[i % 3]}"
            synthetic_image(label, 64, rng).save(path)
            labels[path.name] = label
    return folder, labels


def store_env(project) -> dict:
    return {"MLFLOW_TRACKING_URI": store_uri(project)}


@pytest.mark.slow
def test_every_model_is_a_version_and_champion_is_the_best_on_validation(project):
    client = client_of(project)
    versions = client.search_model_versions(f"name = '{NAME}'")
    by_model = {v.tags["model"]: v for v in versions}
    assert sorted(by_model) == sorted(MODELS) and len(versions) == len(MODELS)
    runs = {r.info.run_id: r for r in tracked_runs(client)}
    for model, version in by_model.items():
        source_run = runs[version.tags["run_id"]]
        assert source_run.info.run_name == model
        for tag in ("dvc.stage", "git.commit", "split_sha256", "pipeline.repro_id"):
            assert version.tags[tag] == source_run.data.tags[tag]
    val = {m: read_metrics(project / f"reports/metrics/{m}.json") for m in MODELS}
    best = max(v["best_val_accuracy"] for v in val.values())
    expected = next(m for m in MODELS if val[m]["best_val_accuracy"] == best)  # book order
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["model"] == expected
    assert f"**{expected}**" in (project / "reports/progression.md").read_text()


@pytest.mark.slow
def test_runs_have_a_logged_model_and_the_split_as_input_dataset(project):
    client = client_of(project)
    experiment = experiment_id(client)
    runs = client.search_runs([experiment], "attributes.run_name != 'report'")
    assert sorted(r.info.run_name for r in runs) == sorted(MODELS)
    for run_ in runs:
        (dataset_input,) = run_.inputs.dataset_inputs
        dataset = dataset_input.dataset
        assert (dataset.name, dataset.digest) == ("split", run_.data.tags["split_sha256"])
        assert json.loads(dataset.source) == {"uri": "data/split.csv"}
        (logged,) = client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run_.info.run_id}'"
        )
        assert logged.name == "classifier"
        linked = {m.key: m.value for m in logged.metrics}
        for key in ("test_accuracy", "best_val_accuracy"):
            assert linked[key] == run_.data.metrics[key]


LOAD_AND_PREDICT = """
import json, sys
from pathlib import Path
import mlflow, numpy as np, pandas as pd
photos, project, features_uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
assert "pipeline" not in sys.modules
champion = mlflow.pyfunc.load_model("models:/dogs-vs-cats@champion")
files = sorted(photos.iterdir())
answer = champion.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
# The features model is conv base + head: on photos it matches the head on cached features.
features_model = mlflow.pyfunc.load_model(features_uri)
with np.load(project / "data/prepared/32px/test.npz") as arrays:
    served = features_model.predict(pd.DataFrame({"pixels": list(arrays["images"])}))
import keras
head = keras.saving.load_model(project / "models/features-vgg16.keras")
with np.load(project / "data/features/vgg16/test.npz") as arrays:
    direct = head.predict(arrays["features"], verbose=0).ravel()
print(json.dumps({
    "labels": dict(zip([f.name for f in files], answer["label"])),
    "p_dog": answer["p_dog"].tolist(),
    "features_gap": float(np.abs(served["p_dog"].to_numpy() - direct).max()),
}))
"""


@pytest.mark.slow
def test_pyfunc_loads_in_a_fresh_process_and_predicts_held_out_photos(project, photos, tmp_path):
    folder, labels = photos
    features = client_of(project).search_model_versions(f"name = '{NAME}'")
    (features_version,) = [v for v in features if v.tags["model"] == "features-vgg16"]
    result = run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(folder), str(project),
         f"models:/{NAME}/{features_version.version}"],
        tmp_path,  # not the project: nothing there to import from
        env=store_env(project),
    )  # fmt: skip
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    correct = [answer["labels"][name] == label for name, label in labels.items()]
    assert np.mean(correct) >= 0.8, answer  # chance is 0.5
    assert all(0 <= p <= 1 for p in answer["p_dog"])
    assert answer["features_gap"] < 1e-4


@pytest.fixture(scope="module")
def server(trained_project):
    project = trained_project.project
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = command_env(store_env(project))  # the venv's uvicorn on PATH
    log = open(project.parent / "serve.log", "w")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, project.parent / "serve.log", "mlflow models serve")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        process.wait(timeout=30)
        log.close()


def _post_image(url: str, data: bytes) -> requests.Response:
    payload = {"dataframe_records": [{"image": base64.b64encode(data).decode()}]}
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


@pytest.mark.slow
def test_served_model_answers_jpeg_and_rejects_garbage(server):
    rng = np.random.default_rng(5)
    dog = _post_image(server, jpeg_bytes(synthetic_image("dog", 64, rng)))
    assert dog.status_code == 200, dog.text
    (answer,) = dog.json()["predictions"]
    assert answer["label"] == "dog" and answer["p_dog"] > 0.5

    garbage = _post_image(server, b"this is not a photo")
    assert 400 <= garbage.status_code < 500
    assert "row 0: not a readable image" in garbage.json()["message"]
    not_json = requests.post(
        f"{server}/invocations", data=b"\xff\xd8garbage", timeout=60,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert 400 <= not_json.status_code < 500

    cat = _post_image(server, jpeg_bytes(synthetic_image("cat", 64, rng)))  # still serving
    assert cat.status_code == 200 and cat.json()["predictions"][0]["label"] == "cat"


@pytest.mark.slow
def test_predict_a_folder_with_a_corrupt_file(project, photos, tmp_path):
    folder, labels = photos
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in labels:
        (mixed / name).write_bytes((folder / name).read_bytes())
    (mixed / "broken.jpg").write_bytes(corrupt_jpeg())
    (mixed / "notes.txt").write_text("not a photo, not a photo name: skipped")
    result = run(
        [sys.executable, "-m", "pipeline", "predict", str(mixed), "--csv", str(tmp_path / "p.csv")],
        project,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2  # the file's own line, and the count at the end
    assert errors[0].startswith(f"error: {mixed / 'broken.jpg'}: not a readable image (")
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert sorted(Path(file).name for file, _, _ in lines) == sorted(labels)
    assert np.mean([labels[Path(f).name] == label for f, label, _ in lines]) >= 0.8
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == len(labels) + 1
    assert table["error"].notna().sum() == 1


def test_predict_with_no_champion_says_to_run_dvc_repro(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(
        jpeg_bytes(synthetic_image("cat", 64, np.random.default_rng(1)))
    )
    result = run([sys.executable, "-m", "pipeline", "predict", "cat.jpg"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("run `dvc repro` to train and register the models")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # no empty store made on the way


def test_pixels_and_bad_input_of_the_pyfunc():
    from mlflow.exceptions import MlflowException

    from pipeline.serving.inference import pixels_of

    pixels = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3))
    batch = pixels_of(pd.DataFrame({"pixels": list(pixels)}), 16)
    assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
    for frame, message in [
        (pd.DataFrame({"image": [b"junk"]}), "row 0: not a readable image"),
        (pd.DataFrame({"pixels": [np.zeros((4, 4))]}), "row 0: pixels of shape (4, 4)"),
        (pd.DataFrame({"photo": [b"x"]}), "expected a column 'image'"),
    ]:
        with pytest.raises(MlflowException, match=re.escape(message)) as info:
            pixels_of(frame, 16)
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    return save_tiny_keras(tmp_path_factory.mktemp("model") / "tiny.keras")


def test_predict_model_is_a_local_file_unless_it_is_a_uri(tmp_path, monkeypatch, tiny_keras):
    from pipeline.serving import predict

    def no_store(uri):
        raise AssertionError(f"{uri} was looked up in the MLflow store")

    monkeypatch.setattr(predict, "_load_registered", no_store)
    for missing in ("missing.h5", "missing.keras", str(tmp_path / "dir/model")):
        with pytest.raises(PipelineError, match=f"^--model {re.escape(missing)}: no such file"):
            predict.load_classifier(missing)
    size, scores = predict.load_classifier(str(tiny_keras))
    assert size == 32 and scores(np.zeros((2, 32, 32, 3), np.uint8))["p_dog"].shape == (2,)
    with pytest.raises(AssertionError, match="models:/dogs-vs-cats@champion was looked up"):
        predict.load_classifier("models:/dogs-vs-cats@champion")


@pytest.fixture(scope="module")
def served_pyfunc(tmp_path_factory, tiny_keras):
    """The MLflow Model of the tiny Keras model, saved and loaded as MLflow serves it: its
    schema check runs before our pyfunc."""
    import mlflow

    from pipeline.serving import inference

    path = tmp_path_factory.mktemp("pyfunc") / "model"
    mlflow.pyfunc.save_model(
        path,
        python_model=Path(inference.__file__).with_name("entry.py"),
        artifacts={inference.KERAS_ARTIFACT: str(tiny_keras)},
        signature=inference.signature(),
        pip_requirements=[],
    )
    return mlflow.pyfunc.load_model(str(path))


def test_the_served_model_says_which_columns_it_reads(served_pyfunc):
    from mlflow.exceptions import MlflowException

    from pipeline.serving.inference import pixels_of

    with pytest.raises(MlflowException, match="got neither; only these two columns are read"):
        served_pyfunc.predict(pd.DataFrame({"img": [b"x"]}))
    with pytest.raises(MlflowException, match=r"got the columns \['img'\]"):
        pixels_of(pd.DataFrame({"img": [b"x"]}), 32)  # without MLflow's schema check


def test_the_served_model_refuses_a_photo_over_the_limit_and_serves_on(served_pyfunc, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    too_big = encoded(photo((1500, 1000)), "PNG")
    with pytest.raises(MlflowException, match=r"row 0: too large: 1500 x 1000 pixels") as error:
        served_pyfunc.predict(pd.DataFrame({"image": [too_big]}))
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "send JPEG, PNG or WebP" not in str(error.value)
    huge_jpeg = encoded(photo((2400, 2400)), "JPEG")  # decoded at 1/8 for 32 px: 300 x 300
    answer = served_pyfunc.predict(pd.DataFrame({"image": [huge_jpeg]}))
    assert answer["label"].iloc[0] in ("cat", "dog") and 0 <= answer["p_dog"].iloc[0] <= 1


# Saves a tiny model on JAX and logs it as train.write_and_log does; prints the model id.
LOG_ON_JAX = """
import sys, types
from pathlib import Path
import mlflow
from pipeline.serving.logged_model import log_model
from tests.helpers.tiny_model import save_tiny_keras
model_file = save_tiny_keras(Path(sys.argv[1]))
kind = types.SimpleNamespace(task="dogs-vs-cats", classes=("cat", "dog"))
job = types.SimpleNamespace(
    model=types.SimpleNamespace(kind=kind, image_size=32), split_sha256=None,
    pixels_model=None, stage="train@baseline", name="baseline",
)
with mlflow.start_run():
    print("MODEL_ID", log_model(job, model_file))
"""
# Loads a logged model in a process that chose no Keras backend; prints what it saw as JSON.
LOAD_UNCHOSEN = """
import json, sys
import mlflow, numpy as np, pandas as pd
uri = sys.argv[1]
frame = pd.DataFrame({"pixels": list(np.load(sys.argv[2]))})
answer = mlflow.pyfunc.load_model(uri).predict(frame)
import keras
requirements = open(mlflow.pyfunc.get_model_dependencies(uri)).read().split()
print(json.dumps({
    "backend": keras.backend.backend(), "tensorflow": "tensorflow" in sys.modules,
    "p_dog": answer["p_dog"].tolist(), "requirements": requirements,
}))
"""


def test_a_model_logged_on_jax_loads_and_predicts_where_tensorflow_is_not(
    tmp_path, migrated_store_template
):
    pytest.importorskip("jax")
    from pipeline.models.model_io import load_keras
    from pipeline.serving.inference import classify

    env = jax_without_tensorflow(tmp_path / "blocked")
    shutil.copyfile(migrated_store_template, tmp_path / "mlflow.db")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["KERAS_HOME"] = str(tmp_path / "keras_home")  # no keras.json naming a backend
    logged = _python(LOG_ON_JAX, [str(tmp_path / "tiny.keras")], tmp_path, env)
    model_id = logged.split("MODEL_ID ")[-1].strip()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    env["KERAS_BACKEND"] = ""  # chosen by the model's config, not by this process
    loaded = _python(LOAD_UNCHOSEN, [f"models:/{model_id}", "pixels.npy"], tmp_path, env)
    seen = json.loads(loaded.strip().splitlines()[-1])

    assert seen["backend"] == "jax" and not seen["tensorflow"]
    names = {line.split("==")[0] for line in seen["requirements"] if "==" in line}
    assert {"jax", "jaxlib", "keras", "mlflow"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu"}
    on_tensorflow = classify(load_keras(tmp_path / "tiny.keras"), pixels)["p_dog"]
    np.testing.assert_allclose(seen["p_dog"], on_tensorflow, atol=1e-6)


def _python(code: str, args: list[str], cwd: Path, env: dict) -> str:
    command = [sys.executable, "-c", code, *args]
    full = command_env(env)
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # an earlier test's store's
        if name not in env:
            full.pop(name, None)
    result = subprocess.run(command, cwd=cwd, env=full, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_dvc_yaml_declares_the_models_as_artifacts(project):
    # DVC's own reader, in a process of its own: an in-process Repo takes over logging.
    read = (
        "import json; from dvc.repo import Repo; "
        "print(json.dumps({k: [a.type, a.path] for k, a in "
        "Repo('.').artifacts.read()['dvc.yaml'].items()}))"
    )
    artifacts = json.loads(run([sys.executable, "-c", read], project).stdout)
    for model in MODELS:
        kind, path = artifacts[model]
        assert kind == "model"
        assert (project / path).is_file()
