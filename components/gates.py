"""The release gates: which gate a validation cell or an artifact misses, each failure naming the gate and
the measured value, and the failures grouped by cause. Plain Python (no TensorFlow): the flow and the CLI
read gate results without loading a runtime."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from components.config import GatesConfig
from components.results import GateVerdict

if TYPE_CHECKING:
    from components.results import Artifact, Cell

log = logging.getLogger(__name__)


def verdict(
    gates: GatesConfig,
    float_score: float,
    artifacts: dict[str, Artifact],
    cells: list[Cell],
    score_name: str = "accuracy",
    deployed: tuple[tuple[str, str], ...] = (),
) -> GateVerdict:
    """What every task's validate ends with: each cell's status set, every failure listed (and logged),
    with the gate settings in force. `score_name`: what the cells' `accuracy` measures; `deployed`: the
    (format, runtime) cells the target device runs (components/targets.py), required whatever the
    registry says."""
    for cell in cells:
        cell.required = cell.required or (cell.format, cell.runtime) in deployed
    failures = gate_failures(gates, float_score, artifacts, cells, score_name)
    validated = {(cell.format, cell.runtime) for cell in cells}
    failures += [
        f"{fmt} on {runtime}: not in the validation matrix, and the target device deploys it "
        "(components/targets.py)"
        for fmt, runtime in deployed
        if (fmt, runtime) not in validated
    ]
    for cell in cells:
        cell.status = cell_status(cell, gates, float_score, score_name)
    for failure in failures:
        log.warning("gate failed: %s", failure)
    return GateVerdict(passed=not failures, failures=failures, **gates.model_dump())


def gate_failures(
    gates: GatesConfig,
    float_accuracy: float,
    artifacts: dict[str, Artifact],
    cells: list[Cell],
    score_name: str = "accuracy",
) -> list[str]:
    """Every gate a required cell or an artifact misses, each naming the gate and the measured value."""
    failures = []
    for name, artifact in artifacts.items():
        limit = gates.bytes_for(name)
        if limit is not None and artifact.bytes > limit:
            failures.append(f"{name}: {artifact.bytes} bytes > gates.max_bytes.{name} {limit}")
    for cell in cells:
        if cell.required:
            failures += cell_failures(gates, float_accuracy, cell, score_name)
    return failures


# Accuracies are counts over the test images: 0.9667 - 0.9167 is 3 images of 60, a drop of exactly 0.05, which
# float subtraction makes 0.05000000000000004. A bar is met when the counts meet it.
EPSILON = 1e-9


def cell_failures(
    gates: GatesConfig, float_accuracy: float, cell: Cell, score_name: str = "accuracy"
) -> list[str]:
    """The gates one cell misses, whether or not it is required. `score_name`: what `accuracy` measures
    (mAP@0.5 for a detector); gates.max_accuracy_drop bounds its drop either way."""
    where = f"{cell.format} on {cell.runtime}"
    if not cell.loaded:
        return [f"{where}: could not run ({cell.error})"]
    failures = []
    drop, max_drop = float_accuracy - cell.accuracy, gates.accuracy_drop_for(cell.format)
    if drop > max_drop + EPSILON:
        failures.append(f"{where}: {score_name} drop {drop:.4f} > gates.max_accuracy_drop {max_drop}")
    error, max_error = cell.logit_error, gates.max_logit_error.get(cell.precision)
    if max_error is not None and error is not None and error > max_error:  # None: no logits (detection)
        failures.append(
            f"{where}: max logit difference {error:.4f} of the logit range > "
            f"gates.max_logit_error.{cell.precision} {max_error} (it computes a different function "
            "from the model it was made from)"
        )
    same_file = cell.runtime_agreement
    if same_file is not None and same_file < gates.min_runtime_agreement - EPSILON:
        failures.append(
            f"{where}: {'top-1 ' if cell.logit_error is not None else ''}agreement {same_file:.4f} with "
            f"{cell.reference_runtime} on the same "
            f"file < gates.min_runtime_agreement {gates.min_runtime_agreement}"
        )
    bar = gates.agreement_for(cell.runtime)
    if cell.agreement < bar - EPSILON:
        failures.append(f"{where}: agreement {cell.agreement:.4f} < gates.min_agreement {bar}")
    arena = cell.arena_bytes
    if gates.max_arena_bytes is not None and arena is not None and arena > gates.max_arena_bytes:
        failures.append(
            f"{where}: tensor arena {arena} bytes > gates.max_arena_bytes {gates.max_arena_bytes}"
        )
    return failures


def latency_failure(gates: GatesConfig, cell: tuple[str, str], latency_ms: float) -> str | None:
    """The latency gate: the target's main file, timed alone on this machine (components/latency.py)."""
    limit = gates.max_latency_ms
    if limit is None or latency_ms <= limit:
        return None
    fmt, runtime = cell
    return f"{fmt} on {runtime}: median latency {latency_ms:.3f} ms > gates.max_latency_ms {limit:g}"


# Gate failures by cause, in the order to look at them: each failure names its gate, which says its cause.
FAILURE_CAUSES = (
    ("size", "The model does not fit the device", ("gates.max_bytes", "gates.max_arena_bytes")),
    ("latency", "The model is too slow for the device (build-machine proxy)", ("gates.max_latency_ms",)),
    ("optimisation", "Pruning or quantization lost accuracy", ("gates.max_accuracy_drop",)),
    (
        "runtime",
        "A runtime or a conversion computes something other than the model it was made from",
        (
            "could not run",
            "not in the validation matrix",
            "gates.max_logit_error",
            "gates.min_agreement",
            "gates.min_runtime_agreement",
        ),
    ),
)


def grouped_failures(failures: list[str]) -> str:
    """The failures under one heading per cause, each heading with the settings to look at."""
    lines = []
    for _, heading, markers in FAILURE_CAUSES:
        group = [f for f in failures if any(marker in f for marker in markers)]
        if group:
            lines.append(f"{heading} ({len(group)}):")
            lines += [f"  {failure}" for failure in group]
    return "\n".join(lines)


def cell_status(cell: Cell, gates: GatesConfig, float_accuracy: float, score_name: str = "accuracy") -> str:
    """pass, fail (a required cell that misses a gate) or known failure (a cell reported only, which does)."""
    if not cell_failures(gates, float_accuracy, cell, score_name):
        return "pass"
    return "fail" if cell.required else "known failure"
