"""validate: the validation matrix. Every artifact of the format registry runs in every runtime target
its row names, on the test split, against the float Keras model; then the release gates.

A cell records whether the runtime loaded the file (with the runtime's own error text when not), top-1
accuracy, top-1 agreement with and the largest logit difference from the Keras model the
file was made from, and top-1 agreement with the first runtime of its row on the same file. A required
cell that loads but disagrees fails its gate like one that cannot load; a cell the registry marks as
not required (known to fail on some or all models) is reported and never gated.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from components.atomic import atomic_path
from components.config import GatesConfig, Params
from components.dataset import load_split, read_dataset_info
from components.formats import FORMATS, RELEASE_FORMAT, ExportFormat, RuntimeTarget
from components.gates import verdict
from components.hashing import file_digest
from components.model import load_model
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.results import Artifact, Cell, ValidationReport
from components.runtimes import open_runner, tflm_arena_bytes
from components.targets import get_profile
from components.weight_stats import values_per_channel


def validate(
    gates: GatesConfig,
    prepared_dir: Path,
    float_model: Path,
    pruned_model: Path,
    qat_weights: Path,
    export_dir: Path,
    report_out: Path,
    predictions_out: Path,
    map_fn: Callable = map,
    clustered: bool = False,
    deployed: tuple[tuple[str, str], ...] = (),
) -> ValidationReport:
    """`map_fn(fn, formats)` runs the per-format work: the built-in `map` in order, or a Prefect task
    runner's fan-out (flows.pipeline); the results are the same either way, in registry order.
    `deployed`: the target device's (format, runtime) cells, required whatever the registry says."""
    x_test, y_test = load_split(prepared_dir, "test")
    keras_float = load_model(float_model)
    source_logits = {
        "float": keras_float.predict(x_test, verbose=0),
        "pruned": load_model(pruned_model).predict(x_test, verbose=0),
        "qat": load_qat_model(pruned_model, qat_weights, clustered).predict(x_test, verbose=0),
    }
    float_pred = source_logits["float"].argmax(axis=1)
    float_accuracy = float(np.mean(float_pred == y_test))
    parameters = int(keras_float.count_params())

    artifacts = {fmt.name: describe_artifact(fmt, export_dir, parameters) for fmt in FORMATS}
    run_format = partial(
        validate_format,
        export_dir=export_dir,
        x_test=x_test,
        y_test=y_test,
        float_pred=float_pred,
        source_logits=source_logits,
    )
    cells, release_pred = [], None
    for fmt, (format_cells, pred) in zip(FORMATS, map_fn(run_format, FORMATS), strict=True):
        cells += format_cells
        if fmt.name == RELEASE_FORMAT:
            release_pred = pred
    classes = read_dataset_info(prepared_dir).classes
    per_model = {"float": float_pred} | ({"release": release_pred} if release_pred is not None else {})
    report = ValidationReport(
        float_accuracy=float_accuracy,
        test_images=len(y_test),
        parameters=parameters,
        artifacts=artifacts,
        cells=cells,
        gates=verdict(gates, float_accuracy, artifacts, cells, deployed=deployed),
        # the float Keras model and the release file in LiteRT, class by class
        per_class={name: per_class_scores(y_test, pred, classes) for name, pred in per_model.items()},
        confusion={
            name: confusion_matrix(y_test, pred, labels=range(len(classes))).tolist()
            for name, pred in per_model.items()
        },
    )
    write_predictions(predictions_out, y_test, release_pred, classes)
    report.save(report_out)
    return report


def validate_format(
    fmt: ExportFormat,
    export_dir: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    float_pred: np.ndarray,
    source_logits: dict[str, np.ndarray],
) -> tuple[list[Cell], np.ndarray | None]:
    """Every runtime target of one format; returns its cells and the LiteRT predictions (for the release
    format's prediction file)."""
    return row_cells(
        fmt,
        lambda target: run_cell(fmt, target, export_dir, x_test, y_test, float_pred, source_logits),
        lambda reference, pred: float(np.mean(pred == reference)),
    )


