"""Is the last release still what this project would produce? Asked before TensorFlow or Prefect are imported,
so an unchanged `edgepipe run` ends in seconds: DVC decides (`dvc status`: the data and every stage as
dvc.lock records them), then the MLflow registry confirms it holds the release file's bytes.

Anything else (a changed input, a failed gate, a registry that does not answer, a run in progress) answers
None, and the flow runs, skipping what dvc.lock records.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from components import dvc_child
from components.atomic import read_json
from components.config import Params
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, get_format
from components.hashing import file_digest
from components.locking import Timeout, project_lock
from components.paths import ProjectPaths
from components.results import RunResult, ValidationReport
from components.stages import STAGES

if TYPE_CHECKING:
    from components.registry import Registration

log = logging.getLogger(__name__)


def unchanged_release(params: Params, root: Path, push: bool) -> RunResult | None:
    """The results of the last run (report, registration, DVC push) when nothing has changed since it was
    released; None when the pipeline has to run."""
    paths = ProjectPaths(root)
    if not params.mlflow.register_model or not (root / "dvc.lock").is_file():
        return None
    lock = project_lock(root, params.orchestration)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None  # a run is in progress: wait for it the usual way
    try:
        return _unchanged_release(params, root, paths, push)
    finally:
        lock.release()


def _unchanged_release(params: Params, root: Path, paths: ProjectPaths, push: bool) -> RunResult | None:
    if not paths.validation_file.is_file():
        return None
    if not all(stage.named_inputs_unchanged(params, paths) for stage in STAGES):
        return None
    report = ValidationReport.load(paths.validation_file)
    if not report.passed:
        return None  # the flow reports the failure again, in full
    # DVC (status, then the push) in a child process while this one imports MLflow and asks the registry:
    # each side is seconds of Python, so on two cores they overlap instead of adding up. "spawn": a fork
    # of a process with threads (a test's, a served flow's) can deadlock; the child imports DVC only
    # (components.dvc_child imports nothing at the top).
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        dvc_side = pool.submit(dvc_child.status_then_push, root, push)
        registration = _registered_release(params, root, paths)
        clean, pushed, push_error = dvc_side.result()
    if not clean or registration is None:
        return None  # the flow runs; its push step reports a push error with its retries
    if push_error is not None:
        raise push_error
    return RunResult(
        report=report,
        registration=registration,
        pushed=pushed,
        report_file=str(paths.report_file),
        data=read_json(paths.metrics_file("prepare")),
    )


def _registered_release(params: Params, root: Path, paths: ProjectPaths) -> Registration | None:
    """The MLflow version holding the release file's bytes (with its git tag when releases are tagged) and
    the champion alias; None when there is none or the store does not answer."""
    from components.registry import (  # MLflow: imported here, while the child runs DVC
        Registration,
        alias_holder,
        check_reachable,
        tracking_uri,
        version_holding,
    )

    uri = tracking_uri(root)
    try:
        check_reachable(uri)
    except EdgepipeError:
        return None  # the flow says so, with the fix
    version = version_holding(
        uri, params.model.name, file_digest(get_format(RELEASE_FORMAT).path(paths.export_dir))
    )
    if version is None or (params.release.git_tag and "git_tag" not in version.tags):
        return None
    alias = params.release.champion_alias
    holder = alias_holder(uri, params.model.name, alias)
    return Registration(
        run_id=version.run_id,
        experiment_id="",
        model_name=params.model.name,
        version=str(version.version),
        new_version=False,
        tracking_uri=uri,
        git_tag=version.tags.get("git_tag"),
        champion=f"{alias} is version {holder}" if holder else f"no version holds {alias}",
    )
