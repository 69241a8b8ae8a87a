"""The one place that knows the models: what each one is, and what one trained model is called.

A `ModelKind` is one of the book's models (baseline ... finetune): whether it stands on a
pretrained conv base, whether it trains with augmentation, what data it reads, the function
that trains it and the book's number for it. A `TrainedModel` is one kind on one conv base
(or on none): its name (`features-vgg16`), DVC stage (`features@vgg16`), output files and
MLflow run name all come from it, and every other module asks it rather than building
those strings itself. No TensorFlow here: a wrong name fails in a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.params import BaseParams, Params

Task = Literal["dogs-vs-cats", "mnist"]
# Class names in label order: the sigmoid's P(dog) is class 1; MNIST's softmax has ten.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "dogs-vs-cats": ("cat", "dog"),
    "mnist": tuple("0123456789"),
}


@dataclass(frozen=True)
class ModelKind:
    name: str  # its section under `train` in params.yaml, its stage and function name
    about: str  # one line, for help texts and DVC's artifacts
    pretrained: bool  # trained once per conv base of pretrained.bases
    augments: bool  # reads the `augmentation` section
    reads: Literal["images", "features"]  # prepared images, or extract@<base>'s features
    book_accuracy: float  # Deep Learning with Python, 1st ed., ch. 5 (VGG16 where pretrained)
    book_measure: str  # what the book's number is
    task: Task = "dogs-vs-cats"  # mnist: section 5.1, its own pipeline (mnist/dvc.yaml)

    @property
    def trained_by(self) -> str:
        """`module:function` of its training stage: the stage, its command and its function
        share the model's name (dvc.yaml `python -m pipeline train <name>`)."""
        module = "mnist" if self.task == "mnist" else "pretrained" if self.pretrained else "scratch"
        return f"pipeline.training.{module}:{self.name}"

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.task]

    @property
    def section(self) -> str:
        """Its fit params' section of params.yaml: train.<name>, or mnist.<name less mnist_>."""
        if self.task == "mnist":
            return "mnist." + self.name.removeprefix("mnist_")
        return f"train.{self.name}"


# In the book's order.
KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "baseline", "the book's from-scratch convnet (listing 5.5)",
            pretrained=False, augments=False, reads="images",
            book_accuracy=0.72, book_measure='validation, "70-72%"',
        ),
        ModelKind(
            "augmented", "the convnet with augmentation and dropout (listing 5.13)",
            pretrained=False, augments=True, reads="images",
            book_accuracy=0.82, book_measure='validation, "82%"',
        ),
        ModelKind(
            "features", "dense head on cached conv-base features (listing 5.17)",
            pretrained=True, augments=False, reads="features",
            book_accuracy=0.90, book_measure='validation, "about 90%"',
        ),
        ModelKind(
            "frozen_aug", "frozen conv base + head, trained with augmentation (listing 5.20)",
            pretrained=True, augments=True, reads="images",
            book_accuracy=0.96, book_measure='validation, "about 96%"',
        ),
        ModelKind(
            "finetune", "frozen_aug with the top of the base unfrozen (listing 5.22)",
            pretrained=True, augments=True, reads="images",
            book_accuracy=0.968, book_measure='test, "97%"',
        ),
    )
}  # fmt: skip
# Section 5.1 (mnist/dvc.yaml): one stage per seed, and per downsampling x padding for the convnet.
MNIST_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "mnist_dense", "chapter 2's dense network on MNIST (784-512-10)",
            pretrained=False, augments=False, reads="images",
            book_accuracy=0.978, book_measure='test, "97.8%"', task="mnist",
        ),
        ModelKind(
            "mnist_convnet", "section 5.1's convnet on MNIST (listing 5.1-5.3)",
            pretrained=False, augments=False, reads="images",
            book_accuracy=0.993, book_measure='test, "99.3%"', task="mnist",
        ),
    )
}  # fmt: skip
MNIST_IMAGE_SIZE = 28
SCRATCH_MODELS = tuple(name for name, kind in KINDS.items() if not kind.pretrained)
PRETRAINED_MODELS = tuple(name for name, kind in KINDS.items() if kind.pretrained)


@dataclass(frozen=True)
class TrainedModel:
    """One kind on one conv base (None for the from-scratch convnets), at its image size."""

    kind: ModelKind
    base: str | None
    image_size: int
    # An MNIST model's stage item (`1`, `max-valid-1`): DVC names its stage `<kind>@<variant>`.
    variant: str | None = None

    @property
    def name(self) -> str:
        """Output stem and MLflow run name: `baseline`, `features-vgg16`, `mnist_dense-1`."""
        item = self.base or self.variant
        return f"{self.kind.name}-{item}" if item else self.kind.name

    @property
    def stage(self) -> str:
        """The DVC stage that trains it: `baseline`, `features@vgg16`, `mnist_dense@1`."""
        item = self.base or self.variant
        return f"{self.kind.name}@{item}" if item else self.kind.name

    @property
    def group(self) -> str:
        """What its seeds are draws of: the name, less an MNIST model's seed
        (`mnist_convnet-max-valid`); MLflow tag `pipeline.model`, which compare groups by."""
        return self.name.rsplit("-", 1)[0] if self.kind.task == "mnist" else self.name

    @property
    def outputs(self) -> Path:
        """Where its files go: the project root, or mnist/ for the section 5.1 pipeline (whose
        outputs must not lie under the root pipeline's `models` and `reports/metrics` deps)."""
        return paths.MNIST_DIR if self.kind.task == "mnist" else Path()

    @property
    def model_file(self) -> Path:
        return self.outputs / paths.model_file(self.name)

    @property
    def metrics_file(self) -> Path:
        return self.outputs / paths.metrics_file(self.name)

    @property
    def history_file(self) -> Path:
        return self.outputs / paths.history_file(self.name)

    @property
    def details_file(self) -> Path:
        return self.outputs / paths.DETAILS_DIR / f"{self.name}.json"

    @property
    def timing_file(self) -> Path:
        return self.outputs / paths.TIMING_DIR / f"{self.name}.json"

    @property
    def figures_dir(self) -> Path:
        return self.outputs / paths.figures_dir(self.name)

    @property
    def visualize_dir(self) -> Path:
        return self.figures_dir / "visualize"


