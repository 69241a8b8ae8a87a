"""`python -m pipeline compare`: each model's accuracy over seeds, from the MLflow store.

One training run is one draw: the baseline's test accuracy moves by about three points
from one seed to the next, more than some differences between models. This reads the
finished training runs, groups them by model and configuration, and reports test and best
validation accuracy as mean ± standard deviation (n) over the values of the replicate param
(`train.seed` by default), then says which differences between groups are larger than
that noise.

- A configuration is every logged param but the replicate param, unless `--by` names the
  params that tell groups apart (the others are then pooled, and a note says which differ).
- Only the latest run per (group, seed) counts: a rerun replaces, never doubles, a draw.
- Differences: Welch's t-test on test accuracy (unequal variances; the samples are
  independent, as the same seed in two models draws unrelated initialisations), with
  Holm's correction over all pairs, so "beyond the noise" means corrected p < 0.05.
Writes reports/compare.md, .png and .csv, and logs them to an MLflow run `compare`.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_text
from pipeline.reporting import plots
from pipeline.tracking import store

COMPARE_MD = Path("reports/compare.md")
COMPARE_PNG = Path("reports/compare.png")
COMPARE_CSV = Path("reports/compare.csv")
SCORES = {"test_accuracy": "test accuracy", "best_val_accuracy": "best validation accuracy"}
ALPHA = 0.05
GROUP_TAG = "tags.pipeline.model"


@dataclass(frozen=True)
class Selection:
    """Which runs count and how they are grouped."""

    over: str = "train.seed"  # the replicate param: its values are the draws
    by: tuple[str, ...] = ()  # params that tell groups apart; (): every param but `over`
    models: tuple[str, ...] = ()  # run names; (): every model
    commit: str = ""  # a git revision: only runs trained at that commit
    since: str = ""  # an ISO date or time: only runs started since
    where: str = ""  # an MLflow search filter, ANDed with the above

    def filter_string(self) -> str:
        clauses = ["attributes.status = 'FINISHED'"]
        if self.commit:
            clauses.append(f"tags.`git.commit` = '{_resolve_commit(self.commit)}'")
        if self.since:
            clauses.append(f"attributes.start_time >= {_epoch_ms(self.since)}")
        if self.where:
            clauses.append(self.where)
        return " and ".join(clauses)


def _resolve_commit(revision: str) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise PipelineError(f"--commit {revision}: not a commit of this git repository")
    return result.stdout.strip()


def _epoch_ms(moment: str) -> int:
    try:
        return int(datetime.fromisoformat(moment).timestamp() * 1000)
    except ValueError:
        raise PipelineError(
            f"--since {moment}: not an ISO date or time (e.g. 2026-11-24 or 2026-11-24T09:30)"
        ) from None


def load_runs(selection: Selection) -> pd.DataFrame:
    """Finished training runs that match: model, replicate value, params, scores, time."""
    import mlflow

    try:
        found = mlflow.search_runs(
            experiment_names=[store.EXPERIMENT], filter_string=selection.filter_string()
        )
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"--filter {selection.where!r}: {exc.message}") from None
    over = f"params.{selection.over}"
    if found.empty or "metrics.test_accuracy" not in found or over not in found:
        found = pd.DataFrame(columns=["metrics.test_accuracy", over, "tags.mlflow.runName"])
    found = found[found["metrics.test_accuracy"].notna() & found[over].notna()]
    # A model is its run name, or its tag pipeline.model where the run name holds the seed
    # (MNIST's mnist_convnet-max-valid-1 is a draw of mnist_convnet-max-valid).
    if GROUP_TAG in found:
        found = found.assign(
            **{"tags.mlflow.runName": found[GROUP_TAG].fillna(found["tags.mlflow.runName"])}
        )
    if selection.models:
        found = found[found["tags.mlflow.runName"].isin(selection.models)]
    if found.empty:
        raise PipelineError(
            f"no finished training runs with a {selection.over} param match "
            f"({selection.filter_string()}) in experiment {store.EXPERIMENT} at "
            f"{store.tracking_uri()}; train some (docs/comparing.md) or loosen the filters"
        )
    return found.rename(
        columns={
            "tags.mlflow.runName": "model",
            over: "draw",
            **{f"metrics.{s}": s for s in SCORES},
        }
    )


def group_runs(runs: pd.DataFrame, selection: Selection) -> tuple[pd.DataFrame, list[str]]:
    """Label every run with its group; keep the latest per (group, draw); notes on pooling."""
    params = sorted(c for c in runs if c.startswith("params."))
    keys = params if not selection.by else [_param_column(runs, p) for p in selection.by]
    runs = runs.assign(config=runs[keys].fillna("").astype(str).agg("|".join, axis=1))
    runs = runs.sort_values("start_time", ascending=False)
    runs = runs.drop_duplicates(["model", "config", "draw"]).copy()
    runs["group"] = runs.apply(lambda run: _label(run, runs, keys), axis=1)
    notes = []
    for group, members in runs.groupby("group", sort=False):
        pooled = [c.removeprefix("params.") for c in params if members[c].nunique() > 1]
        if selection.by and pooled:
            notes.append(f"{group} pools runs that differ in {', '.join(pooled)}")
    return runs.sort_values(["model", "group"]), notes


def _param_column(runs: pd.DataFrame, name: str) -> str:
    column = name if name.startswith(("params.", "tags.")) else f"params.{name}"
    if column not in runs:
        raise PipelineError(f"--by {name}: no selected run has this param or tag")
    return column


def _label(run: pd.Series, runs: pd.DataFrame, keys: list[str]) -> str:
    """The model, and the values of the keys that vary between that model's groups."""
    same_model = runs[runs["model"] == run["model"]].fillna({k: "" for k in keys})
    varying = [k for k in keys if same_model[k].nunique() > 1]
    values = ", ".join(
        f"{k.split('.', 1)[1]}={run[k] if pd.notna(run[k]) else 'unset'}" for k in varying
    )
    return f"{run['model']} ({values})" if values else run["model"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n, the draws, mean and standard deviation of each score."""
    rows = []
    for group, members in runs.groupby("group", sort=False):
        row = {"group": group, "model": members["model"].iloc[0], "n": len(members)}
        row["draws"] = ", ".join(sorted(members["draw"].astype(str), key=_numeric_first))
        for score in SCORES:
            row[f"{score}_mean"] = float(members[score].mean())
            row[f"{score}_std"] = float(members[score].std(ddof=1))  # NaN for n = 1
        rows.append(row)
    return pd.DataFrame(rows)


def _numeric_first(value: str) -> tuple:
    return (0, float(value), "") if re.fullmatch(r"-?\d+(\.\d*)?", value) else (1, 0.0, value)


def pairwise(samples: dict[str, np.ndarray]) -> pd.DataFrame:
    """Welch's t-test of every pair of groups with two draws or more, Holm-corrected."""
    from scipy import stats

    rows = []
    for a, b in itertools.combinations(samples, 2):
        x, y = np.asarray(samples[a], float), np.asarray(samples[b], float)
        if min(len(x), len(y)) < 2:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            _, p = stats.ttest_ind(x, y, equal_var=False)
        rows.append({"a": a, "b": b, "difference": x.mean() - y.mean(), "p": float(p)})
    table = pd.DataFrame(rows, columns=["a", "b", "difference", "p"])
    table["p_holm"] = holm(table["p"])
    table["beyond_noise"] = table["p_holm"] < ALPHA
    return table.sort_values("p", na_position="last").reset_index(drop=True)


def holm(p: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN: no spread in either group)."""
    valid = p.dropna().sort_values()
    adjusted, running = pd.Series(np.nan, index=p.index), 0.0
    for rank, (index, value) in enumerate(valid.items()):
        running = max(running, min(1.0, (len(valid) - rank) * value))
        adjusted[index] = running
    return adjusted


def markdown(summary: pd.DataFrame, pairs: pd.DataFrame, notes: list[str], about: str) -> str:
    lines = ["# Seed spread", "", about, ""]
    lines.append("| group | n | draws | " + " | ".join(SCORES.values()) + " |")
    lines.append("| --- | --- | --- | " + " | ".join("---" for _ in SCORES) + " |")
    for row in summary.itertuples():
        cells = [_mean_std(getattr(row, f"{s}_mean"), getattr(row, f"{s}_std")) for s in SCORES]
        lines.append(f"| {row.group} | {row.n} | {row.draws} | " + " | ".join(cells) + " |")
    lines += ["", "Differences in test accuracy (Welch's t-test, Holm-corrected over the pairs):"]
    lines += ["", "| group | against | difference | p | Holm p | beyond the noise |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for row in pairs.itertuples():
        verdict = "n/a (no spread)" if np.isnan(row.p) else ("yes" if row.beyond_noise else "no")
        lines.append(
            f"| {row.a} | {row.b} | {row.difference:+.4f} | {row.p:.3g} | {row.p_holm:.3g} | {verdict} |"
        )
    if pairs.empty:
        lines.append("| (no two groups with two draws or more) | | | | | |")
    if notes:
        lines += [""] + [f"Note: {note}." for note in notes]
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.4f}" + ("" if np.isnan(std) else f" ± {std:.4f}")


def run_compare(selection: Selection, argv: str = "") -> pd.DataFrame:
    """Compare, write reports/compare.*, log them to MLflow; return the summary."""
    uri = store.tracking_uri()
    if missing := store.missing_store_file(uri):  # connect() would create an empty store
        raise PipelineError(
            f"the MLflow store {uri} does not exist ({missing}); train some models first "
            "(docs/comparing.md), or set MLFLOW_TRACKING_URI to the store that has them"
        )
    store.connect()
    runs, notes = group_runs(load_runs(selection), selection)
    summary = summarise(runs)
    samples = {g: m["test_accuracy"].to_numpy() for g, m in runs.groupby("group", sort=False)}
    pairs = pairwise(samples)
    about = (
        f"`python -m pipeline compare{argv}`: {len(runs)} finished training runs of experiment "
        f"`{store.EXPERIMENT}` ({selection.filter_string()}), the latest per group and "
        f"{selection.over}; mean ± standard deviation over the {selection.over} values (draws)."
    )
    write_text(COMPARE_MD, markdown(summary, pairs, notes, about))
    write_text(COMPARE_CSV, summary.to_csv(index=False))
    plots.spread_chart(summary, SCORES, COMPARE_PNG)
    _log(summary, selection)
    print(COMPARE_MD.read_text())
    return summary


def _log(summary: pd.DataFrame, selection: Selection) -> None:
    import mlflow

    tags = {**store.git_state(), "pipeline.command": "compare"}
    with mlflow.start_run(run_name="compare", tags=tags):
        mlflow.log_params(
            {"over": selection.over, "by": ",".join(selection.by) or "(every param)"}
            | {"filter": selection.filter_string()[:500]}
        )
        for row in summary.itertuples():
            key = re.sub(r"[^\w\-./ ]", "_", row.group)
            mlflow.log_metrics(
                {f"{key}.n": row.n}
                | {f"{key}.{s}_mean": getattr(row, f"{s}_mean") for s in SCORES}
                | {f"{key}.{s}_std": getattr(row, f"{s}_std") for s in SCORES if row.n > 1}
            )
        for path in (COMPARE_MD, COMPARE_PNG, COMPARE_CSV):
            mlflow.log_artifact(str(path))
