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


@dataclass(frozen=True)
class ModelKind:
    name: str  # its section under `train` in params.yaml, its stage and function name
    about: str  # one line, for help texts and DVC's artifacts
    pretrained: bool  # trained once per conv base of pretrained.bases
    augments: bool  # reads the `augmentation` section
    reads: Literal["images", "features"]  # prepared images, or extract@<base>'s features
    book_accuracy: float  # Deep Learning with Python, 1st ed., ch. 5 (VGG16 where pretrained)
    book_measure: str  # what the book's number is

    @property
    def trained_by(self) -> str:
        """`module:function` of its training stage: the stage, its command and its function
        share the model's name (dvc.yaml `python -m pipeline train <name>`)."""
        module = "pretrained" if self.pretrained else "scratch"
        return f"pipeline.training.{module}:{self.name}"


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
SCRATCH_MODELS = tuple(name for name, kind in KINDS.items() if not kind.pretrained)
PRETRAINED_MODELS = tuple(name for name, kind in KINDS.items() if kind.pretrained)


@dataclass(frozen=True)
class TrainedModel:
    """One kind on one conv base (None for the from-scratch convnets), at its image size."""

    kind: ModelKind
    base: str | None
    image_size: int

    @property
    def name(self) -> str:
        """Output stem and MLflow run name: `baseline`, `features-vgg16`."""
        return f"{self.kind.name}-{self.base}" if self.base else self.kind.name

    @property
    def stage(self) -> str:
        """The DVC stage that trains it: `baseline`, `features@vgg16`."""
        return f"{self.kind.name}@{self.base}" if self.base else self.kind.name

    @property
    def model_file(self) -> Path:
        return paths.model_file(self.name)

    @property
    def metrics_file(self) -> Path:
        return paths.metrics_file(self.name)

    @property
    def history_file(self) -> Path:
        return paths.history_file(self.name)

    @property
    def figures_dir(self) -> Path:
        return paths.figures_dir(self.name)

    @property
    def visualize_dir(self) -> Path:
        return paths.figures_dir(self.name) / "visualize"


def kind_of(name: str) -> ModelKind:
    if name not in KINDS:
        raise PipelineError(f"unknown model {name!r}; one of {', '.join(KINDS)}")
    return KINDS[name]


def base_settings(params: Params, base: str) -> BaseParams:
    if base not in params.pretrained.bases:
        known = ", ".join(params.pretrained.bases)
        raise PipelineError(f"conv base {base!r} is not in pretrained.bases ({known})")
    return params.pretrained.bases[base]


def trained_model(params: Params, kind: str, base: str | None = None) -> TrainedModel:
    """`kind` (on `base`, for a pretrained one) as the current params train it."""
    model_kind = kind_of(kind)
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
            f"run `dvc checkout {stage}` to restore it from the DVC cache, "
            f"or `dvc repro {stage}` to train it again"
            if stage
            else "give a .keras file that Keras 3 saved (model.save)"
        )
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; {advice}")
    return advice
