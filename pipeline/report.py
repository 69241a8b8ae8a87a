"""Stage `report`: every model's scores in the book's order, beside the book's numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import plots, registry, tracking
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.params import PRETRAINED_MODELS, SCRATCH_MODELS, Params
from pipeline.paths import METRICS_DIR, PROGRESSION_MD, PROGRESSION_PNG
from pipeline.run_record import read_metrics

# Deep Learning with Python, 1st ed., ch. 5 (VGG16 for the pretrained models).
BOOK = {
    "baseline": (0.72, 'validation, "70-72%"'),
    "augmented": (0.82, 'validation, "82%"'),
    "features": (0.90, 'validation, "about 90%"'),
    "frozen_aug": (0.96, 'validation, "about 96%"'),
    "finetune": (0.968, 'test, "97%"'),
}


def expected_runs(params: Params) -> list[tuple[str, str, str]]:
    """(run name, model, base) of every model the current params train, in the book's order."""
    runs = [(model, model, "none") for model in SCRATCH_MODELS]
    for model in PRETRAINED_MODELS:
        runs += [(f"{model}-{base}", model, base) for base in params.pretrained.bases]
    return runs


def progression_table(params: Params, metrics_dir: Path = METRICS_DIR) -> pd.DataFrame:
    rows = []
    for run_name, model, base in expected_runs(params):
        path = metrics_dir / f"{run_name}.json"
        if not path.is_file():
            raise PipelineError(
                f"{path} not found; run `dvc repro` so every model is trained first"
            )
        metrics = read_metrics(path)
        rows.append(
            {
                "model": run_name,
                "base": base,
                "test_accuracy": metrics["test_accuracy"],
                "best_val_accuracy": metrics["best_val_accuracy"],
                "book": BOOK[model][0],
                "book_measure": BOOK[model][1],
                "epochs": metrics["epochs"],
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "# Accuracy progression",
        "",
        "Deep Learning with Python (1st ed., ch. 5) reproduced by `dvc repro`; the book's",
        "numbers are for VGG16 and are mostly validation accuracy (its column says which).",
        "",
        "| model | base | test accuracy | best validation accuracy | book | book's measure | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.model} | {row.base} | {row.test_accuracy:.4f} | {row.best_val_accuracy:.4f} | "
            f"{row.book:.3f} | {row.book_measure} | {row.epochs} |"
        )
    return "\n".join(lines) + "\n"


def report(params: Params) -> pd.DataFrame:
    import mlflow

    table = progression_table(params)
    tracking.connect()
    champion = registry.crown_champion(table, params.registry.model_name)
    write_text(PROGRESSION_MD, markdown(table) + champion)
    plots.progression_chart(table, PROGRESSION_PNG)
    with mlflow.start_run(run_name="report", tags=tracking.run_tags("report", {})):
        mlflow.log_metrics(
            {f"{row.model}.test_accuracy": row.test_accuracy for row in table.itertuples()}
        )
        mlflow.log_artifact(str(PROGRESSION_MD))
        mlflow.log_artifact(str(PROGRESSION_PNG))
    print(PROGRESSION_MD.read_text())
    return table
