"""Where the user's project is, also when DVC runs a stage in a temporary copy of it."""

from __future__ import annotations

from pathlib import Path

# What every training stage writes (see pipeline/train.py), relative to the stage's cwd.
MODELS_DIR = Path("models")
METRICS_DIR = Path("reports/metrics")
HISTORY_DIR = Path("reports/history")
FIGURES_DIR = Path("reports/figures")
DETAILS_DIR = Path("reports/details")  # what was trained on what; not DVC metrics
TIMING_DIR = Path("reports/timing")  # training seconds; not a DVC output (pipeline/run_record.py)
CHECKPOINTS_DIR = Path(".checkpoints")  # epoch backups for resuming; not a DVC output


def project_root(cwd: Path | None = None) -> Path:
    """The user's project root. `dvc exp run --temp/--queue` runs stages in
    `<root>/.dvc/tmp/exps/<tmp>/`: paths meant for the user's project (the MLflow store, a
    relative data.source) must resolve against `<root>`, not against that copy."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd
