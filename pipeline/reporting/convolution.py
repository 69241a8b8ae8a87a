"""Stage `convolution` (mnist/dvc.yaml): section 5.1 measured, reports/convolution.md and .png.

For every variant of the grid: each layer's output shape, parameter count and receptive
field on the input, computed from the built network (pipeline/models/mnist.py), not written
by hand; test accuracy as mean ± std over the seeds (from the DVC metrics of its stages);
whether differences go beyond the noise (compare.py's Welch + Holm); the dense-vs-convnet
error-rate reduction beside the book's 68%. Every model is registered as a version of
mnist.registry.model_name, @champion the best on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import read_metrics, write_text
from pipeline.core.params import Params
from pipeline.core.paths import CONVOLUTION_MD, CONVOLUTION_PNG
from pipeline.reporting import compare, plots

BOOK_DENSE, BOOK_CONVNET = 0.978, 0.993  # test accuracy on all 60,000 (chapter 2, listing 5.3)
BOOK = "max-valid"  # the book's convnet: max pooling, valid padding


@dataclass(frozen=True)
class LayerRow:
    layer: str
    kind: str
    output: tuple
    params: int
    receptive_field: int  # side of the input window one output position sees (square)


def layer_table(model) -> list[LayerRow]:
    """Each layer after the input and the /255: its output shape, parameter count and
    receptive field, which grows by (kernel - 1) x the product of the strides so far."""
    import keras

    from pipeline.models.preprocess import Preprocess

    field, jump, side = 1, 1, int(model.input_shape[1])
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | Preprocess):
            continue
        if isinstance(layer, keras.layers.Conv2D):
            field += (layer.kernel_size[0] - 1) * jump
            jump *= layer.strides[0]
        elif isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D):
            field += (layer.pool_size[0] - 1) * jump
            jump *= layer.strides[0]
        else:  # Flatten, Dense: every position of the input
            field = side
        kind = KIND_NAMES.get(type(layer).__name__, type(layer).__name__)
        shape = tuple(int(d) for d in layer.output.shape[1:])
        rows.append(LayerRow(layer.name, kind, shape, int(layer.count_params()), min(field, side)))
    return rows


KIND_NAMES = {"Conv2D": "conv", "MaxPooling2D": "max pool", "AveragePooling2D": "average pool"}
KIND_NAMES |= {"Flatten": "flatten", "Dense": "dense"}


def variant_models(params: Params) -> dict[str, object]:
    """Variant name (`dense`, `max-valid`, ...) -> the built (untrained) network."""
    from pipeline.models.mnist import build_convnet, build_dense

    settings = catalog.mnist_settings(params)
    models = {"dense": build_dense(settings.dense.units)}
    for downsampling in settings.grid.downsampling:
        for padding in settings.grid.padding:
            models[f"{downsampling}-{padding}"] = build_convnet(downsampling, padding)
    return models


def variant_of(model: catalog.TrainedModel) -> str:
    """`mnist_convnet-max-valid-1` -> `max-valid`; `mnist_dense-1` -> `dense`."""
    if model.kind.name == "mnist_dense":
        return "dense"
    return model.variant.rsplit("-", 1)[0]


def runs_table(params: Params) -> pd.DataFrame:
    """One row per trained model: variant, seed, scores, its files (from its DVC metrics)."""
    rows = []
    for model in catalog.every_mnist_model(params):
        if not model.metrics_file.is_file():
            raise PipelineError(
                f"{model.metrics_file} not found; run `dvc repro mnist/dvc.yaml` so every "
                "model of mnist.grid is trained first"
            )
        metrics = read_metrics(model.metrics_file)
        rows.append(
            {
                "model": model.name,
                "group": variant_of(model),
                "draw": model.variant.rsplit("-", 1)[-1],
                "test_accuracy": metrics["test_accuracy"],
                "best_val_accuracy": metrics["best_val_accuracy"],
                "model_file": str(model.model_file),
            }
        )
    return pd.DataFrame(rows)


def error_reduction(dense: float, convnet: float) -> float:
    """The relative drop in error rate from the dense network to the convnet."""
    return 1 - (1 - convnet) / (1 - dense)


BEYOND_THE_NOISE = (
    "Welch's t-test on test accuracy (compare.py, as `python -m pipeline compare`), in the "
    "section's two questions: the dense network against the book's convnet, one planned test "
    "(its Holm p is its p); then every other variant against the book's convnet, "
    'Holm-corrected over those comparisons. "Beyond the noise": corrected p < 0.05. '
    "(`python -m pipeline compare --over mnist.seed` compares every pair, from the MLflow runs.)"
)


def against_the_book(samples: dict[str, np.ndarray]) -> pd.DataFrame:
    """Rows (a, b, difference, p, p_holm, beyond_noise): dense vs the book's convnet alone,
    then each other variant vs the book's, Holm over those; `a` is never the book's."""
    planned = compare.pairwise({k: samples[k] for k in ("dense", BOOK) if k in samples})
    grid = compare.pairwise({k: v for k, v in samples.items() if k != "dense"})
    grid = grid[(grid["a"] == BOOK) | (grid["b"] == BOOK)].copy()
    grid["p_holm"] = compare.holm(grid["p"])
    grid["beyond_noise"] = grid["p_holm"] < compare.ALPHA
    table = pd.concat([planned, grid], ignore_index=True)
    flip = table["a"] == BOOK  # the variant first: its difference is variant - book
    table.loc[flip, ["a", "b"]] = table.loc[flip, ["b", "a"]].to_numpy()
    table.loc[flip, "difference"] = 0.0 - table.loc[flip, "difference"]  # no -0.0
    return table


def markdown(models: dict, runs: pd.DataFrame, summary: pd.DataFrame, pairs: pd.DataFrame) -> str:
    means = summary.set_index("group")
    lines = _intro(runs) + _variants_table(models, means)
    lines += ["", _reduction_paragraph(means), ""]
    lines += _noise_section(pairs) + _layers_section(models)
    return "\n".join(lines) + "\n"


def _intro(runs: pd.DataFrame) -> list[str]:
    return [
        "# Section 5.1 measured: the dense network, the convnet and its downsampling",
        "",
        "Deep Learning with Python (1st ed.), section 5.1, by `dvc repro mnist/dvc.yaml`: "
        "each variant trained once per seed",
        f"({', '.join(sorted(set(runs['draw']), key=int))}); test accuracy as mean ± standard "
        "deviation over the seeds.",
        "",
    ]


def _variants_table(models: dict, means: pd.DataFrame) -> list[str]:
    lines = [
        "| variant | params | test accuracy | best validation accuracy | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    for group, row in means.iterrows():
        total = sum(r.params for r in layer_table(models[group]))
        lines.append(
            f"| {group} | {total:,} | "
            f"{compare._mean_std(row.test_accuracy_mean, row.test_accuracy_std)} | "
            f"{compare._mean_std(row.best_val_accuracy_mean, row.best_val_accuracy_std)} | {row.n} |"
        )
    return lines


def _noise_section(pairs: pd.DataFrame) -> list[str]:
    lines = ["## Beyond the noise?", "", BEYOND_THE_NOISE, ""]
    lines += ["| variant | against | difference | p | Holm p | beyond the noise |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for row in pairs.itertuples():
        verdict = "n/a (no spread)" if np.isnan(row.p) else ("yes" if row.beyond_noise else "no")
        lines.append(
            f"| {row.a} | {row.b} | {row.difference:+.4f} | {row.p:.3g} | {row.p_holm:.3g} | "
            f"{verdict} |"
        )
    if pairs.empty:
        lines.append("| (no two variants with two seeds or more) | | | | | |")
    return lines


def _layers_section(models: dict) -> list[str]:
    lines = ["", "## Layer by layer", ""]
    lines.append(
        "Output shape, parameters and receptive field (the input window one output "
        "position sees), read from the built network."
    )
    for group, model in models.items():
        lines += ["", f"### {group}", "", "| layer | output | params | receptive field |"]
        lines.append("| --- | --- | --- | --- |")
        rows = layer_table(model)
        for r in rows:
            shape = f"{r.output[0]:,}" if len(r.output) == 1 else r.output
            field = f"{r.receptive_field}×{r.receptive_field}"
            params = f"{r.params:,}" if r.params else ""
            lines.append(f"| {r.kind} | {shape} | {params} | {field} |")
        lines.append(f"| total | | {sum(r.params for r in rows):,} | |")
    return lines


def _reduction_paragraph(means: pd.DataFrame) -> str:
    if "dense" not in means.index or BOOK not in means.index:
        return "(The dense network or the book's convnet, max-valid, is not in mnist.grid.)"
    dense, convnet = means.loc["dense", "test_accuracy_mean"], means.loc[BOOK, "test_accuracy_mean"]
    ours, book = error_reduction(dense, convnet), error_reduction(BOOK_DENSE, BOOK_CONVNET)
    return (
        f"**Dense network vs. the book's convnet ({BOOK})**: test error {1 - dense:.1%} → "
        f"{1 - convnet:.1%}, **{abs(ours):.0%} {'fewer' if ours >= 0 else 'more'} errors** "
        "(relative); the book: "
        f'{1 - BOOK_DENSE:.1%} → {1 - BOOK_CONVNET:.1%}, "we decreased the error rate by '
        f'68%" ({book:.0%}), on all 60,000 training digits.'
    )


def convolution(params: Params) -> str:
    import mlflow

    from pipeline.tracking import registry, store

    settings = catalog.mnist_settings(params)
    runs = runs_table(params)
    models = variant_models(params)
    summary = compare.summarise(runs)
    samples = {g: m["test_accuracy"].to_numpy() for g, m in runs.groupby("group", sort=False)}
    text = markdown(models, runs, summary, against_the_book(samples))
    store.connect()
    champion = registry.crown_champion(runs, settings.registry.model_name)
    name = settings.registry.model_name
    champion = champion.replace(
        "`python -m pipeline predict PHOTO...` uses it",
        f"`python -m pipeline predict DIGIT.png --model models:/{name}@champion` uses it",
    )
    write_text(CONVOLUTION_MD, text + champion)
    plots.spread_chart(summary, {"test_accuracy": "test accuracy"}, CONVOLUTION_PNG)
    with mlflow.start_run(run_name="convolution", tags=store.run_tags("convolution", {})):
        mlflow.log_metrics(
            {
                f"{row.group}.test_accuracy_mean": row.test_accuracy_mean
                for row in summary.itertuples()
            }
        )
        mlflow.log_artifact(str(CONVOLUTION_MD))
        mlflow.log_artifact(str(CONVOLUTION_PNG))
    print(CONVOLUTION_MD.read_text())
    return text
