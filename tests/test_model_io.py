"""Reading a saved model (pipeline/models/model_io.py): a damaged or missing `.keras` file is
one line that names the file and the stage that restores or retrains it, from every reader."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params
from tests.helpers.project import ROOT
from tests.helpers.tiny_model import save_tiny_keras


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    return save_tiny_keras(tmp_path_factory.mktemp("model") / "tiny.keras")


def damaged(kind: str, intact: Path) -> bytes:
    data = intact.read_bytes()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "text":
        return b"not a model\n"
    buffer = io.BytesIO()  # "zip": a zip, but not of a model
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "text", "zip"])
@pytest.mark.parametrize(
    ("name", "stage"), [("baseline", "baseline"), ("frozen_aug-vgg16", "frozen_aug@vgg16")]
)
def test_a_damaged_model_file_names_itself_and_its_stage(
    tmp_path, monkeypatch, tiny_keras, kind, name, stage
):
    from pipeline.models.model_io import load_keras

    monkeypatch.chdir(tmp_path)
    path = Path("models") / f"{name}.keras"
    path.parent.mkdir()
    path.write_bytes(damaged(kind, tiny_keras))
    with pytest.raises(PipelineError) as error:
        load_keras(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable Keras model (")
    assert f"run `dvc checkout --force {stage}`" in message and f"`dvc repro {stage}`" in message
    assert "File not found" not in message and "\n" not in message


def test_a_model_file_of_no_stage_and_a_good_one(tmp_path, tiny_keras):
    from pipeline.models.model_io import load_keras

    assert load_keras(tiny_keras).input_shape == (None, 32, 32, 3)
    text = tmp_path / "x.keras"
    text.write_text("not a model")
    with pytest.raises(PipelineError, match=r"x.keras: not a readable Keras model \(not a zip"):
        load_keras(text)
    with pytest.raises(PipelineError, match=r"nope.keras: no such file; give a .keras file"):
        load_keras(tmp_path / "nope.keras")


def test_visualize_and_finetune_say_which_model_to_restore(tmp_path, monkeypatch, tiny_keras):
    from pipeline.core import catalog
    from pipeline.training.pretrained import finetune
    from pipeline.visualize.stage import load_model

    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("baseline", "frozen_aug-vgg16"):
        (tmp_path / f"models/{name}.keras").write_bytes(damaged("truncated", tiny_keras))
    with pytest.raises(
        PipelineError, match=r"^models/baseline.keras: .*dvc checkout --force baseline"
    ):
        load_model(params, catalog.by_name(params, "baseline"))
    # Before any data is read (there is none here) or TensorFlow runs.
    with pytest.raises(PipelineError, match=r"^models/frozen_aug-vgg16.keras: .*frozen_aug@vgg16"):
        finetune(params, "vgg16")
