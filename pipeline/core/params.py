"""The typed, validated view of params.yaml: the one place a bad value is caught.

Every stage calls `load_params()` before doing any work, so a typo or an out-of-range
value is one clear error naming the key, never a crash halfway through a stage.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from pipeline.core.errors import PipelineError
from pipeline.core.paths import PARAMS_FILE

# The book's from-scratch convnet has four valid 3x3 convs, each followed by a 2x2 pool:
# 46 px is the smallest input that leaves a 1x1 map. VGG16's five pools need 32 px.
MIN_SCRATCH_IMAGE_SIZE = 46
MIN_BASE_IMAGE_SIZE = 32
# What keras.datasets.mnist downloads (keras/src/datasets/mnist.py).


def _not_a_boolean(value):
    # YAML's true/false are Python's True/False, which pydantic would take as 1/0.
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not true or false")
    return value


# Strict: `epochs: true` (or 30.0, or "30") is an error, not 1. Every integer of params.yaml
# is an Int; every real number a Number (an int is fine there, a boolean is not).
Int = Annotated[int, Strict()]
Number = Annotated[float, BeforeValidator(_not_a_boolean)]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
LearningRate = Annotated[Number, Field(gt=0, lt=1)]
Fraction = Annotated[Number, Field(ge=0, lt=1)]


def _matching(pattern: str, in_words: str) -> AfterValidator:
    """A string check whose error says in words what is allowed, not the regex."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(in_words)
        return value

    return AfterValidator(check)


Sha256 = Annotated[str, _matching(r"([0-9a-fA-F]{64})?", "empty, or 64 hex digits (0-9, a-f)")]
# An MLflow registered model name that is also a valid models:/ URI path segment.
ModelName = Annotated[
    str,
    Field(min_length=1),
    _matching(
        r"[A-Za-z0-9][A-Za-z0-9._-]*",
        "a letter or digit first, then only letters, digits, '.', '_' or '-'",
    ),
]


class Section(BaseModel):
    # extra="forbid" is what turns a typo in params.yaml into an error instead of a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransferParams(Section):
    """How an http(s) data.source travels (pipeline/data/fetch.py). Not declared in dvc.yaml:
    how the bytes arrive does not change what they are."""

    timeout_seconds: Annotated[Number, Field(gt=0)]  # to connect, and for each read
    attempts: PositiveInt  # each resumes where the last one stopped
    # Fewer bytes than this times timeout_seconds in any timeout_seconds fails the attempt
    # (a server that trickles); 0: no minimum.
    min_bytes_per_second: NonNegativeInt


class DataParams(Section):
    source: str = Field(min_length=1)
    sha256: Sha256 = ""
    transfer: TransferParams


class SplitParams(Section):
    train: PositiveInt = 1000
    validation: PositiveInt = 500
    test: PositiveInt = 500
    order: Literal["book", "shuffle"] = "book"
    seed: Int = 42

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class PrepareParams(Section):
    image_sizes: list[Annotated[Int, Field(ge=MIN_BASE_IMAGE_SIZE, le=1024)]] = Field(min_length=1)


