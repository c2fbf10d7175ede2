"""The Prefect pipeline flow: ingest -> prepare -> train -> prune -> qat -> export_tflite / export_onnx ->
mcu -> validate -> report -> register (MLflow) -> push (DVC).

Runs in one process (TensorFlow imported once). With no PREFECT_API_URL it uses Prefect's temporary local
API; with a server, runs show up in its UI. dvc.lock alone decides what runs: a step whose inputs and
outputs it already records ends in Prefect's "Skipped" state; each step that ran is recorded at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Completed, State

from components import versioning
from components.atomic import read_json
from components.bundled_data import ensure_raw_data
from components.config import Params, load_params
from components.errors import EdgepipeError
from components.gates import grouped_failures
from components.latency import LatencyCheck, check_latency
from components.locking import one_run_at_a_time
from components.paths import ProjectPaths
from components.prepare import describe_data
from components.pretrained import weights_file
from components.registry import Registration, tracking_uri
from components.release import release
from components.results import RunResult, ValidationReport
from components.stages import STAGES, check_params_sections, get_stage
from components.tracking import PipelineRun, identity_tags
from flows.orchestration import task_runner_map
from flows.queued_runs import cancel_covered_runs


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed task or flow with its traceback. For an EdgepipeError (bad data, bad params,
    an unreachable server) the message is the whole story: keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EdgepipeError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine"):
    logging.getLogger(_name).addFilter(HideUserErrorTracebacks())


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry what may pass next time (a busy disk, a flaky remote), not a user's error: that one fails
    the same way again, so it is reported at once."""
    return not isinstance(state.result(raise_on_failure=False), EdgepipeError)


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def ingest(params: Params, root: Path) -> str:
    """Make sure there is data (the task's bundled set when allowed) and record its version with `dvc add`."""
    raw_dir = ensure_raw_data(params.data, ProjectPaths(root).raw_dir(params.data))
    versioning.track_data(root, raw_dir)
    return str(raw_dir)


@task(cache_policy=NO_CACHE)  # dvc.lock is the one record of what is current
def run_stage(stage_name: str, params: Params, root: Path, current: bool) -> dict | State:
    """Run one step and record it in dvc.lock at once (`dvc commit -f`, as `dvc repro` would write it).

    `current`: dvc.lock already records this step's inputs and outputs (from an earlier run or from
    `dvc repro`), so it ends as "Skipped" with the metrics it wrote then. A step with per-format work
    fans it out on the configured task runner.
    """
    stage = get_stage(stage_name)
    paths = ProjectPaths(root)
    if current:
        return Completed(
            name="Skipped",
            message="dvc.lock records these inputs and outputs",
            data=read_json(stage.metrics(paths)),
        )
    if stage.fans_out:
        result = stage.run(params, paths, map_fn=task_runner_map(params.orchestration, stage_name))
    else:
        result = stage.run(params, paths)
    versioning.commit_stage(root, stage_name)
    return result


@task(name="register")
def register_task(
    params: Params,
    params_file: Path,
    root: Path,
    report: ValidationReport,
    stage_results: dict,
    run_id: str | None,
) -> Registration:
    """The MLflow run, and for a gate-passing run the release (components.release): git tag, MLflow version,
    champion alias. A failure after tagging removes the tag, so Prefect's retries register exactly once."""
    return release(
        params,
        params_file,
        ProjectPaths(root),
        report,
        stage_results,
        prefect_run_id=str(flow_run.id),
        run_name=flow_run.name,
        run_id=run_id,
    )


@task(name="latency")
def latency_task(params: Params, root: Path) -> LatencyCheck:
    """The target's latency gate: its main file timed alone on this machine (a proxy for the device)."""
    export_dir = ProjectPaths(root).export_dir
    return check_latency(params, lambda fmt: fmt.path(export_dir))


@task(name="coalesce", retries=2, retry_delay_seconds=5)
def coalesce_task(started: datetime) -> list[str]:
    """Cancel the deployment's queued runs this run covers (flows.queued_runs states the rule)."""
    covered = cancel_covered_runs(started)
    if covered:
        get_run_logger().info(
            "cancelled %d queued run(s) this run covers: %s", len(covered), ", ".join(r.name for r in covered)
        )
    return [str(run.id) for run in covered]


