"""The Prefect pipeline flow: ingest -> prepare -> train -> prune -> qat -> export_tflite / export_onnx ->
mcu -> validate -> report -> register (MLflow) -> push (DVC).

Runs in one process (TensorFlow imported once). With no PREFECT_API_URL it uses Prefect's temporary local
API; with a server, runs show up in its UI. dvc.lock alone decides what runs: a step whose inputs and
outputs it already records ends in Prefect's "Skipped" state; each step that ran is recorded at once.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, State

from components import versioning
from components.atomic import read_json
from components.config import Params, load_params
from components.errors import EdgepipeError
from components.formats import FORMATS, RELEASE_FORMAT, get_format
from components.hashing import file_digest
from components.locking import Timeout, project_lock
from components.paths import ProjectPaths
from components.prepare import describe_data, ensure_raw_data
from components.pretrained import weights_file
from components.register import register
from components.registry import (
    Registration,
    check_reachable,
    existing_version,
    next_version,
    promote_champion,
    tracking_uri,
)
from components.release import commit_and_tag, delete_tag, release_files, tag_name
from components.stages import STAGES, get_stage
from components.tracking import DESCRIPTION_TAG, PipelineRun
from components.validate import grouped_failures
from flows.orchestration import task_runner_map


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
    """Make sure there is data (bundled digits when allowed) and record its version with `dvc add`."""
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


def release_accuracy(report: dict) -> float | None:
    """Top-1 test accuracy of the release file in LiteRT: what the champion alias compares."""
    for cell in report["cells"]:
        if cell["format"] == RELEASE_FORMAT and cell["runtime"] == "litert" and cell.get("loaded"):
            return cell["accuracy"]
    return None  # it did not load: the gates have failed


def identity_tags(params: Params, root: Path) -> dict[str, str]:
    """What ties the MLflow run to the Prefect run, the code and the settings it ran with."""
    return {
        "prefect_flow_run_id": str(flow_run.id),
        "git_commit": versioning.git_commit(root),
        "params_hash": params.section_digest(*Params.model_fields),
    }


def input_tags(prepare_metrics: dict) -> dict[str, str]:
    """The model input `prepare` decided, and why (`auto` or params.yaml), as MLflow run tags."""
    data = prepare_metrics
    chosen = "; ".join(f"{k} {v}" for k, v in data.get("image_chosen", {}).items())
    return {
        "input_shape": f"{data['image_height']}x{data['image_width']}x{data['image_channels']}",
        "input_chosen": chosen or "params.yaml",
    }


@task(name="register")
def register_task(
    params: Params, params_file: Path, root: Path, report: dict, stage_metrics: dict, run_id: str | None
) -> Registration:
    """The MLflow run, and for a gate-passing run the release: git commit + tag `<model>@v<N>`, MLflow
    version N tagged with it, the champion alias. A failure after tagging removes the tag, so a re-run
    (Prefect's retries, or the user's) registers exactly once."""
    paths = ProjectPaths(root)
    uri = tracking_uri(root)
    check_reachable(uri)  # before touching git: a dead server changes nothing
    release_file = get_format(RELEASE_FORMAT).path(paths.export_dir)
    sha256 = file_digest(release_file)
    version_tags = {
        "sha256": sha256,
        "dvc_md5": versioning.locked_md5(root, release_file),
    }
    if (accuracy := release_accuracy(report)) is not None:
        version_tags["test_accuracy"] = f"{accuracy:.6f}"
    releasing = report["gates"]["passed"] and params.mlflow.register_model
    git_release = None
    if releasing and params.release.git_tag and existing_version(uri, params.model.name, sha256) is None:
        number = next_version(uri, params.model.name)
        tag = tag_name(params.release.tag_format, params.model.name, number)
        files = release_files(root, params_file, paths.raw_dir(params.data))
        git_release = commit_and_tag(root, files, tag, f"Release {tag}: {release_file.name} sha256 {sha256}")
        version_tags["git_tag"] = git_release.tag
    data = read_json(paths.metrics_file("prepare"))
    run_tags = {**input_tags(data), **identity_tags(params, root)}
    version_tags = {**run_tags, **version_tags}
    files = [fmt.path(paths.export_dir) for fmt in FORMATS] + [paths.reports_dir, paths.mcu_dir]
    files += [stage.metrics(paths) for stage in STAGES] + [paths.release_predictions]
    files += [paths.history_file(name) for name in ("train", "prune", "qat")]
    mcu = stage_metrics["mcu"]
    extra = {
        "sparsity": stage_metrics["qat"]["sparsity"],
        "float_val_accuracy": stage_metrics["train"]["val_accuracy"],
        "mcu.arena_bytes": mcu["arena_bytes"],
        "mcu.flash_bytes": mcu["flash_bytes"],
        "mcu.openmv_input_error_steps": mcu["openmv_input_error_steps"],
    }
    try:
        registration = register(
            params.mlflow,
            params,
            root,
            paths.export_dir,
            paths.prepared_dir,
            report,
            extra,
            files,
            run_tags,
            version_tags,
            run_name=flow_run.name,
            description=describe_data(data) + "\n\n" + paths.report_file.read_text(),
            run_id=run_id,
        )
    except BaseException:
        if git_release is not None and git_release.created:
            delete_tag(root, git_release.tag)
        raise
    if registration.version is None:
        return registration
    released = MlflowClient(uri).get_model_version(params.model.name, registration.version)
    champion = promote_champion(uri, params.model.name, registration.version, params.release.champion_alias)
    return replace(registration, git_tag=released.tags.get("git_tag"), champion=champion)


@task(name="dvc-push", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def push_task(root: Path) -> int:
    return versioning.push(root)


@flow(name="edgepipe")
def pipeline(params_path: str = "params.yaml", project_dir: str = ".", push: bool = True) -> dict:
    """Run every step on the configured data; returns the validation report and where things went.

    One run per project at a time (a file lock): concurrent triggers wait instead of interleaving writes
    to dvc.lock, the DVC cache, git and the registry.
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    params_file = root / params_path
    params = load_params(params_file)
    paths = ProjectPaths(root)
    lock = project_lock(root, params.orchestration)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another edgepipe run holds %s; waiting for it to finish", lock.lock_file)
        try:
            lock.acquire()
        except Timeout:
            raise EdgepipeError(
                f"another run of this project held {lock.lock_file} for longer than "
                f"orchestration.lock_timeout_seconds ({params.orchestration.lock_timeout_seconds:g} s)"
            ) from None
    try:
        return _run_pipeline(params, params_file, root, paths, push, logger)
    finally:
        lock.release()


