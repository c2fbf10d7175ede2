"""Every candidate against its device profile's budgets, and the decision: the best candidate that passes
every gate (its release file's test score; the smaller file on a tie), or, when none does, which budget each
candidate missed and by how much."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import Params
from components.formats import RELEASE_FORMAT
from components.gates import FAILURE_CAUSES, latency_failure
from components.results import ValidationReport
from components.sweep.plan import Candidate
from components.targets import get_profile

_MARKERS = {cause: markers for cause, _, markers in FAILURE_CAUSES}  # components.gates' failure groups
# the decision's columns: a gate group and the `gates.` keys whose failures belong to it
GATE_COLUMNS = {
    "flash": ("gates.max_bytes",),
    "arena": ("gates.max_arena_bytes",),
    "accuracy": _MARKERS["optimisation"],
    "runtimes": _MARKERS["runtime"],
}


@dataclass
class Outcome:
    """One candidate's result: what it measured and, per gate column, None (no budget), True or False."""

    candidate: Candidate
    target: str
    rev: str | None = None  # the DVC experiment's commit; None: the run failed
    error: str | None = None  # why it failed (the step's own message)
    seconds: float = 0.0
    reused: tuple[str, ...] = ()  # steps restored from DVC's run cache or current in the baseline
    float_score: float | None = None
    score: float | None = None  # the release file's test score in LiteRT (what the champion rule compares)
    flash_bytes: int | None = None  # the release file
    gzip_bytes: int | None = None
    arena_bytes: int | None = None  # TFLite-Micro's tensor arena of the release file
    latency_ms: float | None = None  # the profile's latency cell, measured alone on this machine
    score_name: str | None = None  # what `score` measures (the report's: top-1, mAP@0.5, centroid F1)
    checks: dict[str, bool | None] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)  # each budget or gate missed, with the measured value

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def latency_cell(self) -> tuple[str, str]:
        """(format, runtime) whose latency `latency_ms` is: the target profile's."""
        return get_profile(self.target).latency_cell

    @property
    def passed(self) -> bool:
        return self.rev is not None and not self.misses

    @property
    def fits_model_gates(self) -> bool:
        """Learned and every runtime agrees: the accuracy and runtime gates pass (budgets aside)."""
        return (
            self.rev is not None
            and self.checks.get("accuracy") is not False
            and (self.checks.get("runtimes") is not False)
        )


def judge(
    candidate: Candidate,
    params: Params,
    report: ValidationReport | None,
    latency_ms: float | None,
    rev: str | None,
    error: str | None = None,
    seconds: float = 0.0,
    reused: tuple[str, ...] = (),
) -> Outcome:
    """The outcome of one candidate: its report's gate failures sorted into the columns, plus the
    latency gate (the sweep times each candidate alone after they ran side by side)."""
    profile = get_profile(params.target)
    outcome = Outcome(candidate, params.target, rev, error, seconds, reused)
    if report is None:
        outcome.misses = [f"did not finish: {error}"]
        return outcome
    release = report.artifacts.get(RELEASE_FORMAT)
    outcome.score_name = report.score_name
    outcome.float_score = report.float_accuracy
    outcome.score = report.accuracy(RELEASE_FORMAT, "litert")
    outcome.flash_bytes = release.bytes if release else None
    outcome.gzip_bytes = release.gzip_bytes if release else None
    cell = report.cell(RELEASE_FORMAT, "tflm")
    outcome.arena_bytes = cell.arena_bytes if cell is not None else None
    outcome.latency_ms = latency_ms

    failures = list(report.gates.failures)
    for column, markers in GATE_COLUMNS.items():
        mine = [f for f in failures if any(marker in f for marker in markers)]
        outcome.checks[column] = not mine
        outcome.misses += [over_by(f) for f in mine]
    if params.gates.bytes_for(RELEASE_FORMAT) is None and outcome.checks["flash"]:
        outcome.checks["flash"] = None
    if params.gates.max_arena_bytes is None and outcome.checks["arena"]:
        outcome.checks["arena"] = None
    if params.gates.max_latency_ms is None or latency_ms is None:
        outcome.checks["latency"] = None
    else:
        miss = latency_failure(params.gates, profile.latency_cell, latency_ms)
        outcome.checks["latency"] = miss is None
        if miss:
            excess = latency_ms - params.gates.max_latency_ms
            outcome.misses.append(
                f"{miss}: over by {excess:.3f} ms ({latency_ms / params.gates.max_latency_ms - 1:+.0%})"
            )
    return outcome


def over_by(failure: str) -> str:
    """A size failure ("X: 398284 bytes > gates.max_bytes.tflite_int8 262144") with the excess added."""
    words = failure.replace(",", "").split()
    try:
        at = words.index(">")
        measured, limit = int(words[at - 2 if words[at - 1] == "bytes" else at - 1]), int(words[at + 2])
    except (ValueError, IndexError):
        return failure
    return f"{failure}: over by {measured - limit:,} B ({measured / limit - 1:+.0%})"


def best(outcomes: list[Outcome]) -> Outcome | None:
    """The highest release score among candidates that pass every gate; the smaller file on a tie."""
    passing = [o for o in outcomes if o.passed and o.score is not None]
    if not passing:
        return None
    return max(passing, key=lambda o: (round(o.score, 6), -(o.flash_bytes or 0)))


def best_without_budgets(outcomes: list[Outcome]) -> Outcome | None:
    """The highest release score among candidates whose model gates pass, whatever their size or speed:
    what the device's budgets cost in accuracy is the gap to `best`."""
    scored = [o for o in outcomes if o.fits_model_gates and o.score is not None]
    return max(scored, key=lambda o: round(o.score, 6), default=None)


def pareto_front(outcomes: list[Outcome], cost: str) -> list[Outcome]:
    """Candidates no other candidate beats on both the score and `cost` (an Outcome attribute)."""
    points = [o for o in outcomes if o.score is not None and getattr(o, cost) is not None]

    def dominated(o: Outcome) -> bool:
        return any(
            p.score >= o.score
            and getattr(p, cost) <= getattr(o, cost)
            and (p.score > o.score or getattr(p, cost) < getattr(o, cost))
            for p in points
        )

    return sorted((o for o in points if not dominated(o)), key=lambda o: getattr(o, cost))


def misses_text(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if not o.passed:
            lines.append(f"{o.name} ({o.candidate.label()}):")
            lines += [f"  {miss}" for miss in o.misses]
    return "\n".join(lines)
