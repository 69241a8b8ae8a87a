"""Where every stage reads and writes: dvc.yaml's outputs, in one place.

Paths are relative to the stage's working directory (the project root, or DVC's temporary
copy of it for `dvc exp run --temp/--queue`). Things meant for the user's own project (the
MLflow store, the download cache, a relative data.source) resolve against `project_root()`.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
# download
IMAGES_DIR = Path("data/images")  # {cat,dog}/<number>.jpg, only images that decode
DOWNLOAD_REPORT = Path("reports/download.json")
DOWNLOAD_CACHE = Path("data/downloads")  # under project_root(): not a DVC output
# split, prepare@<size>, extract@<base>
SPLIT_FILE = Path("data/split.csv")
PREPARED_DIR = Path("data/prepared")
FEATURES_DIR = Path("data/features")
# base_weights@<base> and every training stage
MODELS_DIR = Path("models")
BASE_WEIGHTS_DIR = MODELS_DIR / "bases"
METRICS_DIR = Path("reports/metrics")
HISTORY_DIR = Path("reports/history")
FIGURES_DIR = Path("reports/figures")
DETAILS_DIR = Path("reports/details")  # what was trained on what; not DVC metrics
TIMING_DIR = Path("reports/timing")  # training seconds; not a DVC output (run_record.py)
CHECKPOINTS_DIR = Path(".checkpoints")  # epoch backups for resuming; not a DVC output
# report
PROGRESSION_MD = Path("reports/progression.md")
PROGRESSION_PNG = Path("reports/progression.png")
# mnist/dvc.yaml (section 5.1): its stages run from the project root (wdir: ..) and keep their
# files under mnist/, the same layout as above; its report is reports/convolution.*
MNIST_DIR = Path("mnist")
MNIST_DIGITS = MNIST_DIR / "data/digits.npz"  # train / validation / test, uint8 28 x 28 x 1
MNIST_DATA_REPORT = MNIST_DIR / "reports/data.json"
CONVOLUTION_MD = Path("reports/convolution.md")
CONVOLUTION_PNG = Path("reports/convolution.png")


def features_file(base: str, split: str) -> Path:
    return FEATURES_DIR / base / f"{split}.npz"


def base_weights_file(base: str) -> Path:
    return BASE_WEIGHTS_DIR / f"{base}.weights.h5"


def model_file(name: str) -> Path:
    return MODELS_DIR / f"{name}.keras"


def metrics_file(name: str) -> Path:
    return METRICS_DIR / f"{name}.json"


def history_file(name: str) -> Path:
    return HISTORY_DIR / f"{name}.csv"


def figures_dir(name: str) -> Path:
    return FIGURES_DIR / name


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
