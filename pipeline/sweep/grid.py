"""A sweep's `-S` options as the configurations it trains.

The syntax is `dvc exp run -S`'s, Hydra's override grammar, parsed by Hydra's own parser
(the one `dvc exp run -S` uses): `key=value` is the same in every configuration,
`key=0.3,0.5`, `key=choice(0.3,0.5)` and `key=range(1,4)` list values to sweep, and the grid
is every combination of them, in the order given. `interval()` is continuous: only
`python -m pipeline search` samples it. `~key` deletes a key, `+key=value` adds one.
An args file (experiments/*.args) is a list of such `-S` options.
"""

from __future__ import annotations

import itertools
import shlex
import shutil
import tempfile
from pathlib import Path

from pipeline.core.errors import PipelineError

MAX_CONFIGS = 1000  # a grid larger than this is a typo, or a job for `search`


def read_args_file(path: Path | str) -> list[str]:
    """The `-S` values of an args file: `-S key=value` pairs, shell-quoted where needed."""
    try:
        words = shlex.split(Path(path).read_text(), comments=True)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"--args-file {path}: {exc}") from None
    flags, values = words[::2], words[1::2]
    if len(words) % 2 or any(flag not in ("-S", "--set-param") for flag in flags):
        raise PipelineError(f"--args-file {path}: expected only `-S key=value` options")
    return values


def parse(overrides: list[str]) -> list:
    """Hydra Override objects; a bad one, or one that sets the seed, refused in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as exc:
            raise PipelineError(f"-S {text}: {_first_reason(str(exc))}") from None
        if override.key_or_group == "train.seed":
            raise PipelineError(f"-S {text}: the sweep sets the seed; use --seeds")
        parsed.append(override)
    return parsed


def _first_reason(message: str) -> str:
    """Hydra's message less its framing lines (which override, where the grammar is)."""
    lines = [line for line in message.splitlines() if not line.startswith(("See ", "Error "))]
    return (lines or message.splitlines() or ["cannot parse it"])[0].strip()


def _values(override) -> list[str]:
    """`key=value` for each value an override takes in the grid (one unless it sweeps)."""
    if not override.is_sweep_override():
        return [override.input_line]
    if not override.is_discrete_sweep():
        raise PipelineError(
            f"-S {override.input_line}: interval() is continuous, no grid can hold it; "
            "give choice() or range() values, or sample it with `python -m pipeline search`"
        )
    key = override.get_key_element()
    strings = override.sweep_string_iterator()
    return [
        f"{key}={_tidy(value, text)}"
        for value, text in zip(override.sweep_iterator(), strings, strict=True)
    ]


def _tidy(value, text: str) -> str:
    # range(0.1,0.4,0.1) steps by float addition: 0.30000000000000004 is written 0.3
    return repr(float(f"{value:.12g}")) if isinstance(value, float) else text


def expand(overrides: list[str]) -> list[tuple[str, ...]]:
    """Every configuration of the grid, each as its `key=value` overrides."""
    lists = [_values(override) for override in parse(overrides)]
    size = 1
    for values in lists:
        size *= len(values)
    if size > MAX_CONFIGS:
        raise PipelineError(
            f"the grid has {size} configurations, more than {MAX_CONFIGS}: "
            "narrow it, or search it with `python -m pipeline search`"
        )
    return [tuple(cell) for cell in itertools.product(*lists)]


def varying(cells: list[tuple[str, ...]]) -> list[str]:
    """The keys whose values differ between configurations (absent counts), in order given."""
    values: dict[str, set[str | None]] = {}
    for cell in cells:
        for override in cell:
            values.setdefault(override.partition("=")[0], set())
    for key, seen in values.items():
        for cell in cells:
            seen.add(next((o.partition("=")[2] for o in cell if o.startswith(f"{key}=")), None))
    return [key for key, seen in values.items() if len(seen) > 1]


def check_cells(params_file: Path, cells: list[tuple[str, ...]]) -> None:
    """Each configuration applied as `dvc exp run -S` applies it, then validated as a stage
    validates params.yaml: a typo or a bad value is refused before anything is queued."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    from pipeline.core.params import load_params

    with tempfile.TemporaryDirectory(prefix="pipeline-sweep-") as scratch:
        for cell in cells:
            copy = Path(scratch) / "params.yaml"
            shutil.copyfile(params_file, copy)
            try:
                apply_overrides(copy, list(cell))
                load_params(copy)
            except InvalidArgumentError as exc:
                cause = _first_reason(str(exc.__cause__ or exc))
                raise PipelineError(f"-S {' -S '.join(cell)}: {cause}") from None
            except PipelineError as exc:
                reason = str(exc).replace(str(copy), "params.yaml")
                raise PipelineError(f"-S {' -S '.join(cell)}: {reason}") from None
