"""The sweep flow (`edgepipe sweep`): candidates as DVC experiments run side by side on the configured task
runner, each judged against the device profile, recorded as MLflow child runs of one parent run; the best
candidate that passes every gate is applied to the workspace and released by the pipeline's own release
steps (dvc push, MLflow version, git tag, champion rule). None passing: exit 2 with each candidate's misses.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.atomic import write_json
from components.config import Params, load_params
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT
from components.git_cli import git
from components.latency import check_latency
from components.locking import one_run_at_a_time
from components.paths import ProjectPaths
from components.registry import check_reachable, tracking_uri
from components.report import table as markdown_table
from components.results import RunResult
from components.stages import check_params_sections
from components.sweep import experiments, plan
from components.sweep.decision import Outcome, best, best_without_budgets, judge, misses_text
from components.sweep.pareto import pareto_chart
from components.sweep.search import optuna_search
from components.sweep.tracking import SWEEP_TAG, close_parent, log_child, open_parent
from flows.orchestration import task_runner_map
from flows.pipeline import _run_pipeline, ingest


class NoCandidateFits(EdgepipeError):
    """Every candidate missed a gate or a budget: the message lists each miss (exit 2)."""

    def __init__(self, message: str, result: SweepResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class SweepResult:
    sweep_id: str
    outcomes: list[Outcome]
    chosen: Outcome | None
    unconstrained: Outcome | None  # the best score whatever the budgets
    parent_run_id: str
    baseline: str  # the commit the experiments branch from (`dvc exp show --rev` it after a release)
    chart: Path
    table: Path
    seconds: float
    release: RunResult | None = None  # the released candidate's pipeline run


@task(cache_policy=NO_CACHE)
def measure_latencies(
    root: Path, runs: list[experiments.ExperimentRun], candidate_params: list[Params]
) -> list[float | None]:
    """Each finished candidate's main file timed as `edgepipe run` times it, one file at a time after the
    candidates ran (alone on the cores, so the figures compare)."""
    return [
        None
        if run.rev is None
        else check_latency(
            cparams,
            lambda fmt, rev=run.rev: experiments.cached_output(root, rev, f"models/export/{fmt.filename}"),
        ).median_ms
        for run, cparams in zip(runs, candidate_params, strict=True)
    ]


@flow(name="edgepipe-sweep")
def sweep(
    options: list[str],
    search: str = "grid",
    trials: int = 8,
    params_path: str = "params.yaml",
    project_dir: str = ".",
    push: bool = True,
) -> SweepResult:
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    params_file = root / params_path
    params = load_params(params_file)
    check_params_sections(params_file)
    space = plan.parse_options(options)
    if search == "grid":
        combos = plan.grid(space)
        for combo in combos:  # every candidate's params checked before anything runs
            plan.candidate_params(params_file, combo)
    uri = tracking_uri(root)
    check_reachable(uri)
    with one_run_at_a_time(root, params.orchestration, lambda f: logger.info("waiting for %s", f)):
        return _sweep(params, params_file, root, space, search, trials, push, uri, logger)


def _sweep(params, params_file, root, space, search, trials, push, uri, logger) -> SweepResult:
    started = time.monotonic()
    paths = ProjectPaths(root)
    sweep_id = "sweep-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = root / "sweeps" / sweep_id  # not reports/: that folder is the report step's DVC output
    ingest(params, root)
    experiments.stage_data_pointer(root, paths.raw_dir(params.data))
    baseline = git(root, "rev-parse", "HEAD").stdout.strip()

    description = f"{search} over " + ", ".join(f"{k} in {v}" for k, v in space.items())
    parent_id = open_parent(
        uri,
        params.mlflow.experiment,
        sweep_id,
        {
            "search": search,
            "trials": trials if search == "optuna" else len(plan.grid(space)),
            **{f"space.{k}": ",".join(map(str, v)) for k, v in space.items()},
        },
        description,
    )
    map_fn = task_runner_map(params.orchestration, "candidate")
    run_one = functools.partial(experiments.run_experiment, root, log_dir=out_dir)  # picklable for Dask
    made: list[Outcome] = []

    def run_batch(combos: list[dict]) -> list[Outcome]:
        candidates = plan.make_candidates(sweep_id, combos, start=len(made) + 1)
        candidate_params = [plan.candidate_params(params_file, c.overrides) for c in candidates]
        runs_by_name = {}
        for wave in plan.waves(candidates):
            logger.info("running %s", ", ".join(f"{c.name} ({c.label()})" for c in wave))
            for run in map_fn(run_one, wave):
                runs_by_name[run.candidate.name] = run
        runs = [runs_by_name[c.name] for c in candidates]
        latencies = measure_latencies(root, runs, candidate_params)
        outcomes = []
        for run, cparams, latency in zip(runs, candidate_params, latencies, strict=True):
            report = experiments.report_at(root, run.rev) if run.rev else None
            outcome = judge(
                run.candidate, cparams, report, latency, run.rev, run.error, run.seconds, run.reused
            )
            log_child(uri, parent_id, sweep_id, outcome)
            logger.info("%s: %s", outcome.name, "pass" if outcome.passed else "; ".join(outcome.misses))
            outcomes.append(outcome)
        made.extend(outcomes)
        return outcomes

    try:
        if search == "optuna":
            outcomes = optuna_search(
                space, trials, params.orchestration.max_workers, params.train.seed, run_batch
            )
        else:
            outcomes = run_batch(plan.grid(space))
        chosen, unconstrained = best(outcomes), best_without_budgets(outcomes)
        # what the score measures, as the candidates' validation reports say (top-1, mAP@0.5, centroid F1)
        score_name = next((o.score_name for o in outcomes if o.score_name), "score")
        budgets = {
            "flash_bytes": params.gates.bytes_for(RELEASE_FORMAT),
            "arena_bytes": params.gates.max_arena_bytes,
            "latency_ms": params.gates.max_latency_ms,
        }
        chart = pareto_chart(outcomes, params.target, budgets, score_name, chosen, out_dir / "pareto.png")
        table = out_dir / "sweep.md"
        summary = summary_markdown(sweep_id, outcomes, chosen, unconstrained, score_name)
        table.write_text(summary)
        write_json(out_dir / "sweep.json", [outcome_json(o) for o in outcomes])
    except BaseException as error:
        close_parent(uri, parent_id, {}, [], f"{description}\n\nFailed: {error}", failed=True)
        raise
    seconds = time.monotonic() - started
    metrics = {"candidates": len(outcomes), "passed": sum(o.passed for o in outcomes), "seconds": seconds}
    if chosen is not None:
        metrics["best_score"] = chosen.score
    close_parent(
        uri,
        parent_id,
        metrics,
        [chart, table, out_dir / "sweep.json"],
        summary,
        failed=chosen is None,
    )
    create_markdown_artifact(key="edgepipe-sweep", markdown=summary, description=sweep_id)
    result = SweepResult(
        sweep_id, outcomes, chosen, unconstrained, parent_id, baseline, chart, table, seconds
    )
    if chosen is None:
        raise NoCandidateFits(
            f"no candidate of {sweep_id} passes every gate of target {params.target}; nothing released.\n"
            + misses_text(outcomes)
            + f"\nSee {table} and {chart}, and MLflow run {parent_id}.",
            result,
        )
    # The best candidate becomes the workspace, then the pipeline's own steps release it: every stage is
    # current in the applied dvc.lock (skipped), then dvc push, MLflow version, git tag, champion rule.
    logger.info("releasing %s (%s)", chosen.name, chosen.candidate.label())
    experiments.apply_experiment(root, chosen.name)
    run = _run_pipeline(load_params(params_file), params_file, root, paths, push, logger)
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_tag(run.registration.run_id, SWEEP_TAG, sweep_id)
    return replace(result, seconds=time.monotonic() - started, release=run)


GATES = ("flash", "arena", "latency", "accuracy", "runtimes")  # the table's pass/fail columns


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def candidate_rows(outcomes: list[Outcome], short: bool = False) -> list[dict[str, str]]:
    """One row per candidate, pass/fail per gate. short (a terminal's width): the candidate's number, one
    setting per line, the gates in one column naming those missed."""
    rows = []
    for o in outcomes:
        row = {
            "candidate": o.name.rsplit("-", 1)[-1] if short else o.name,
            "settings": o.candidate.label(short).replace(" ", "\n") if short else o.candidate.label(),
            "score": "-" if o.score is None else f"{o.score:.4f}",
            "float": "-" if o.float_score is None else f"{o.float_score:.4f}",
            "int8 bytes": "-" if o.flash_bytes is None else f"{o.flash_bytes:,}",
            "arena bytes": "-" if o.arena_bytes is None else f"{o.arena_bytes:,}",
            "latency ms": "-" if o.latency_ms is None else f"{o.latency_ms:.3f}",
        }
        if short:
            missed = [gate for gate in GATES if o.checks.get(gate) is False]
            row["gates"] = (
                "pass" if o.passed else ("did not finish" if o.rev is None else "miss: " + ", ".join(missed))
            )
        else:
            row |= {gate: _mark(o.checks.get(gate)) for gate in GATES}
            row["result"] = "pass" if o.passed else ("failed" if o.rev is None else "miss")
        row["reused"] = ", ".join(o.reused) or "-"
        row["seconds"] = f"{o.seconds:.0f}"
        rows.append(row)
    return rows


def summary_markdown(
    sweep_id: str, outcomes: list[Outcome], chosen: Outcome | None, unconstrained: Outcome | None, score: str
) -> str:
    rows = candidate_rows(outcomes)
    lines = [f"# {sweep_id}", "", f"score: test {score} of the release int8 file in LiteRT", ""]
    lines += markdown_table(tuple(rows[0]) if rows else (), rows)
    lines.append("")
    lines.append(decision_text(chosen, unconstrained, outcomes))
    return "\n".join(lines) + "\n"


def decision_text(chosen: Outcome | None, unconstrained: Outcome | None, outcomes: list[Outcome]) -> str:
    if chosen is None:
        return "Decision: no candidate passes every gate; nothing released.\n" + misses_text(outcomes)
    text = f"Decision: release {chosen.name} ({chosen.candidate.label()}), score {chosen.score:.4f}"
    if unconstrained is not None and unconstrained is not chosen:
        text += (
            f"; the best score without the device's budgets is {unconstrained.name}'s "
            f"{unconstrained.score:.4f} "
            f"({(chosen.score - unconstrained.score) * 100:+.1f} pp)"
        )
    elif unconstrained is chosen:
        text += "; no candidate scores higher, budgets or not"
    return text + "."


def outcome_json(o: Outcome) -> dict:
    return {
        "name": o.name,
        "overrides": o.candidate.overrides,
        "target": o.target,
        "rev": o.rev,
        "error": o.error,
        "score": o.score,
        "float_score": o.float_score,
        "release_bytes": o.flash_bytes,
        "release_gzip_bytes": o.gzip_bytes,
        "arena_bytes": o.arena_bytes,
        "latency_ms": o.latency_ms,
        "latency_cell": list(o.latency_cell),
        "checks": o.checks,
        "misses": o.misses,
        "passed": o.passed,
        "seconds": round(o.seconds, 1),
        "reused": list(o.reused),
    }
