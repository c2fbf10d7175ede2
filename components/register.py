"""register: one MLflow run per pipeline run (params, per-artifact metrics, files, results table); the
int8 .tflite registered as a model version, only when the release gates passed. The registry queries
(store, versions, champion alias) are in components.registry, the release around it (git tag, champion)
in components.release.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import onnx
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import components.litert_pyfunc
import components.runtimes
from components.config import Params
from components.dataset import load_split, read_dataset_info
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, get_format
from components.paths import ProjectPaths
from components.registry import Registration, check_reachable, existing_version, tracking_uri
from components.results import ValidationReport
from components.tasks.detection.pyfunc import log_detector_models, log_fomo_models
from components.tracking import DESCRIPTION_TAG, fit_tag, flatten

log = logging.getLogger(__name__)


class _KnownPickleWarning(logging.Filter):
    """MLflow warns on every pyfunc logged from a Python object; pickling by value is the design here
    (the model loads without edgepipe installed), so the warning says nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


logging.getLogger("mlflow.pyfunc").addFilter(_KnownPickleWarning())

# What the logged pyfunc needs to load and run, at the versions installed here (requirements.lock's)
PYFUNC_REQUIREMENTS = [f"{name}=={package_version(name)}" for name in ("mlflow", "numpy", "ai-edge-litert")]


def validation_metrics(report: ValidationReport) -> dict[str, float]:
    """The validation matrix and artifact sizes as MLflow metrics: `<format>.<runtime>.<measure>`."""
    metrics = {}
    for name, artifact in report.artifacts.items():
        for measure in ("bytes", "gzip_bytes", "bytes_per_parameter"):
            metrics[f"{name}.{measure}"] = getattr(artifact, measure)
    for cell in report.cells:
        metrics[f"{cell.key}.loaded"] = float(cell.loaded)
        metrics[f"{cell.key}.passed"] = float(cell.status == "pass")
        for measure in (
            "accuracy",
            "map_50_95",
            "agreement",
            "max_abs_diff",
            "logit_error",
            "runtime_agreement",
            "arena_bytes",
        ):
            if (value := getattr(cell, measure)) is not None:
                metrics[f"{cell.key}.{measure}"] = value
    for model, classes in report.per_class.items():
        for name, scores in classes.items():
            safe = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)  # MLflow's allowed metric-name characters
            for measure in ("precision", "recall", "f1", "ap_50"):  # ap_50: a detector's
                if measure in scores:
                    metrics[f"per_class.{model}.{safe}.{measure}"] = scores[measure]
    return metrics


def log_run_details(description: str, prepared_dir: Path, report: ValidationReport) -> None:
    """The results as the run's description (the page's first lines), the confusion matrices as a file."""

    mlflow.set_tag(DESCRIPTION_TAG, fit_tag(description))
    if report.confusion:
        classes = read_dataset_info(prepared_dir).classes  # rows and columns, in label order
        if report.task in ("detection", "fomo"):
            classes = [*classes, "background"]  # misses and false alarms
        mlflow.log_dict({"classes": classes, **report.confusion}, "confusion_matrices.json")


def log_first_artifact(tags: dict[str, str]) -> None:
    """The run's first file (`edgepipe_release.json`: the release file's sha256, DVC md5 and the run's
    identity), sent without MLflow's retries: those wait minutes on a store that answers HTTP 500 to every
    file. An artifact store that refuses files (a read-only or full folder behind `mlflow server`, a bucket
    without write access) stops the registration here, before any model version exists; Prefect's retries
    of the register task cover a store that was only briefly away."""
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        mlflow.log_dict(tags, "edgepipe_release.json")
    except Exception as exc:  # MlflowException, requests' errors, OSError for a local folder
        raise EdgepipeError(
            f"MLflow's artifact store did not accept a file ({type(exc).__name__}: {str(exc)[:400]}). Check "
            "that the MLflow server can write its artifact folder (`mlflow server --artifacts-destination`) "
            "and that it has free space. Nothing was registered."
        ) from None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


@dataclass(frozen=True)
class RunRecord:
    """What registration logs to the pipeline's MLflow run, besides the model files."""

    report: ValidationReport  # matrix, sizes, gates
    metrics: dict[str, float]  # more metrics: sparsity, float val accuracy, MCU sizes
    files: tuple[Path, ...]  # logged as run artifacts, a folder as a folder
    run_tags: dict[str, str]
    version_tags: dict[str, str]  # on a new model version; "sha256" is the release file's
    run_name: str | None = None  # names a new run (the store did not answer when the pipeline started)
    description: str | None = None
    run_id: str | None = None  # the pipeline's run (components.tracking), None: a new run