class FitParams(Section):
    """How a model is fitted: every training section has these (and may add its own)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    steps_per_epoch: NonNegativeInt = 0  # 0: one pass over the training set
    learning_rate: LearningRate


class ScratchParams(FitParams):
    image_size: Annotated[Int, Field(ge=MIN_SCRATCH_IMAGE_SIZE)] = 150
    dropout: Fraction = 0.0


class HeadParams(FitParams):
    dense_units: PositiveInt = 256
    dropout: Fraction = 0.0


class FrozenAugParams(FitParams):
    dense_units: PositiveInt = 256
    cached_copies: NonNegativeInt = 0


class FinetuneParams(FitParams):
    cached_copies: NonNegativeInt = 0


# YAML 1.1 (PyYAML) reads a bare on/off as a boolean; DVC's YAML 1.2 reads a string. Take both.
Switch = Annotated[
    Literal["auto", "on", "off"],
    BeforeValidator(lambda v: ("on" if v else "off") if isinstance(v, bool) else v),
]


class RuntimeParams(Section):
    # Keras' backend (docs/backends.md): python -m pipeline sets KERAS_BACKEND from it before
    # Keras is imported, so every stage, and DVC, follow the param, not the shell
    backend: Literal["tensorflow", "jax"] = "tensorflow"
    deterministic: bool = False
    strategy: Literal["auto", "default", "mirrored"] = "auto"
    mixed_precision: Switch = "auto"
    jit_compile: Switch = "auto"
    # MLflow's system/ metrics on each run; not a logged param (Field exclude): it changes what
    # is recorded, not what is trained, so compare's groups and the resume key ignore it
    system_metrics: bool = Field(default=True, exclude=True)


class TrainParams(Section):
    # One section per model of pipeline/core/catalog.py, named as the model.
    seed: Int = 42
    runtime: RuntimeParams
    baseline: ScratchParams
    augmented: ScratchParams
    features: HeadParams
    frozen_aug: FrozenAugParams
    finetune: FinetuneParams


class AugmentationParams(Section):
    rotation_degrees: Annotated[Number, Field(ge=0, le=180)] = 40
    width_shift: Fraction = 0.2
    height_shift: Fraction = 0.2
    shear_degrees: Annotated[Number, Field(ge=0, lt=90)] = 11.46
    zoom: Fraction = 0.2
    horizontal_flip: bool = True


class BaseParams(Section):
    image_size: Annotated[Int, Field(ge=MIN_BASE_IMAGE_SIZE)]
    weights: str = Field(default="imagenet", min_length=1)
    pooling: Literal["flatten", "avg"] = "flatten"
    finetune_from: str = Field(min_length=1)


KNOWN_BASES = ("vgg16", "efficientnet_lite0")


def _known_base(name: str) -> str:
    if name not in KNOWN_BASES:
        raise ValueError(f"unknown conv base {name!r}; known: {', '.join(KNOWN_BASES)}")
    return name


BaseName = Annotated[str, AfterValidator(_known_base)]


class PretrainedParams(Section):
    bases: dict[BaseName, BaseParams]


class RegistryParams(Section):
    model_name: ModelName = "dogs-vs-cats"


class FilterPatternParams(Section):
    count: PositiveInt = 8
    steps: PositiveInt = 30
    step_size: Annotated[Number, Field(gt=0)] = 1.0
    image_size: Annotated[Int, Field(ge=MIN_SCRATCH_IMAGE_SIZE, le=1024)] = 64
    layers: dict[BaseName, list[str]] = Field(default_factory=dict)


class VisualizeParams(Section):
    seed: Int = 42
    gradcam_images: PositiveInt = 16
    mistakes: PositiveInt = 8
    activation_image: NonNegativeInt = 0
    filters: FilterPatternParams


class SweepParams(Section):
    """`python -m pipeline sweep` (pipeline/sweep/); not read by any stage, so not in dvc.yaml."""

    seeds: str = Field(min_length=1)  # what --seeds takes: 1-5, 1,3,7 or 1-3,9
    jobs: PositiveInt = 1  # --on local: experiments at once (dvc queue start -j)
    # --on ray: what each task (one training) asks Ray for
    cpus_per_task: Annotated[Number, Field(gt=0)] = 1.0
    gpus_per_task: Annotated[Number, Field(ge=0)] = 0.0


class ServingParams(Section):
    """`python -m pipeline serve` (pipeline/serving/server.py); not read by any stage."""

    # a request body over this is refused (HTTP 413) before it is read whole
    max_request_mb: Annotated[Number, Field(gt=0)] = 16.0


class MnistDataParams(Section):
    """Where the MNIST npz comes from (params.yaml: keras.datasets.mnist's file)."""

    source: str = Field(min_length=1)  # a URL, a local path or file:// URL
    sha256: Sha256  # empty: not checked
    transfer: TransferParams


class DenseParams(FitParams):
    units: PositiveInt = 512  # chapter 2: Dense 512 relu, then Dense 10 softmax


# How the section 5.1 convnet shrinks its maps (pipeline/models/mnist.py), and its padding.
Downsampling = Literal["max", "average", "strided", "none"]
Padding = Literal["valid", "same"]


class MnistGridParams(Section):
    """The section 5.1 experiment: every downsampling x padding, each over every seed."""

    downsampling: list[Downsampling] = Field(min_length=1)
    padding: list[Padding] = Field(min_length=1)


class MnistVisualizeParams(Section):
    """Which trained convnet the mnist_visualize stage draws (the book's, by default)."""

    downsampling: Downsampling = "max"
    padding: Padding = "valid"
    seed: Int = 1


class MnistParams(Section):
    """mnist/dvc.yaml: the chapter's opening (section 5.1), a pipeline of its own."""

    data: MnistDataParams
    validation: PositiveInt = 500  # training digits held out (seeded, per class) for validation
    seeds: list[Int] = Field(min_length=1)
    dense: DenseParams
    convnet: FitParams
    grid: MnistGridParams
    visualize: MnistVisualizeParams = MnistVisualizeParams()
    registry: RegistryParams = RegistryParams(model_name="mnist")

    @model_validator(mode="after")
    def _visualized_is_trained(self) -> MnistParams:
        v = self.visualize
        if v.downsampling not in self.grid.downsampling or v.padding not in self.grid.padding:
            raise ValueError(
                f"visualize: {v.downsampling}-{v.padding} is not in mnist.grid; "
                "add it there or draw a variant the grid trains"
            )
        if v.seed not in self.seeds:
            raise ValueError(f"visualize.seed: {v.seed} is not in mnist.seeds {self.seeds}")
        return self


class Params(Section):
    data: DataParams
    split: SplitParams
    prepare: PrepareParams
    train: TrainParams
    augmentation: AugmentationParams
    pretrained: PretrainedParams
    registry: RegistryParams = RegistryParams()
    visualize: VisualizeParams
    sweep: SweepParams
    serving: ServingParams = ServingParams()
    mnist: MnistParams | None = None  # the section 5.1 pipeline (mnist/dvc.yaml)

    @model_validator(mode="after")
    def _sizes_are_prepared(self) -> Params:
        # A model can only read arrays that a prepare@<size> stage makes.
        wanted = {
            "train.baseline.image_size": self.train.baseline.image_size,
            "train.augmented.image_size": self.train.augmented.image_size,
        }
        for name, base in self.pretrained.bases.items():
            wanted[f"pretrained.bases.{name}.image_size"] = base.image_size
        for key, size in wanted.items():
            if size not in self.prepare.image_sizes:
                raise ValueError(
                    f"{key} is {size}, but prepare.image_sizes {self.prepare.image_sizes} "
                    f"does not list it: add {size} to prepare.image_sizes"
                )
        return self


def _describe(error: dict, model: type[BaseModel]) -> str:
    """One line for one pydantic error: the dotted key, what is wrong, what to do."""
    loc = [str(part) for part in error["loc"]]
    if loc[-1:] == ["[key]"]:  # a dict's key is wrong (a conv base): name the dict, once
        loc, error = loc[:-2], {**error, "input": {}}
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key {key!r}: {hint}"
    if error["type"] == "missing":
        return f"missing key {key!r}"
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}{got_text}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the section at `loc`, for did-you-mean hints."""
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        # An optional section (`MnistParams | None`): the section's own class.
        sections = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        sections = [a for a in sections if issubclass(a, BaseModel)]
        if sections:
            model = sections[0]
        elif part in KNOWN_BASES or model is PretrainedParams:
            model = BaseParams
        else:
            return []
    return list(model.model_fields)


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    silently, while DVC's loader (ruamel.yaml) rejects the file."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # a merge (<<) may repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # PyYAML's own error, below
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key!r} (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise PipelineError naming the file and key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the project root") from None
    except _DuplicateKey as exc:
        raise PipelineError(f"{path}: {exc}; DVC refuses such a file: keep one of them") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(error, Params) for error in exc.errors()]
        raise PipelineError(f"{path}: " + "; ".join(problems)) from None