def row_cells(
    fmt: ExportFormat,
    run_cell: Callable[[RuntimeTarget], tuple[Cell, object | None]],
    agreement: Callable[[object, object], float],
) -> tuple[list[Cell], object | None]:
    """Every runtime target of one format's row: `run_cell(target)` measures one (its output None when the
    runtime could not run the file); each cell after the first runtime that ran the file gets
    `agreement(that runtime's output, its own)`. Returns the cells and the LiteRT output."""
    cells, reference, litert_output = [], None, None
    for target in fmt.runtimes:  # the first runtime that ran the file is the one the others must match
        cell, output = run_cell(target)
        if output is not None and reference is None:
            reference = (target.name, output)
        elif output is not None:
            cell.reference_runtime = reference[0]
            cell.runtime_agreement = agreement(reference[1], output)
        if target.runtime == "litert" and output is not None:
            litert_output = output
        cells.append(cell)
    return cells, litert_output


def describe_artifact(fmt: ExportFormat, export_dir: Path, parameters: int) -> Artifact:
    path = fmt.path(export_dir)
    data = path.read_bytes()
    return Artifact(
        file=path.name,
        container=fmt.container,
        precision=fmt.precision,
        source=fmt.source,
        bytes=len(data),
        # What a download or an app package costs: pruned zeros compress, dense weights do not.
        gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)),
        bytes_per_parameter=round(len(data) / parameters, 4),
        sha256=file_digest(path),
        values_per_channel=values_per_channel(path)
        if (fmt.container, fmt.precision) == ("tflite", "int8")
        else None,
    )


def run_cell(
    fmt: ExportFormat,
    target: RuntimeTarget,
    export_dir: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    float_pred: np.ndarray,
    source_logits: dict[str, np.ndarray],
) -> tuple[Cell, np.ndarray | None]:
    cell, logits = measure_cell(fmt, target, export_dir, lambda path: open_runner(target, path)(x_test))
    if logits is None:
        return cell, None
    pred = logits.argmax(axis=1)
    reference = source_logits[fmt.source]
    max_abs_diff = float(np.abs(logits - reference).max())
    cell.loaded = True
    cell.accuracy = float(np.mean(pred == y_test))
    # top-1 agreement with the Keras model the file was made from: does this runtime compute what that
    # model computes? What pruning and quantization cost is the accuracy drop vs the float model.
    cell.agreement = float(np.mean(pred == reference.argmax(axis=1)))
    cell.float_agreement = float(np.mean(pred == float_pred))
    cell.max_abs_diff = max_abs_diff
    cell.logit_error = max_abs_diff / max(float(np.ptp(reference)), 1e-12)
    return cell, pred


def measure_cell(
    fmt: ExportFormat, target: RuntimeTarget, export_dir: Path, run: Callable[[Path], object]
) -> tuple[Cell, object | None]:
    """One cell with what `run(path)` returned, or with the runtime's own error (and no output) when the
    runtime could not load or run the file; TFLite-Micro's arena measured."""
    path = fmt.path(export_dir)
    cell = Cell(
        format=fmt.name,
        runtime=target.name,
        layout=target.layout,
        required=target.required,
        file=path.name,
        precision=fmt.precision,
        note=target.note or None,
    )
    try:
        output = run(path)
        if target.runtime == "tflm":
            cell.arena_bytes = tflm_arena_bytes(path)
    except Exception as exc:  # the runtime's own words are the result; never a crash, never a skip
        cell.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:600]
        return cell, None
    return cell, output


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class on the test split."""
    scores = precision_recall_fscore_support(y_true, y_pred, labels=range(len(classes)), zero_division=0)
    return {
        name: dict(zip(("precision", "recall", "f1", "support"), map(float, values), strict=True))
        for name, *values in zip(classes, *scores, strict=True)
    }


def write_predictions(path: Path, y_true: np.ndarray, y_pred: np.ndarray | None, classes: list[str]) -> None:
    """actual,predicted per test image of the release model in LiteRT: DVC's confusion-matrix plot."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        if y_pred is not None:
            writer.writerows((classes[a], classes[p]) for a, p in zip(y_true, y_pred, strict=True))


def run_stage(params: Params, paths: ProjectPaths, map_fn: Callable = map) -> ValidationReport:
    """The `validate` stage: every artifact in every runtime that must run it, against the gates."""
    return validate(
        params.gates,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.qat_weights,
        paths.export_dir,
        paths.validation_file,
        paths.release_predictions,
        map_fn,
        clustered=params.prune.clusters is not None,
        deployed=get_profile(params.target).deploys,
    )
