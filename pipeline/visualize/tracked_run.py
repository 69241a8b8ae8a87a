"""The MLflow run that trained a model, where its figures are logged as artifacts.

A training run carries the tag `dvc.stage` (pipeline/tracking/store.py). Of the finished runs of
that stage, the one of the same `dvc repro` / `dvc exp run` (tag `pipeline.repro_id`) is
taken; when the model was trained by an earlier repro (only `visualize` params changed),
the latest finished one. Artifacts of a finished run can still be logged.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from pipeline.tracking import store

ARTIFACT_DIR = "visualize"


def training_run(client, stage: str):
    """The finished MLflow run of `stage` that made the current model, or None."""
    experiment = client.get_experiment_by_name(store.EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`dvc.stage` = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    this_repro = store.repro_id()
    same_repro = [run for run in runs if run.data.tags.get("pipeline.repro_id") == this_repro]
    return (same_repro or runs or [None])[0]


def finish(command: str, target, seconds: dict[str, float]) -> None:
    """The end of a visualize stage: one line of what each kind of figure took and where
    they are, then the figures logged to the model's training run."""
    timings = ", ".join(f"{kind} {value:.1f} s" for kind, value in seconds.items())
    print(f"{command} {target.name}: {timings}; wrote {target.visualize_dir}")
    log_figures(target.stage, target.visualize_dir)


def log_figures(stage: str, folder: Path) -> str | None:
    """Log every file under `folder` to the training run of `stage`, under visualize/;
    return the run id, or None (said on stderr) when there is no such run."""
    from mlflow.tracking import MlflowClient

    uri = store.tracking_uri()
    client = MlflowClient(uri)
    run = training_run(client, stage)
    if run is None:
        # --force: the stage is up to date; --single-item: --force alone reruns its upstream
        redo = os.environ.get("DVC_STAGE")
        redo = f"dvc repro --force --single-item {redo}" if redo else shlex.join(sys.orig_argv)
        print(
            f"warning: no finished MLflow run of stage {stage!r} in {uri}: the figures are in "
            f"{folder} but not logged; `dvc repro --force --single-item {stage}` trains the "
            f"model and logs its run, then `{redo}` logs them",
            file=sys.stderr,
        )
        return None
    client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_DIR)
    count = sum(1 for path in folder.rglob("*") if path.is_file())
    print(
        f"logged {count} figures to MLflow run {run.info.run_id} ({run.info.run_name}) "
        f"under {ARTIFACT_DIR}/"
    )
    return run.info.run_id
