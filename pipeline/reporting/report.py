"""Stage `report`: every model's scores in the book's order, beside the book's numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import read_metrics, write_text
from pipeline.core.params import Params
from pipeline.core.paths import METRICS_DIR, PROGRESSION_MD, PROGRESSION_PNG
from pipeline.reporting import plots
from pipeline.tracking import registry, store


def progression_table(params: Params, metrics_dir: Path = METRICS_DIR) -> pd.DataFrame:
    rows = []
    for model in catalog.every_model(params):
        path = metrics_dir / model.metrics_file.name
        if not path.is_file():
            raise PipelineError(
                f"{path} not found; run `dvc repro` so every model is trained first"
            )
        metrics = read_metrics(path)
        rows.append(
            {
                "model": model.name,
                "base": model.base or "none",
                "test_accuracy": metrics["test_accuracy"],
                "best_val_accuracy": metrics["best_val_accuracy"],
                "book": model.kind.book_accuracy,
                "book_measure": model.kind.book_measure,
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
    store.connect()
    champion = registry.crown_champion(table, params.registry.model_name)
    write_text(PROGRESSION_MD, markdown(table) + champion)
    plots.progression_chart(table, PROGRESSION_PNG)
    with mlflow.start_run(run_name="report", tags=store.run_tags("report", {})):
        mlflow.log_metrics(
            {f"{row.model}.test_accuracy": row.test_accuracy for row in table.itertuples()}
        )
        mlflow.log_artifact(str(PROGRESSION_MD))
        mlflow.log_artifact(str(PROGRESSION_PNG))
    print(PROGRESSION_MD.read_text())
    return table
