"""Which trained model a visualize stage draws: its file, training stage and figures folder.
No TensorFlow here, so a wrong model name fails in a second."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.params import PRETRAINED_MODELS, SCRATCH_MODELS, Params


@dataclass(frozen=True)
class Target:
    """A trained model: `name` as in models/<name>.keras, e.g. baseline, finetune-vgg16."""

    name: str
    kind: str  # baseline | augmented | features | frozen_aug | finetune
    base: str | None
    image_size: int

    @property
    def stage(self) -> str:
        """The DVC stage that trained it, as tagged on its MLflow run."""
        return f"{self.kind}@{self.base}" if self.base else self.name

    @property
    def model_file(self) -> Path:
        return paths.model_file(self.name)

    @property
    def folder(self) -> Path:
        return paths.figures_dir(self.name) / "visualize"


def resolve(params: Params, name: str) -> Target:
    if name in SCRATCH_MODELS:
        return Target(name, name, None, getattr(params.train, name).image_size)
    kind, _, base = name.partition("-")
    if kind in PRETRAINED_MODELS and base in params.pretrained.bases:
        return Target(name, kind, base, params.pretrained.bases[base].image_size)
    known = list(SCRATCH_MODELS) + [
        f"{kind}-{base}" for kind in PRETRAINED_MODELS for base in params.pretrained.bases
    ]
    raise PipelineError(f"visualize: unknown model {name!r}; one of {', '.join(known)}")
