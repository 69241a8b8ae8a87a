"""reports/results.md: every model's figures over seeds from a real MLflow store, each step
of the progression tested against the one before, the README's generated tables; and every
figure the README and docs/ quote is in the committed results file."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from pipeline.reporting import machine
from pipeline.reporting import results as results_module
from tests.helpers.tracking import store_uri

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (1, 2, 3)
# (model, test accuracy per seed): the book's order, one conv base
PROGRESSION = {
    "baseline": (0.70, 0.72, 0.71),
    "augmented": (0.80, 0.83, 0.81),
    "features-efficientnet_lite0": (0.980, 0.985, 0.982),
    "frozen_aug-efficientnet_lite0": (0.981, 0.984, 0.983),
}


def log_training_run(model: str, seed: int, accuracy: float, **params) -> None:
    """A finished run as the training stage logs it: the model's tags, its params, scores."""
    import mlflow

    kind = model.split("-", 1)[0]
    tags = {"pipeline.model": model, "precision": "float32", "cpu.model": "test CPU"}
    with mlflow.start_run(run_name=model, tags=tags):
        mlflow.log_params({"train.seed": seed, f"train.{kind}.epochs": 30, **params})
        mlflow.log_metrics(
            {
                "test_accuracy": accuracy,
                "best_val_accuracy": accuracy + 0.01,
                "train_seconds": 100.0 + seed,
                "seconds_per_epoch": 3.3,
                "peak_rss_mb": 1500 + seed,
            }
        )


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder with params.yaml, a README with generated blocks, and a store."""
    from pipeline.tracking import store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp_path))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "README.md").write_text(
        "intro\n<!-- results:progression -->\nold\n<!-- /results -->\nmiddle\n"
        "<!-- results:mnist -->\nold\n<!-- /results -->\nend\n"
    )
    # the real measurement, on a small matrix: a test needs its shape, not the limit
    monkeypatch.setattr(
        results_module.machine, "describe", functools.partial(machine.describe, 128)
    )
    store.connect()
    return tmp_path


def test_results_reports_seeds_settings_and_each_step(project):
    for model, accuracies in PROGRESSION.items():
        for seed, accuracy in zip(SEEDS, accuracies, strict=True):
            log_training_run(model, seed, accuracy)
    log_training_run("baseline", 9, 0.5, **{"train.baseline.epochs": 2})  # one seed: not chosen

    doc = results_module.results()

    rows = {row["model"]: row for row in doc["progression"]}
    assert list(rows) == list(PROGRESSION)  # the book's order
    assert rows["baseline"]["n"] == 3 and rows["baseline"]["seeds"] == [1, 2, 3]
    assert rows["baseline"]["test_accuracy_mean"] == pytest.approx(0.71)
    assert rows["baseline"]["test_accuracy_sd"] == pytest.approx(0.01)
    assert rows["baseline"]["settings"] == []  # the book's epochs, as params.yaml
    assert rows["baseline"]["peak_rss_mb"] == 1503
    verdicts = [step["verdict"] for step in doc["steps"]]
    assert verdicts[0].startswith("augmented beats baseline by 10.3 points, p = ")
    assert "within the noise" in verdicts[2]  # frozen_aug against features
    assert doc["machine"]["matmul_gflops_float32"] > 0
    text = (project / "reports/results.md").read_text()
    assert "| baseline | the book’s | 3 | 0.7100 ± 0.0100 |" in text
    readme = (project / "README.md").read_text()
    assert "old" not in readme and "| augmented |" in readme and readme.endswith("end\n")
    assert json.loads((project / "reports/results.json").read_text())["steps"] == doc["steps"]


def test_a_configuration_with_fewer_seeds_shows_its_settings(project):
    for seed in SEEDS[:2]:
        log_training_run("baseline", seed, 0.7 + seed / 100, **{"train.baseline.epochs": 5})

    doc = results_module.results()

    (row,) = doc["progression"]
    assert row["settings"] == ["train.baseline.epochs=5"]
    assert doc["steps"] == [] and doc["mnist"] == []


FENCE = re.compile(r"```.*?```", re.DOTALL)
GENERATED = re.compile(r"<!-- results:\w+ -->.*?<!-- /results -->", re.DOTALL)
# an accuracy (0.xxx), a percentage, or a measured time or size
FIGURE = re.compile(
    r"\b0\.\d{3,4}\b|\b\d+(?:\.\d+)?%|\b\d[\d,]*(?:\.\d+)? ?(?:s|ms|min|minutes|seconds|MB|GB)\b"
)


def quoted_figures(path: Path) -> set[str]:
    """The figures a page states in its prose (code blocks and generated tables aside)."""
    text = GENERATED.sub("", FENCE.sub("", path.read_text()))
    return {match.group(0) for match in FIGURE.finditer(text)}


@pytest.mark.parametrize(
    "page",
    ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))],
)
def test_every_figure_quoted_is_in_the_results_file(page):
    results_text = (ROOT / "reports/results.md").read_text()
    missing = sorted(f for f in quoted_figures(ROOT / page) if f not in results_text)
    assert not missing, f"{page} quotes figures that reports/results.md does not hold: {missing}"


def test_the_readme_tables_are_the_results_files():
    doc = json.loads((ROOT / "reports/results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for name, table in (
        ("progression", results_module.progression_table(doc["progression"])),
        ("mnist", results_module.mnist_table(doc["mnist"])),
    ):
        block = re.search(rf"<!-- results:{name} -->\n(.*?)<!-- /results -->", readme, re.DOTALL)
        if block:
            assert block[1] == "\n".join(table) + "\n", (
                f"README's {name} table: rerun `python -m pipeline results`"
            )