@task(name="dvc-push", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def push_task(root: Path) -> int:
    return versioning.push(root)


@flow(name="edgepipe")
def pipeline(params_path: str = "params.yaml", project_dir: str = ".", push: bool = True) -> RunResult:
    """Run every step on the configured data; returns the validation report and where things went.

    One run per project at a time (a file lock): concurrent triggers wait instead of interleaving writes
    to dvc.lock, the DVC cache, git and the registry.
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    params_file = root / params_path
    params = load_params(params_file)
    check_params_sections(params_file)  # runs started by a schedule, an event or a worker
    paths = ProjectPaths(root)

    def waiting(lock_file: str) -> None:
        logger.info("another edgepipe run holds %s; waiting for it to finish", lock_file)

    with one_run_at_a_time(root, params.orchestration, waiting):
        if FlowRunContext.get().flow_run.deployment_id is not None:  # only a deployment's runs queue
            coalesce_task(datetime.now(UTC))  # before the data is read: the queue it covers
        return _run_pipeline(params, params_file, root, paths, push, logger)


def _run_pipeline(
    params: Params, params_file: Path, root: Path, paths: ProjectPaths, push: bool, logger
) -> RunResult:
    weights_file(params.model, params.data.image, root)  # missing weights: stop before anything changes
    tags = identity_tags(params, root, str(flow_run.id))
    tracking = PipelineRun(tracking_uri(root), params.mlflow.experiment, flow_run.name, tags, params)
    tracking.open()
    try:
        result = _run_steps(params, params_file, root, paths, push, logger, tracking)
    except BaseException as error:
        tracking.end(error)
        raise
    tracking.end(None)
    return result


def _run_steps(
    params: Params,
    params_file: Path,
    root: Path,
    paths: ProjectPaths,
    push: bool,
    logger,
    tracking: PipelineRun,
) -> RunResult:
    ingest(params, root)
    results = {}
    for stage in STAGES:
        current = versioning.stage_is_current(root, stage.name) and stage.named_inputs_unchanged(
            params, paths
        )
        try:
            state = run_stage.with_options(name=stage.name)(
                stage.name, params, root, current, return_state=True
            )
            results[stage.name] = state.result()
        except EdgepipeError:
            if stage.name == "train":  # it did not learn: the diagnosis wrote the curves that show it
                tracking.log_history(stage.name, paths.history_file(stage.name))
            raise
        if paths.history_file(stage.name).is_file():
            tracking.log_history(stage.name, paths.history_file(stage.name))
        if stage.name == "prepare":
            tracking.log_prepared_data(paths, paths.raw_dir(params.data))
    data = read_json(paths.metrics_file("prepare"))
    report = ValidationReport.load(paths.validation_file)  # whether validate ran now or was skipped
    latency = latency_task(params, root)
    results["latency"] = {"latency_ms": latency.median_ms}  # an MLflow metric of the run
    logger.info("latency: %s", latency.text)
    if latency.failure:  # the report's gates are validate's; this one joins them for this run's decision
        report.gates.failures.append(latency.failure)
        report.gates.passed = False

    create_markdown_artifact(
        key="edgepipe-results",
        markdown=describe_data(data) + "\n\n" + paths.report_file.read_text(),
        description=f"edgepipe report: validation matrix, sizes, gates (plots in {paths.reports_dir})",
    )
    # One line in the log (the CLI and the artifact hold the tables): what a served run's log should say.
    logger.info(
        "results: release gates %s; full report in %s",
        "passed" if report.passed else "FAILED",
        paths.report_file,
    )

    register = register_task.with_options(
        retries=params.mlflow.retries, retry_delay_seconds=params.mlflow.retry_delay_seconds
    )
    tracking.open()  # the store may answer now if it did not when the run started
    if not report.passed:
        registration = register(params, params_file, root, report, results, tracking.run_id)  # the record
        tracking.run_id = registration.run_id
        raise EdgepipeError(
            "release gates failed, nothing registered or pushed.\n"
            + grouped_failures(report.gates.failures)
            + f"\nSee {paths.report_file} and MLflow run {registration.run_id}."
        )
    # The remote holds the bytes before any registry points at them.
    pushed = push_task(root) if push else None  # None: not asked to push
    registration = register(params, params_file, root, report, results, tracking.run_id)
    tracking.run_id = registration.run_id
    return RunResult(report, registration, pushed, str(paths.report_file), data, latency.text)
