"""params.yaml (pipeline/core/params.py): the shipped file is valid and the book's, and every
bad value (a wrong key, a number out of range, a boolean where a number belongs) is one line
that names its key, before any work; the experiments' args files give valid params."""

import re
import subprocess
import sys

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params
from tests.helpers.project import ROOT, make_project, update_params


def write(tmp_path, update):
    project = tmp_path / "p"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    update_params(project, update)
    return project / "params.yaml"


def test_shipped_params_are_valid_and_the_books():
    params = load_params(ROOT / "params.yaml")
    assert params.split.counts() == {"train": 1000, "validation": 500, "test": 500}
    assert params.train.baseline.learning_rate == 1e-4
    assert params.train.augmented.epochs == 100
    assert set(params.pretrained.bases) == {"vgg16", "efficientnet_lite0"}


def test_bare_on_and_off_mean_the_switch_not_a_boolean(tmp_path):
    path = write(tmp_path, {})
    path.write_text(
        path.read_text()
        .replace("mixed_precision: auto", "mixed_precision: on")
        .replace("jit_compile: auto", "jit_compile: off")
    )  # YAML 1.1 reads booleans
    runtime = load_params(path).train.runtime
    assert (runtime.mixed_precision, runtime.jit_compile) == ("on", "off")


@pytest.mark.parametrize(
    "update, expected",
    [
        ({"split": {"trian": 5}}, "unknown key 'split.trian': did you mean 'train'?"),
        ({"train": {"baseline": {"epoch": 5}}}, "did you mean 'epochs'?"),
        ({"split": {"train": -3}}, "split.train: Input should be greater than 0 (got -3)"),
        (
            {"train": {"baseline": {"image_size": 40}}},
            "train.baseline.image_size: Input should be greater than or equal to 46",
        ),
        ({"train": {"augmented": {"learning_rate": 0}}}, "train.augmented.learning_rate"),
        (
            {"train": {"finetune": {"cached_copies": -1}}},
            "train.finetune.cached_copies: Input should be greater than or equal to 0 (got -1)",
        ),
        ({"split": {"order": "random"}}, "split.order: Input should be 'book' or 'shuffle'"),
        (
            {"train": {"runtime": {"backend": "torch"}}},
            "train.runtime.backend: Input should be 'tensorflow' or 'jax' (got 'torch')",
        ),
        ({"data": {"sha256": "abc"}}, "data.sha256"),
        (
            {"prepare": {"image_sizes": [224]}},
            "train.baseline.image_size is 150, but prepare.image_sizes [224] does not list it",
        ),
        (
            {"pretrained": {"bases": {"resnet": {"image_size": 150, "finetune_from": "x"}}}},
            "unknown conv base 'resnet'",
        ),
        (
            {"pretrained": {"bases": {"vgg16": {"pooling": "max"}}}},
            "pretrained.bases.vgg16.pooling",
        ),
        (
            {"registry": {"model_name": "dogs/cats"}},
            "registry.model_name: a letter or digit first, then only letters, digits",
        ),
        ({"registry": {"model_nme": "x"}}, "unknown key 'registry.model_nme': did you mean"),
        ({"visualize": {"mistakes": 0}}, "visualize.mistakes: Input should be greater than 0"),
        (
            {"visualize": {"filters": {"layers": {"resnet": ["conv1"]}}}},
            "visualize.filters.layers: unknown conv base 'resnet'",
        ),
    ],
)
def test_bad_params_are_one_clear_error(tmp_path, update, expected):
    path = write(tmp_path, update)
    with pytest.raises(PipelineError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def numeric_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from numeric_keys(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}"
        elif isinstance(value, list) and value and isinstance(value[0], int):
            yield f"{prefix}{key}.0"


SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
NUMBERS = list(numeric_keys(SHIPPED))


def test_every_number_of_params_is_found():
    assert len(NUMBERS) > 40 and "train.baseline.epochs" in NUMBERS
    assert "data.transfer.min_bytes_per_second" in NUMBERS and "prepare.image_sizes.0" in NUMBERS


@pytest.mark.parametrize("key", NUMBERS)
def test_a_boolean_is_no_number_anywhere_in_params(tmp_path, key):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[int(leaf) if isinstance(node, list) else leaf] = True
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match=rf"{re.escape(key)}: Input should be a .*\(got True\)"):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [
        ("data", {"source": "x.zip", "sha256": "abc"}, "empty, or 64 hex digits (0-9, a-f)"),
        ("data", {"source": "x.zip", "transfer": {"timeout_seconds": 0}}, "greater than 0"),
        ("data", {"source": "x.zip", "transfer": {"atempts": 2}}, "did you mean 'attempts'"),
    ],
)
def test_data_params_in_words(tmp_path, section, value, expected):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw[section] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match=re.escape(expected)):
        load_params(path)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(PipelineError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_rejects_bad_params_before_any_work(tmp_path):
    project = make_project(
        tmp_path / "proj", {"split": {"test": -1}, "data": {"source": str(tmp_path / "x.zip")}}
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "download"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: params.yaml: split.test: Input should be greater than 0 (got -1)"]
    assert not (project / "data/images").exists()


def test_cli_lists_every_stage():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0
    for stage in ("download", "split", "prepare"):
        assert stage in result.stdout
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"download", "split", "prepare"} <= set(stages)


@pytest.mark.parametrize("name", ["quick", "fast"])
def test_experiment_args_files_give_valid_params_without_vgg16(tmp_path, name):
    """experiments/<name>.args (`dvc exp run $(cat experiments/<name>.args)`): every key
    exists and every value is valid; `~pretrained.bases.vgg16` drops the online base."""
    from harness.project import args_file_assignments, dotted_patch

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assignments = args_file_assignments(ROOT / f"experiments/{name}.args")
    update_params(tmp_path, dotted_patch(*assignments))
    params = load_params(tmp_path / "params.yaml")
    assert list(params.pretrained.bases) == ["efficientnet_lite0"]
    book = load_params(ROOT / "params.yaml")
    if name == "fast":  # the book's schedule: only the fast paths of frozen_aug and finetune
        fast_paths = ("frozen_aug", "finetune")
        for model in fast_paths:
            settings, books = getattr(params.train, model), getattr(book.train, model)
            assert settings.model_copy(update={"cached_copies": 0}) == books
        book_ones = {model: getattr(book.train, model) for model in fast_paths}
        assert params.train.model_copy(update=book_ones) == book.train
        assert params.train.frozen_aug.cached_copies == book.train.frozen_aug.epochs
        assert params.train.finetune.cached_copies == 30
    else:
        assert all(getattr(params.train, m).epochs <= 2 for m in ("baseline", "augmented"))


def test_a_tilde_assignment_deletes_the_key():
    from harness.project import dotted_patch

    assert dotted_patch("~a.b", "a.c=3") == {"a": {"b": None, "c": 3}}
