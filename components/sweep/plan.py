"""The candidates of a sweep: `-S key=v1,v2` options (dvc exp run's syntax, a list of values) become a grid,
each candidate's params validated before anything runs, and the order in which to run them so that the
steps candidates share run once (DVC's run cache hands their outputs to the others)."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from components.config import Params, describe_validation_error
from components.errors import EdgepipeError

# the steps whose outputs most candidates share: a candidate that changes none of their params reuses them
SHARED_STAGES = ("prepare", "train")


@dataclass(frozen=True)
class Candidate:
    name: str  # the DVC experiment's name
    overrides: dict[str, object]  # dotted params.yaml key -> value

    def set_args(self) -> list[str]:
        """`-S ++key=value` arguments of `dvc exp run`: `++` (Hydra's override syntax, which DVC uses) sets a
        key whether or not params.yaml holds it yet, as `with_overrides` does. DVC parses values as YAML, of
        which JSON is a part."""
        args = []
        for key, value in self.overrides.items():
            args += ["-S", f"++{key}={json.dumps(value)}"]
        return args

    def label(self, short: bool = False) -> str:
        """`key=value ...`; short: the last part of each key (a terminal table's width)."""
        parts = [
            f"{key.rsplit('.', 1)[-1] if short else key}={_text(v)}" for key, v in self.overrides.items()
        ]
        return " ".join(parts) or "(params.yaml as is)"


def _text(value: object) -> str:
    """A value as params.yaml writes it (null, true), not as Python prints it (None, True)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def parse_option(option: str) -> tuple[str, list[object]]:
    """`prune.target_sparsity=0.3,0.6` -> ("prune.target_sparsity", [0.3, 0.6])."""
    key, sep, values = option.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise EdgepipeError(
            f"-S {option!r}: expected KEY=VALUE[,VALUE...] with a dotted params.yaml key, e.g. "
            "-S prune.target_sparsity=0.3,0.6"
        )
    parsed = [yaml.safe_load(value.strip()) for value in values.split(",")]
    if len(set(map(repr, parsed))) != len(parsed):
        raise EdgepipeError(f"-S {option!r}: a value is listed twice")
    return key, parsed


def parse_options(options: list[str]) -> dict[str, list[object]]:
    space: dict[str, list[object]] = {}
    for option in options:
        key, values = parse_option(option)
        if key in space:
            raise EdgepipeError(f"-S {key}: given twice; list every value in one option ({key}=a,b,c)")
        space[key] = values
    return space


def grid(space: dict[str, list[object]]) -> list[dict[str, object]]:
    """Every combination of the listed values, first key slowest (as `dvc exp run -S` grids them)."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]


def with_overrides(raw: dict, overrides: dict[str, object]) -> dict:
    """params.yaml's mapping with each dotted key set (missing sections and keys are created, as `-S` does;
    the schema then says whether the key exists)."""
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return result


def candidate_params(params_file: Path, overrides: dict[str, object]) -> Params:
    """The validated params of one candidate; an unknown key or a bad value names the `-S` option."""
    raw = yaml.safe_load(params_file.read_text()) or {}
    try:
        return Params.model_validate(with_overrides(raw, overrides))
    except ValidationError as exc:
        label = " ".join(f"-S {k}={v}" for k, v in overrides.items())
        raise EdgepipeError(describe_validation_error(Path(f"{params_file} with {label}"), exc)) from None


def make_candidates(sweep_id: str, combos: list[dict[str, object]], start: int = 1) -> list[Candidate]:
    return [Candidate(f"{sweep_id}-{start + i}", combo) for i, combo in enumerate(combos)]


def shared_sections() -> set[str]:
    """params.yaml sections the shared steps read (components/stages.py's table)."""
    from components.stages import get_stage

    return {section for name in SHARED_STAGES for section in get_stage(name).params}


def waves(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Two waves: first one candidate per distinct setting of the shared steps' params (these train), then
    the rest, which find their trained model in DVC's run cache instead of training it again. Candidates
    within a wave run at the same time."""
    sections = shared_sections()
    first, rest, seen = [], [], set()
    for candidate in candidates:
        key = tuple(
            sorted((k, repr(v)) for k, v in candidate.overrides.items() if k.split(".")[0] in sections)
        )
        (rest if key in seen else first).append(candidate)
        seen.add(key)
    return [wave for wave in (first, rest) if wave]