def register(params: Params, paths: ProjectPaths, record: RunRecord) -> Registration:
    """Log the validation matrix, sizes and files to the pipeline's MLflow run (`record.run_id`, or a new run
    named `record.run_name` when the store was not reachable when the pipeline started) and, when the gates
    passed, register the release file as a model version."""
    uri = tracking_uri(paths.root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(params.mlflow.experiment)
    x_example, _ = load_split(paths.prepared_dir, "test")
    x_example = x_example[:4]
    report, run_id = record.report, record.run_id
    # Resuming the run marks it FINISHED on exit (FAILED on an error); the flow sets its final status.
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else record.run_name) as run:
        mlflow.set_tags(record.run_tags)
        if run_id is None:  # a run opened by components.tracking has its params already
            mlflow.log_params(flatten("", params.model_dump(mode="json")))
        mlflow.log_metrics({"float_accuracy": report.float_accuracy, **record.metrics})
        mlflow.log_metrics(validation_metrics(report))
        mlflow.log_metric("gates_passed", float(report.passed))
        log_first_artifact(record.version_tags)
        if record.description is not None:
            log_run_details(record.description, paths.prepared_dir, report)
        if report.gates.failures:  # visible in the run list; the whole list is in validation.json
            mlflow.set_tag("gate_failures", "; ".join(report.gates.failures)[:4900])
        for path in record.files:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                mlflow.log_artifact(str(path), artifact_path=path.parent.name)

        log_model = {"detection": log_detector_models, "fomo": log_fomo_models}.get(
            report.task, log_classifier_models
        )
        tflite_info = log_model(paths.export_dir, x_example, record.version_tags["sha256"])
        version = None
        new_version = False
        if report.passed and params.mlflow.register_model:
            version = existing_version(uri, params.model.name, record.version_tags["sha256"])
            if version:
                log.info(
                    "%s version %s already holds these bytes; not registered again",
                    params.model.name,
                    version,
                )
            else:
                try:
                    # MLflow prints "Successfully registered model" to stderr; the log line below says it
                    with contextlib.redirect_stderr(io.StringIO()):
                        registered = mlflow.register_model(
                            tflite_info.model_uri, params.model.name, tags=record.version_tags
                        )
                except MlflowException as exc:
                    raise EdgepipeError(f"MLflow could not register {params.model.name}: {exc}") from None
                version = str(registered.version)
                new_version = True
                log.info("registered %s version %s", params.model.name, version)
            mlflow.set_tag("registered_version", version)
        else:
            log.warning("not registered: %s", "gates failed" if not report.passed else "disabled")
        return Registration(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            model_name=params.model.name if version else None,
            version=version,
            new_version=new_version,
            tracking_uri=uri,
        )


def log_classifier_models(export_dir: Path, x_example: np.ndarray, sha256: str):
    """The release .tflite as a pyfunc (class probabilities from LiteRT) and the float ONNX as an MLflow
    ONNX model; returns the pyfunc's model info (what a version registers)."""
    release = get_format(RELEASE_FORMAT)
    tflite = release.path(export_dir)
    logits = components.runtimes.litert(tflite)(x_example)
    # The pyfunc returns probabilities: same shape and dtype as the logits.
    signature = infer_signature(x_example, logits.astype(np.float32))
    # Pickle the wrapper by value so the logged model loads without edgepipe installed.
    cloudpickle.register_pickle_by_value(components.litert_pyfunc)
    cloudpickle.register_pickle_by_value(components.runtimes)
    try:
        tflite_info = mlflow.pyfunc.log_model(
            name=release.name,
            python_model=components.litert_pyfunc.LiteRTClassifier(),
            artifacts={"tflite": str(tflite)},
            signature=signature,
            input_example=x_example,
            pip_requirements=PYFUNC_REQUIREMENTS,
            metadata={"edgepipe_format": release.name, "sha256": sha256},
        )
    finally:
        cloudpickle.unregister_pickle_by_value(components.litert_pyfunc)
        cloudpickle.unregister_pickle_by_value(components.runtimes)
    onnx_format = get_format("onnx_float32")
    mlflow.onnx.log_model(
        onnx.load(str(onnx_format.path(export_dir))),
        name=onnx_format.name,
        signature=infer_signature(x_example[:1], logits[:1]),
        # named, not inferred: MLflow infers them by loading the model in a subprocess (~11 s here)
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
    )
    return tflite_info
