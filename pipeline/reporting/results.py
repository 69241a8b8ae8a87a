"""`python -m pipeline results`: reports/results.md and .json, the one source of every figure.

Reads the finished training runs of the MLflow store. Per model it takes the configuration
with the most seeds (the latest on a tie), and reports test and best validation accuracy as
mean ± standard deviation, the settings that differ from params.yaml, training time and peak
memory; then whether each step of the book's progression beats the step before beyond the
seeds' noise (Welch's t-test, Holm-corrected over the steps). Section 5.1 (MNIST) the same,
every variant against the book's convnet (reporting/convolution.py's tests). The header
names the machine (CPU model, bfloat16 units, measured matmul limits), the date and the
command. The README's tables are generated from it (`write_readme_tables`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_text
from pipeline.core.paths import PARAMS_FILE
from pipeline.reporting import compare, convolution, machine
from pipeline.tracking import store

RESULTS_MD = Path("reports/results.md")
RESULTS_JSON = Path("reports/results.json")
README = Path("README.md")
STEPS = tuple(catalog.KINDS)  # baseline -> augmented -> features -> frozen_aug -> finetune
NOT_SETTINGS = ("train.seed", "mnist.seed", "total_params", "trainable_params")


def results(where: str = "", argv: str = "", stores: tuple[str, ...] = ()) -> dict:
    """Read the runs of `stores` (default: the project's), write reports/results.md and
    .json and the README's tables."""
    uris = stores or (store.tracking_uri(),)
    for uri in uris:
        if missing := store.missing_store_file(uri):
            raise PipelineError(
                f"the MLflow store {uri} does not exist ({missing}); train the models first "
                "(`dvc repro`), or name the store that has them (MLFLOW_TRACKING_URI, --store)"
            )
    dogs = chosen_runs(compare.Selection(over="train.seed", where=where), uris)
    digits = chosen_runs(compare.Selection(over="mnist.seed", where=where), uris)
    doc = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m pipeline results{argv}",
        "machine": machine.describe(),
        "progression": summary_rows(dogs),
        "steps": step_tests(dogs),
        "mnist": summary_rows(digits),
        "mnist_tests": mnist_tests(digits),
    }
    doc["mnist_error_reduction"] = error_reduction(doc["mnist"])
    write_text(RESULTS_JSON, json.dumps(doc, indent=2) + "\n")
    write_text(RESULTS_MD, markdown(doc))
    if README.is_file():
        write_readme_tables(doc, README)
    print(RESULTS_MD.read_text())
    return doc


def chosen_runs(selection: compare.Selection, uris: tuple[str, ...]) -> pd.DataFrame:
    """The runs of each model's configuration with the most draws (the latest on a tie)."""
    found = [runs for uri in uris if not (runs := _runs_in(uri, selection)).empty]
    if not found:  # none of this kind: its section is empty
        return pd.DataFrame(columns=["model", "group", "draw", "test_accuracy"])
    runs, _ = compare.group_runs(pd.concat(found, ignore_index=True), selection)
    sizes = runs.groupby("group").agg(n=("draw", "size"), latest=("start_time", "max"))
    runs = runs.join(sizes, on="group").sort_values(["n", "latest"], ascending=False)
    best = runs.drop_duplicates("model")[["model", "group"]]
    return runs[runs["group"].isin(best["group"])]


def _runs_in(uri: str, selection: compare.Selection) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return compare.load_runs(selection)
    except PipelineError as exc:  # no run of this kind in this store; a bad filter is named
        if selection.where and str(exc).startswith("--filter"):
            raise
        return pd.DataFrame()


def summary_rows(runs: pd.DataFrame) -> list[dict]:
    """One row per model: settings, seeds, accuracy mean ± sd, seconds, peak memory."""
    rows = []
    for model, members in runs.groupby("model", sort=False):
        rows.append(
            {
                "model": model,
                "settings": settings_changed(members),
                "n": len(members),
                "seeds": sorted(int(float(d)) for d in members["draw"]),
                **_mean_sd(members, "test_accuracy"),
                **_mean_sd(members, "best_val_accuracy"),
                "train_seconds": _mean(members, "metrics.train_seconds", 1),
                "seconds_per_epoch": _mean(members, "metrics.seconds_per_epoch", 2),
                "peak_rss_mb": _max(members, "metrics.peak_rss_mb"),
                "params": _first(members, "params.total_params"),
                "precision": ", ".join(sorted(members["tags.precision"].dropna().unique())),
                "cpu": ", ".join(sorted(_column(members, "tags.cpu.model").dropna().unique())),
                **_book(model),
            }
        )
    return sorted(rows, key=lambda row: _order(row["model"]))


