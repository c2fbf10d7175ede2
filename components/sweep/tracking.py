"""The sweep in MLflow: one parent run (the search space, the decision table, the Pareto chart) and one child
run per candidate (its overrides, what it measured, pass/fail per gate, its DVC experiment), which the MLflow
UI nests under the parent. The released candidate's own pipeline run is the release's record, as for
`edgepipe run`; it carries the sweep's name as a tag."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from components.sweep.decision import Outcome
from components.tracking import DESCRIPTION_TAG, experiment_id

SWEEP_TAG = "edgepipe.sweep"


def open_parent(uri: str, experiment: str, sweep_id: str, params: dict[str, str], description: str) -> str:
    client = MlflowClient(uri)
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=sweep_id,
        tags={SWEEP_TAG: sweep_id, "edgepipe.kind": "sweep", DESCRIPTION_TAG: description},
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def log_child(uri: str, parent_id: str, sweep_id: str, outcome: Outcome) -> str:
    """One finished candidate as a child run of the sweep (FAILED when its pipeline did not finish)."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_id,
        MLFLOW_RUN_NAME: outcome.name,
        SWEEP_TAG: sweep_id,
        "edgepipe.kind": "sweep-candidate",
        "dvc_experiment": outcome.name,
        "dvc_experiment_rev": outcome.rev or "none",
        "target": outcome.target,
        "passed": str(outcome.passed).lower(),
    }
    if outcome.misses:
        tags[DESCRIPTION_TAG] = "Misses:\n" + "\n".join(f"- {m}" for m in outcome.misses)
    run = client.create_run(parent.info.experiment_id, run_name=outcome.name, tags=tags)
    now = int(time.time() * 1000)
    values = {
        "score": outcome.score,
        "float_score": outcome.float_score,
        "release_bytes": outcome.flash_bytes,
        "release_gzip_bytes": outcome.gzip_bytes,
        "arena_bytes": outcome.arena_bytes,
        "latency_ms": outcome.latency_ms,
        "seconds": outcome.seconds,
        "passed": float(outcome.passed),
    }
    values |= {f"gate_{name}": float(ok) for name, ok in outcome.checks.items() if ok is not None}
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v is not None],
        params=[Param(k, str(v)) for k, v in outcome.candidate.overrides.items()],
    )
    status = RunStatus.FINISHED if outcome.rev is not None else RunStatus.FAILED
    client.set_terminated(run.info.run_id, RunStatus.to_string(status))
    return run.info.run_id


def close_parent(
    uri: str,
    parent_id: str,
    metrics: dict[str, float],
    files: list[Path],
    description: str,
    failed: bool,
) -> None:
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(DESCRIPTION_TAG, description[:5000])],
    )
    for file in files:
        client.log_artifact(parent_id, str(file), "sweep")
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))
