"""A sweep's report: its configurations ranked by mean test accuracy over seeds, and which of
them differ from the best by more than the seed-to-seed noise.

The runs are the latest FINISHED training run of each of the sweep's experiments (by its
tag dvc.exp_name), grouped by configuration (model + the sweep's overrides), not by logged
params: an override of a key the model's run does not log still makes its own row. The
statistics are compare's (pipeline/reporting/compare.py): each configuration against the
best, Welch's t-test on test accuracy, Holm-corrected over those comparisons. Written to
reports/<name>.md and logged, with the figures, to an MLflow run of the same name.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.files import write_text
from pipeline.sweep import grid
from pipeline.sweep.plan import NAME_PREFIX, Experiment
from pipeline.tracking import store

REPORTS = Path("reports")
EXP_TAG = "tags.dvc.exp_name"


def cell_labels(cells: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Each configuration as the values that set it apart from the others ("" if alone)."""
    keys = grid.varying(cells)
    return {
        cell: ", ".join(
            next((o for o in cell if o.startswith(f"{key}=")), f"{key} as in params.yaml")
            for key in keys
        )
        for cell in cells
    }


def group_of(experiment: Experiment, labels: dict[tuple[str, ...], str]) -> str:
    label = labels.get(experiment.overrides, "")
    return f"{experiment.model} ({label})" if label else experiment.model


def load(experiments: list[Experiment], labels: dict[tuple[str, ...], str]) -> pd.DataFrame:
    """The latest finished training run of each experiment, with its group; PipelineError
    (compare's) when there is none."""
    from pipeline.reporting.compare import Selection, load_runs

    models = tuple(sorted({e.model for e in experiments}))
    where = f"tags.`dvc.exp_name` LIKE '{NAME_PREFIX}%'"
    runs = load_runs(Selection(models=models, where=where))
    by_name = {experiment.name: experiment for experiment in experiments}
    runs = runs[runs[EXP_TAG].isin(by_name)] if EXP_TAG in runs else runs.iloc[:0]
    runs = runs.sort_values("start_time", ascending=False).drop_duplicates(EXP_TAG)
    groups = {name: group_of(experiment, labels) for name, experiment in by_name.items()}
    return runs.assign(group=runs[EXP_TAG].map(groups))


def rank(runs: pd.DataFrame) -> pd.DataFrame:
    """compare's summary, best mean test accuracy first, with each group against the best:
    difference, Welch p, Holm p over the comparisons, beyond the noise."""
    from pipeline.reporting.compare import ALPHA, holm, pairwise, summarise

    summary = summarise(runs).sort_values("test_accuracy_mean", ascending=False, kind="stable")
    summary = summary.reset_index(drop=True)
    samples = {g: m["test_accuracy"].to_numpy() for g, m in runs.groupby("group", sort=False)}
    best = summary["group"].iloc[0]
    p = [np.nan]
    for group in summary["group"].iloc[1:]:
        pair = pairwise({best: samples[best], group: samples[group]})
        p.append(pair["p"].iloc[0] if len(pair) else np.nan)
    summary["difference"] = summary["test_accuracy_mean"] - summary["test_accuracy_mean"].iloc[0]
    summary["p"] = p
    summary["p_holm"] = holm(summary["p"].iloc[1:]).reindex(summary.index)
    summary["beyond_noise"] = summary["p_holm"] < ALPHA
    return summary


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.4f}" + ("" if np.isnan(sd) else f" ± {sd:.4f}")


def _verdict(row) -> tuple[str, str, str, str]:
    """(against the best, p, Holm p, beyond the noise) cells of one ranked row."""
    if row.Index == 0:
        return "best", "", "", ""
    if np.isnan(row.p):
        why = "one seed" if row.n < 2 else "no spread"
        return f"{row.difference:+.4f}", "", "", f"n/a ({why})"
    verdict = "yes" if row.beyond_noise else "no"
    return f"{row.difference:+.4f}", f"{row.p:.3g}", f"{row.p_holm:.3g}", verdict


def table(ranked: pd.DataFrame) -> list[str]:
    lines = [
        "| configuration | n | seeds | test accuracy | best validation accuracy "
        "| against the best | p | Holm p | beyond the noise |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in ranked.itertuples():
        test = _mean_sd(row.test_accuracy_mean, row.test_accuracy_std)
        val = _mean_sd(row.best_val_accuracy_mean, row.best_val_accuracy_std)
        cells = " | ".join(_verdict(row))
        lines.append(f"| {row.group} | {row.n} | {row.draws} | {test} | {val} | {cells} |")
    return lines


def markdown(name: str, about: str, ranked: pd.DataFrame, missing: list[str]) -> str:
    comparisons = len(ranked) - 1
    lines = [f"# {name}", "", about, ""]
    lines += [
        f"{int(ranked['n'].sum())} finished training runs of MLflow experiment "
        f"`{store.EXPERIMENT}`, the latest of each DVC experiment. Ranked by mean test accuracy over the seeds (± standard deviation). Each "
        "configuration against the best: Welch's t-test on test accuracy, Holm-corrected "
        f"over the {comparisons} comparison{'s' * (comparisons != 1)}; beyond the noise: "
        "corrected p < 0.05.",
        "",
        *table(ranked),
    ]
    if missing:
        lines += ["", f"Not finished (run the same command again): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write(name: str, about: str, ranked: pd.DataFrame, missing: list[str], extra=()) -> Path:
    """reports/<name>.md, printed, and logged to an MLflow run `name`."""
    path = REPORTS / f"{name}.md"
    text = markdown(name, about, ranked, missing)
    write_text(path, text + "".join(f"\n{line}" for line in extra) + ("\n" if extra else ""))
    _log(name, ranked, path)
    print(path.read_text(), flush=True)
    return path


def _log(name: str, ranked: pd.DataFrame, path: Path) -> None:
    import mlflow

    command = "search" if name.startswith("search-") else "sweep"
    tags = {**store.git_state(), "pipeline.command": command, "pipeline.sweep": name}
    with mlflow.start_run(run_name=name, tags=tags):
        mlflow.log_params({"configurations": len(ranked), "best": ranked["group"].iloc[0][:500]})
        for row in ranked.itertuples():
            key = re.sub(r"[^\w\-./ ]", "_", row.group)[:200]
            metrics = {f"{key}.n": row.n, f"{key}.test_accuracy_mean": row.test_accuracy_mean}
            if row.n > 1:
                metrics[f"{key}.test_accuracy_std"] = row.test_accuracy_std
            if not np.isnan(row.p_holm):
                metrics[f"{key}.p_holm"] = row.p_holm
            mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(path))