def _mean_sd(members: pd.DataFrame, score: str) -> dict:
    values = members[score].astype(float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return {f"{score}_mean": round(float(values.mean()), 4), f"{score}_sd": _round(sd, 4)}


def _column(members: pd.DataFrame, column: str) -> pd.Series:
    return members[column] if column in members else pd.Series(np.nan, index=members.index)


def _mean(members: pd.DataFrame, column: str, digits: int) -> float | None:
    return _round(float(_column(members, column).astype(float).mean()), digits)


def _max(members: pd.DataFrame, column: str) -> float | None:
    return _round(float(_column(members, column).astype(float).max()), 0)


def _first(members: pd.DataFrame, column: str) -> int | None:
    values = _column(members, column).dropna()
    return int(float(values.iloc[0])) if len(values) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or np.isnan(value) else round(value, digits)


def _book(model: str) -> dict:
    kind = catalog.kind_of(model.split("-", 1)[0])
    return {"book_accuracy": kind.book_accuracy, "book_measure": kind.book_measure}


def _order(model: str) -> tuple:
    """The book's order; MNIST's grid as params.yaml lists it, the book's convnet first."""
    kind, _, rest = model.partition("-")
    kinds = list(catalog.KINDS) + list(catalog.MNIST_KINDS)
    return (kinds.index(kind) if kind in kinds else len(kinds), *map(_grid_rank, rest.split("-")))


def _grid_rank(word: str) -> tuple:
    grid = ("max", "average", "strided", "none", "valid", "same")
    return (grid.index(word), "") if word in grid else (len(grid), word)


def settings_changed(members: pd.DataFrame) -> list[str]:
    """`key=value` for every logged param whose value differs from params.yaml's."""
    current = _flat(yaml.safe_load(PARAMS_FILE.read_text()) if PARAMS_FILE.is_file() else {})
    changed = []
    for column in sorted(c for c in members if c.startswith("params.")):
        key, values = column.removeprefix("params."), members[column].dropna().unique()
        if key in NOT_SETTINGS or len(values) != 1 or key not in current:
            continue
        if _value(values[0]) != _value(current[key]):
            changed.append(f"{key}={values[0]}")
    return changed


def _value(logged) -> object:
    """A param as MLflow logged it (a string) or params.yaml holds it, made comparable:
    `2e-05` and `2.0e-5` are one number (YAML 1.1 reads the first as a string)."""
    value = yaml.safe_load(str(logged))
    try:
        return float(value) if not isinstance(value, bool) else value
    except (TypeError, ValueError):
        return value


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def step_tests(runs: pd.DataFrame) -> list[dict]:
    """Each step of the progression against the one before, per conv base, Holm over the steps."""
    samples = {m: g["test_accuracy"].to_numpy(float) for m, g in runs.groupby("model")}
    bases = sorted({m.split("-", 1)[1] for m in samples if "-" in m})
    tests = []
    for base in bases:
        names = [kind if not catalog.KINDS[kind].pretrained else f"{kind}-{base}" for kind in STEPS]
        pairs = [(a, b) for a, b in zip(names, names[1:], strict=False) if a in samples]
        rows = [_welch(a, b, samples) for a, b in pairs if b in samples]
        holm = compare.holm(pd.Series([row["p"] for row in rows], dtype=float))
        for row, adjusted in zip(rows, holm, strict=True):
            row["p_holm"] = _round(adjusted, 4)
            row["verdict"] = verdict(row)
        tests += rows
    return tests


def _welch(before: str, after: str, samples: dict) -> dict:
    pair = compare.pairwise({after: samples[after], before: samples[before]})
    p = float(pair["p"].iloc[0]) if len(pair) else float("nan")
    difference = samples[after].mean() - samples[before].mean()
    return {"before": before, "after": after, "points": round(100 * difference, 1), "p": p}


def verdict(row: dict) -> str:
    """One line: `augmented beats baseline by 9.5 points, p = 0.003` or why not."""
    if row["p_holm"] is None:
        return f"{row['after']} against {row['before']}: {row['points']:+.1f} points, one seed"
    p = f"p = {row['p_holm']:.2g} (Holm)"
    if row["p_holm"] >= compare.ALPHA:
        return f"{row['after']} against {row['before']}: {row['points']:+.1f} points, {p}: within the noise"
    if row["points"] > 0:
        return f"{row['after']} beats {row['before']} by {row['points']:.1f} points, {p}"
    return f"{row['after']} is below {row['before']} by {-row['points']:.1f} points, {p}"


def mnist_tests(runs: pd.DataFrame) -> list[dict]:
    """The dense network and every grid variant against the book's convnet (section 5.1)."""
    samples = {_variant(m): g["test_accuracy"].to_numpy(float) for m, g in runs.groupby("model")}
    if convolution.BOOK not in samples:
        return []
    table = convolution.against_the_book(samples)
    return [
        {
            "variant": row.a,
            "points": round(100 * row.difference, 2),
            "p_holm": _round(row.p_holm, 4),
            "beyond_noise": bool(row.beyond_noise),
        }
        for row in table.itertuples()
    ]


def error_reduction(rows: list[dict]) -> float | None:
    """The dense network's errors that the book's convnet avoids, as a share (the book: 68%)."""
    means = {row["model"]: row["test_accuracy_mean"] for row in rows}
    if "mnist_dense" not in means or BOOK_CONVNET not in means:
        return None
    return round(convolution.error_reduction(means["mnist_dense"], means[BOOK_CONVNET]), 3)


def _variant(model: str) -> str:
    """`mnist_convnet-max-valid` -> `max-valid`; `mnist_dense` -> `dense`."""
    return "dense" if model == "mnist_dense" else model.split("-", 1)[1]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Results",
        "",
        f"Generated {doc['generated']} by `{doc['command']}` from the MLflow runs. Machine: "
        f"{m['cpu_model']}, {m['cores']} cores, bfloat16 units: {m['bf16_units']}; measured "
        f"matmul limits ({m.get('matmul_backend', 'tensorflow')}) {m['matmul_gflops_float32']} GFLOP/s float32, "
        f"{m['matmul_gflops_bfloat16']} bfloat16 (load average {m['load_average']} while measured).",
        "",
        "## Dogs vs. cats: the book's progression",
        "",
        *progression_table(doc["progression"]),
        *_missing_line(doc["progression"]),
        "",
        "Each step against the one before (Welch's t-test on test accuracy, Holm over the steps):",
        "",
        *([f"- {row['verdict']}" for row in doc["steps"]] or ["- (fewer than two steps trained)"]),
        "",
        "## MNIST (section 5.1)",
        "",
        *mnist_table(doc["mnist"]),
        "",
        *[f"- {_mnist_line(row)}" for row in doc["mnist_tests"]],
        *_reduction_line(doc["mnist_error_reduction"]),
    ]
    return "\n".join(lines) + "\n"


def progression_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | settings (beyond params.yaml) | n | test accuracy | best validation "
        "| book | train s | s/epoch | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {', '.join(row['settings']) or 'the book’s'} | {row['n']} "
            f"| {_pm(row, 'test_accuracy')} | {_pm(row, 'best_val_accuracy')} "
            f"| {row['book_accuracy']} ({row['book_measure']}) | {_num(row['train_seconds'])} "
            f"| {_num(row['seconds_per_epoch'])} | {_num(row['peak_rss_mb'])} |"
        )
    if not rows:
        lines.append("| (no finished training runs) | | | | | | | | |")
    return lines


def _missing_line(rows: list[dict]) -> list[str]:
    """The steps of the progression no finished run stands for yet (so no row, no test)."""
    trained = {row["model"].split("-", 1)[0] for row in rows}
    missing = [kind for kind in STEPS if kind not in trained]
    return ["", f"No finished runs yet: {', '.join(missing)}."] if missing else []


def mnist_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | params | n | test accuracy | book | train s | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        book = row["book_accuracy"] if row["model"] in ("mnist_dense", BOOK_CONVNET) else ""
        lines.append(
            f"| {_variant(row['model'])} | {_num(row['params'])} | {row['n']} "
            f"| {_pm(row, 'test_accuracy')} | {book} | {_num(row['train_seconds'])} "
            f"| {_num(row['peak_rss_mb'])} |"
        )
    if not rows:
        lines.append("| (no finished MNIST runs) | | | | | | |")
    return lines


BOOK_CONVNET = f"mnist_convnet-{convolution.BOOK}"


def _mnist_line(row: dict) -> str:
    p = f"p = {row['p_holm']:.2g}" if row["p_holm"] is not None else "one seed"
    noise = "beyond the noise" if row["beyond_noise"] else "within the noise"
    return f"{row['variant']} against {convolution.BOOK}: {row['points']:+.2f} points, {p}: {noise}"


def _reduction_line(reduction: float | None) -> list[str]:
    if reduction is None:
        return []
    return [
        "",
        f"The book's convnet makes {100 * reduction:.0f}% fewer test errors than the dense "
        "network (the book: 68%, from 97.8% to 99.3%).",
    ]


def _pm(row: dict, score: str) -> str:
    sd = row[f"{score}_sd"]
    return f"{row[f'{score}_mean']:.4f}" + ("" if sd is None else f" ± {sd:.4f}")


def _num(value) -> str:
    return "" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:g}"


def write_readme_tables(doc: dict, readme: Path) -> None:
    """Replace the README's generated blocks (between `<!-- results:NAME -->` and
    `<!-- /results -->`) with the tables of `doc`; text outside them is left alone."""
    blocks = {
        "progression": progression_table(doc["progression"]),
        "mnist": mnist_table(doc["mnist"]),
    }
    text = readme.read_text()
    for name, lines in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results -->)", re.DOTALL)
        body = "\n".join(lines)
        text = pattern.sub(lambda m, body=body: f"{m[1]}{body}\n{m[2]}", text)
    write_text(readme, text)