def kind_of(name: str) -> ModelKind:
    known = KINDS | MNIST_KINDS
    if name not in known:
        raise PipelineError(f"unknown model {name!r}; one of {', '.join(known)}")
    return known[name]


def base_settings(params: Params, base: str) -> BaseParams:
    if base not in params.pretrained.bases:
        known = ", ".join(params.pretrained.bases)
        raise PipelineError(f"conv base {base!r} is not in pretrained.bases ({known})")
    return params.pretrained.bases[base]


def trained_model(params: Params, kind: str, base: str | None = None) -> TrainedModel:
    """`kind` (on `base`, for a pretrained one) as the current params train it."""
    model_kind = KINDS.get(kind) or kind_of(kind)
    if model_kind.task == "mnist":
        raise PipelineError(f"{kind} is trained by mnist/dvc.yaml (`dvc repro mnist/dvc.yaml`)")
    if not model_kind.pretrained:
        if base is not None:
            raise PipelineError(f"{kind} is trained from scratch: it takes no --base")
        return TrainedModel(model_kind, None, getattr(params.train, kind).image_size)
    if base is None:
        raise PipelineError(f"{kind}: give the conv base with --base")
    return TrainedModel(model_kind, base, base_settings(params, base).image_size)


def every_model(params: Params) -> list[TrainedModel]:
    """Every model the current params train, in the book's order."""
    models = []
    for kind in KINDS.values():
        bases = list(params.pretrained.bases) if kind.pretrained else [None]
        models += [trained_model(params, kind.name, base) for base in bases]
    return models


def mnist_settings(params: Params):
    if params.mnist is None:
        raise PipelineError("params.yaml has no section mnist: add it (docs/mnist.md)")
    return params.mnist


def mnist_model(
    params: Params, kind: str, seed: int, downsampling: str = "", padding: str = ""
) -> TrainedModel:
    """An MNIST model of mnist/dvc.yaml: `mnist_dense` at `seed`, or `mnist_convnet` with a
    downsampling and padding of mnist.grid at `seed`."""
    settings = mnist_settings(params)
    if kind not in MNIST_KINDS:
        raise PipelineError(f"unknown MNIST model {kind!r}; one of {', '.join(MNIST_KINDS)}")
    if seed not in settings.seeds:
        raise PipelineError(f"seed {seed} is not in mnist.seeds {settings.seeds}")
    variant = str(seed)
    if kind == "mnist_convnet":
        grid = settings.grid
        if downsampling not in grid.downsampling or padding not in grid.padding:
            raise PipelineError(
                f"{downsampling}-{padding} is not in mnist.grid (downsampling "
                f"{grid.downsampling}, padding {grid.padding})"
            )
        variant = f"{downsampling}-{padding}-{seed}"
    return TrainedModel(MNIST_KINDS[kind], None, MNIST_IMAGE_SIZE, variant)


def every_mnist_model(params: Params) -> list[TrainedModel]:
    """Every model mnist/dvc.yaml trains: the dense network, then the grid, seed by seed."""
    settings = mnist_settings(params)
    models = [mnist_model(params, "mnist_dense", seed) for seed in settings.seeds]
    for downsampling in settings.grid.downsampling:
        for padding in settings.grid.padding:
            models += [
                mnist_model(params, "mnist_convnet", seed, downsampling, padding)
                for seed in settings.seeds
            ]
    return models


def by_name(params: Params, name: str) -> TrainedModel:
    """The trained model called `name` (`baseline`, `finetune-vgg16`) under the current params."""
    for model in every_model(params):
        if model.name == name:
            return model
    known = ", ".join(model.name for model in every_model(params))
    raise PipelineError(f"unknown model {name!r}; one of {known}")


def stage_of(name: str) -> str:
    """The DVC stage of a model name, without params: `features-vgg16` -> `features@vgg16`."""
    kind, _, base = name.partition("-")
    return f"{kind}@{base}" if base else kind


def stage_of_file(path: Path | str) -> str | None:
    """The DVC stage that writes a model file of models/ (`models/features-vgg16.keras` ->
    `features@vgg16`); None for any other file."""
    path = Path(path)
    in_models = path.parent.name == paths.MODELS_DIR.name and path.suffix == ".keras"
    if in_models and path.stem.partition("-")[0] in KINDS:
        return stage_of(path.stem)
    return None


def model_file_advice(path: Path | str, advice: str = "") -> str:
    """What to do about a model file that is missing or unreadable (`advice` if given): for
    a model of models/, restore or retrain its stage. PipelineError now if it is missing."""
    path = Path(path)
    if not advice:
        stage = stage_of_file(path)
        advice = (
            f"run `dvc checkout --force {stage}` to restore it from the DVC cache, "
            f"or `dvc repro {stage}` to train it again"
            if stage
            else "give a .keras file that Keras 3 saved (model.save)"
        )
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; {advice}")
    return advice