def _run_pipeline(
    params: Params, params_file: Path, root: Path, paths: ProjectPaths, push: bool, logger
) -> dict:
    weights_file(params.model, params.data.image, root)  # missing weights: stop before anything changes
    tags = identity_tags(params, root)
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
) -> dict:
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
            data = read_json(paths.metrics_file("prepare"))
            described = describe_data(data)
            raw_dir = paths.raw_dir(params.data)
            manifest = read_json(paths.prepared_dir / "manifest.json")
            tracking.log_dataset(
                paths.prepared_dir, raw_dir, versioning.data_md5(raw_dir), manifest["class_counts"]
            )
            tracking.set_tags({**input_tags(data), DESCRIPTION_TAG: described})
    report = results["validate"]

    create_markdown_artifact(
        key="edgepipe-results",
        markdown=describe_data(data) + "\n\n" + paths.report_file.read_text(),
        description=f"edgepipe report: validation matrix, sizes, gates (plots in {paths.reports_dir})",
    )
    # One line in the log (the CLI and the artifact hold the tables): what a served run's log should say.
    logger.info(
        "results: release gates %s; full report in %s",
        "passed" if report["gates"]["passed"] else "FAILED",
        paths.report_file,
    )

    register = register_task.with_options(
        retries=params.mlflow.retries, retry_delay_seconds=params.mlflow.retry_delay_seconds
    )
    tracking.open()  # the store may answer now if it did not when the run started
    if not report["gates"]["passed"]:
        registration = register(params, params_file, root, report, results, tracking.run_id)  # for the record
        tracking.run_id = registration.run_id
        raise EdgepipeError(
            "release gates failed, nothing registered or pushed.\n"
            + grouped_failures(report["gates"]["failures"])
            + f"\nSee {paths.report_file} and MLflow run {registration.run_id}."
        )
    # The remote holds the bytes before any registry points at them.
    pushed = push_task(root) if push else None  # None: not asked to push
    registration = register(params, params_file, root, report, results, tracking.run_id)
    tracking.run_id = registration.run_id
    return {
        "report": report,
        "registration": registration,
        "pushed": pushed,
        "report_file": str(paths.report_file),
        "data": data,
    }
