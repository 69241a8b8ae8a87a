"""How params.yaml is read (pipeline/core/params.py, load_params): a file DVC refuses is
refused here too, before any stage runs."""

from __future__ import annotations

import sys

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import _UniqueKeyLoader, load_params
from tests.helpers.project import ROOT, run


def _with_a_second_train_under_split(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    first = text.index("\n  train: 1000") + 1
    line = text[:first].count("\n") + 1
    doubled = text.replace("  test: 500\n", "  test: 500\n  train: 7\n", 1)
    (tmp_path / "params.yaml").write_text(doubled)
    second = doubled[: doubled.index("\n  train: 7") + 1].count("\n") + 1
    return tmp_path / "params.yaml", line, second


def test_a_duplicate_key_is_refused_as_dvc_refuses_it(tmp_path):
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    path, first, second = _with_a_second_train_under_split(tmp_path)
    with pytest.raises(YAMLFileCorruptedError):  # DVC's own reader
        parse_yaml(path.read_text(), str(path))
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path}: duplicate key 'train' (lines {first} and {second}); "
        "DVC refuses such a file: keep one of them"
    )


def test_check_refuses_a_duplicate_key_in_one_line(tmp_path):
    _with_a_second_train_under_split(tmp_path)
    result = run([sys.executable, "-m", "pipeline", "check"], tmp_path, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: params.yaml: duplicate key 'train' (lines ")
    assert "valid" not in result.stdout


def test_the_same_key_in_two_sections_and_yaml_merges_are_fine(tmp_path):
    # `train` under split and at the top level, `seed` in many sections: the project's own file
    assert load_params(ROOT / "params.yaml").split.train == 1000
    merged = tmp_path / "merge.yaml"
    merged.write_text("a: &base {k: 1}\nb:\n  <<: *base\n  k: 2\n")
    assert yaml.load(merged.read_text(), Loader=_UniqueKeyLoader) == {"a": {"k": 1}, "b": {"k": 2}}
