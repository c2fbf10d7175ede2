"""The Prefect pipeline flow: ingest -> prepare -> train -> prune -> qat -> export_tflite / export_onnx ->
mcu -> validate -> report -> register (MLflow) -> push (DVC).

Runs in one process (TensorFlow imported once). With no PREFECT_API_URL it uses Prefect's temporary local
API; with a server, runs show up in its UI. Heavy steps are cached on their inputs (flows.caching) and
skipped when dvc.lock already records them; each step that ran is recorded in dvc.lock at once.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from components import versioning
from components.atomic import read_json
from components.config import Params, load_params
from components.errors import EdgepipeError
from components.formats import FORMATS, RELEASE_FORMAT, get_format
from components.hashing import file_digest
from components.paths import ProjectPaths
from components.prepare import ensure_raw_data
from components.register import Registration, register
from components.report import to_markdown
from components.stages import STAGES, get_stage
from flows.caching import stage_cache_key


@task(name="ingest", retries=2, retry_delay_seconds=5)
def ingest(params: Params, root: Path) -> str:
    """Make sure there is data (bundled digits when allowed) and record its version with `dvc add`."""
    raw_dir = ensure_raw_data(params.data, ProjectPaths(root).raw_dir(params.data))
    versioning.track_data(root, raw_dir)
    return str(raw_dir)


@task(cache_key_fn=stage_cache_key, persist_result=True)
def run_stage(stage_name: str, params: Params, root: Path, outputs_intact: bool) -> dict:
    """Run one step and record it in dvc.lock at once (`dvc commit -f`, as `dvc repro` would write it).

    Cached by Prefect on the step's inputs (not on `outputs_intact`, see flows.caching). A cache miss whose
    outputs dvc.lock already records for these inputs (e.g. made by `dvc repro`, or with a fresh Prefect
    home) is not recomputed either.
    """
    stage = get_stage(stage_name)
    paths = ProjectPaths(root)
    if outputs_intact:
        get_run_logger().info("%s: dvc.lock already records these inputs and outputs; not re-run", stage_name)
        return read_json(stage.metrics(paths))
    result = stage.run(params, paths)
    versioning.commit_stage(root, stage_name)
    return result


@task(name="register", retries=2, retry_delay_seconds=10)
def register_task(params: Params, root: Path, report: dict, stage_metrics: dict) -> Registration:
    paths = ProjectPaths(root)
    release = get_format(RELEASE_FORMAT).path(paths.export_dir)
    run_tags = {
        "git_commit": versioning.git_commit(root),
        "params_hash": params.section_digest(*Params.model_fields),
        "prefect_flow_run_id": str(flow_run.id),
    }
    version_tags = {
        **run_tags,
        "sha256": file_digest(release),
        "dvc_md5": versioning.locked_md5(root, release),
    }
    files = [fmt.path(paths.export_dir) for fmt in FORMATS] + [paths.reports_dir, paths.mcu_dir]
    files += [stage.metrics(paths) for stage in STAGES] + [paths.train_history, paths.release_predictions]
    mcu = stage_metrics["mcu"]
    extra = {
        "sparsity": stage_metrics["qat"]["sparsity"],
        "float_val_accuracy": stage_metrics["train"]["val_accuracy"],
        "mcu.arena_bytes": mcu["arena_bytes"],
        "mcu.flash_bytes": mcu["flash_bytes"],
        "mcu.openmv_input_error_steps": mcu["openmv_input_error_steps"],
    }
    return register(
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
    )


@task(name="dvc-push", retries=2, retry_delay_seconds=5)
def push_task(root: Path) -> int:
    return versioning.push(root)


@flow(name="edgepipe")
def pipeline(params_path: str = "params.yaml", project_dir: str = ".", push: bool = True) -> dict:
    """Run every step on the configured data; returns the validation report and where things went."""
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    params = load_params(root / params_path)
    paths = ProjectPaths(root)

    ingest(params, root)
    results = {}
    for stage in STAGES:
        # A cached result only counts while the outputs on disk are still the ones dvc.lock records.
        outputs_intact = versioning.stage_is_current(root, stage.name)
        step = run_stage.with_options(name=stage.name, refresh_cache=not outputs_intact)
        results[stage.name] = step(stage.name, params, root, outputs_intact)
    report = results["validate"]

    table = to_markdown(report, sparsity=results["qat"]["sparsity"])
    create_markdown_artifact(
        key="edgepipe-results",
        markdown=paths.report_file.read_text(),
        description=f"edgepipe report: validation matrix, sizes, gates (plots in {paths.reports_dir})",
    )
    logger.info("results:\n%s", table)

    registration = register_task(params, root, report, results)
    if not report["gates"]["passed"]:
        raise EdgepipeError(
            "release gates failed, nothing registered or pushed:\n  "
            + "\n  ".join(report["gates"]["failures"])
            + f"\nSee {paths.report_file} and MLflow run {registration.run_id}."
        )
    pushed = push_task(root) if push else None  # None: not asked to push
    return {
        "report": report,
        "registration": registration,
        "pushed": pushed,
        "table": table,
        "report_file": str(paths.report_file),
    }
