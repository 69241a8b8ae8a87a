"""The figures people look at: learning curves, a confusion matrix, ROC, precision-recall
and calibration curves, the progression chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.core.files import atomic_path


def save_png(fig, out: Path, dpi: int = 110) -> None:
    """Write `fig` to `out` atomically and close it. No "Software" stamp: the bytes depend on
    the figure only, not on the matplotlib build (DVC outputs are byte-identical on rerun)."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def learning_curves(history: pd.DataFrame, title: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=False):
        ax.plot(history["epoch"], history[metric], "o-", ms=3, label=f"training {metric}")
        ax.plot(
            history["epoch"], history[f"val_{metric}"], "s-", ms=3, label=f"validation {metric}"
        )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_png(fig, out)


def confusion_matrix(matrix: np.ndarray, classes: tuple[str, ...], title: str, out: Path) -> None:
    scale = max(1.0, len(classes) / 4)  # ten digits need room
    fig, ax = plt.subplots(figsize=(3.8 * scale, 3.4 * scale))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color=color,
            fontsize=12 if scale == 1 else 9,
        )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_png(fig, out)


def progression_chart(table: pd.DataFrame, out: Path) -> None:
    """Test accuracy of every model, in the book's order, beside the book's number."""
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 4))
    x = np.arange(len(table))
    ours = ax.bar(x - 0.2, table["test_accuracy"], 0.4, label="this pipeline (test)")
    ax.bar(
        x + 0.2,
        table["book"].fillna(0),
        0.4,
        label="book (VGG16 for the pretrained rows)",
        alpha=0.6,
    )
    ax.bar_label(ours, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, table["model"], rotation=20, ha="right")
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Dogs vs. cats: accuracy progression")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right")
    save_png(fig, out)


def spread_chart(summary: pd.DataFrame, scores: dict[str, str], out: Path) -> None:
    """Mean of each score per group (`<score>_mean`), error bars one standard deviation."""
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(summary)), 4))
    x = np.arange(len(summary))
    width = 0.8 / len(scores)
    lowest = 1.0
    for i, (score, label) in enumerate(scores.items()):
        mean, std = summary[f"{score}_mean"], summary[f"{score}_std"].fillna(0)
        offset = (i - (len(scores) - 1) / 2) * width
        ax.bar(x + offset, mean, width, yerr=std, capsize=4, label=label)
        lowest = min(lowest, float((mean - std).min()))
    ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(summary["group"], summary["n"], strict=True)])
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Mean and standard deviation over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")  # bars end below 1.0, so the top is free
    save_png(fig, out)


def _unit_square(title: str, xlabel: str, ylabel: str):
    """A square figure for a curve on [0, 1] x [0, 1]."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def roc_chart(fpr, tpr, area: float, point: tuple, point_label: str, title: str, out: Path):
    """The ROC curve, chance's diagonal, and the operating `point` (fpr, tpr)."""
    fig, ax = _unit_square(title, "false positive rate", "true positive rate")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.plot(fpr, tpr, lw=2, label=f"AUC {area:.3f}")
    ax.plot(*point, "o", color="C3", label=point_label)
    ax.legend(loc="lower right")
    save_png(fig, out)


def precision_recall_chart(
    recall, precision, area: float, base_rate: float, point: tuple, point_label: str, title, out
):
    """The precision-recall curve (steps, as average precision sums them), the precision of
    guessing (`base_rate`), and the operating `point` (recall, precision)."""
    fig, ax = _unit_square(title, "recall", "precision")
    ax.axhline(base_rate, ls="--", color="grey", lw=1, label=f"guessing ({base_rate:.2f})")
    ax.plot(recall, precision, lw=2, drawstyle="steps-post", label=f"AP {area:.3f}")
    ax.plot(*point, "o", color="C3", label=point_label)
    ax.legend(loc="lower left")
    save_png(fig, out)


def calibration_chart(predicted, observed, title: str, out: Path):
    """Per probability bin, the share of positives against the mean predicted probability."""
    fig, ax = _unit_square(title, "mean predicted probability", "share of positives")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(predicted, observed, "o-", lw=2, label="this model")
    ax.legend(loc="upper left")
    save_png(fig, out)
