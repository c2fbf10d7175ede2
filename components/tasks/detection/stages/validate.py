"""validate (detection): the validation matrix for boxes. Every artifact of the detection rows of the format
registry runs in every runtime target its row names, on the test split, scored with COCO mAP@0.5 and
mAP@0.5:0.95 (pycocotools) and compared with the Keras detector it was made from (agreement: the share
of that model's confident detections this runtime also finds, IoU >= 0.5 and the same class) and with
the first runtime of its row on the same file; then the release gates, with mAP@0.5 as the score whose
drop `gates.max_accuracy_drop` bounds.

The cells are the classifier's (components.results.Cell) with `accuracy` holding mAP@0.5, so the gates,
the CLI, MLflow and the release read both tasks alike.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from components.atomic import atomic_path
from components.config import Params
from components.dataset import read_dataset_info
from components.formats import RELEASE_FORMAT, ExportFormat, RuntimeTarget, formats_for
from components.gates import verdict
from components.model import load_model
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.results import Cell, ValidationReport
from components.targets import get_profile
from components.tasks.detection.anchors import iou
from components.tasks.detection.decode import Detections, NmsSettings
from components.tasks.detection.metrics import GroundTruth, agreement, coco_map
from components.tasks.detection.model import anchors_for
from components.tasks.detection.prepared import ground_truth, load_detection_split, nms_settings
from components.tasks.detection.runtimes import open_detection_runner
from components.tasks.detection.train import predict_detections
from components.validate import describe_artifact, measure_cell, row_cells

SCORE = "mAP@0.5"
CONFIDENT = 0.3  # the score above which a detection counts for agreement and the confusion matrix
BACKGROUND = "background"
EXAMPLES = 6  # test images drawn in the report


def as_dict(found: Detections) -> dict[str, list]:
    keep = found.scores >= CONFIDENT
    return {
        "boxes": found.boxes[keep].round(4).tolist(),
        "classes": found.classes[keep].tolist(),
        "scores": found.scores[keep].round(4).tolist(),
    }


def run_stage(params: Params, paths: ProjectPaths, map_fn: Callable = map) -> ValidationReport:
    info = read_dataset_info(paths.prepared_dir)
    test = load_detection_split(paths.prepared_dir, "test")
    x_test, truth, classes = info.normalize(test.images), ground_truth(test), info.classes
    anchors, nms = anchors_for(info.input_shape), nms_settings(params.detection.nms)
    keras_float = load_model(paths.float_model)
    sources = {
        "float": keras_float,
        "pruned": load_model(paths.pruned_model),
        "qat": load_qat_model(paths.pruned_model, paths.qat_weights),
    }
    source_found = {name: predict_detections(m, x_test, anchors, nms) for name, m in sources.items()}
    float_scores = coco_map(truth, source_found["float"], classes)
    formats = formats_for("detection")
    parameters = int(keras_float.count_params())
    artifacts = {fmt.name: describe_artifact(fmt, paths.export_dir, parameters) for fmt in formats}
    run_format = partial(
        validate_format,
        export_dir=paths.export_dir,
        test=ScoringSet(x_test, truth, classes, anchors, nms, source_found),
    )
    cells, release_found, release_scores = [], None, None
    for fmt, (format_cells, found) in zip(formats, map_fn(run_format, formats), strict=True):
        cells += format_cells
        if fmt.name == RELEASE_FORMAT and found is not None:
            release_found, release_scores = found, coco_map(truth, found, classes)
    float_map = float_scores["map_50"]
    per_model = {"float": (source_found["float"], float_scores)}
    if release_found is not None:
        per_model["release"] = (release_found, release_scores)
    report = ValidationReport(
        task="detection",
        float_accuracy=float_map,
        float_map_50_95=float_scores["map_50_95"],
        test_images=len(test.images),
        parameters=parameters,
        artifacts=artifacts,
        cells=cells,
        gates=verdict(
            params.gates, float_map, artifacts, cells, SCORE, deployed=get_profile(params.target).deploys
        ),
        per_class={
            name: {c: {"ap_50": ap} for c, ap in scores["ap_50"].items()}
            for name, (_, scores) in per_model.items()
        },
        confusion={name: confusion(truth, found, classes) for name, (found, _) in per_model.items()},
        precision_recall={name: scores["pr_50"] for name, (_, scores) in per_model.items()},
        examples={name: [as_dict(d) for d in found[:EXAMPLES]] for name, (found, _) in per_model.items()},
    )
    write_predictions(paths.release_predictions, truth, release_found, classes)
    report.save(paths.validation_file)
    return report


@dataclass(frozen=True)
class ScoringSet:
    """What every cell is scored on: the normalised test images, their ground truth, and the detections of
    the Keras models the files were made from."""

    x: np.ndarray
    truth: list[GroundTruth]
    classes: list[str]
    anchors: np.ndarray
    nms: NmsSettings
    source_found: dict[str, list[Detections]]


def validate_format(
    fmt: ExportFormat, export_dir: Path, test: ScoringSet
) -> tuple[list[Cell], list[Detections] | None]:
    """Every runtime target of one format; returns its cells and the LiteRT detections."""
    return row_cells(
        fmt,
        lambda target: run_cell(fmt, target, export_dir, test),
        lambda reference, found: agreement(reference, found, CONFIDENT),
    )


def run_cell(
    fmt: ExportFormat, target: RuntimeTarget, export_dir: Path, test: ScoringSet
) -> tuple[Cell, list[Detections] | None]:
    def run(path: Path) -> list[Detections]:
        return open_detection_runner(target, path, test.anchors, test.nms)(test.x)

    cell, found = measure_cell(fmt, target, export_dir, run)
    if found is None:
        return cell, None
    scores = coco_map(test.truth, found, test.classes)
    cell.loaded = True
    cell.accuracy, cell.map_50_95 = scores["map_50"], scores["map_50_95"]
    cell.agreement = agreement(test.source_found[fmt.source], found, CONFIDENT)
    cell.float_agreement = agreement(test.source_found["float"], found, CONFIDENT)
    return cell, found


def confusion(truth: list[GroundTruth], found: list[Detections], classes: list[str]) -> list[list[int]]:
    """Rows actual, columns predicted, over the classes and `background` (last): each object is matched to
    the confident detection that overlaps it most (IoU >= 0.5); an unmatched object is a miss (predicted
    background), an unmatched confident detection a false alarm (actual background)."""
    pairs = matched_pairs(truth, found, len(classes))
    size = len(classes) + 1
    matrix = np.zeros((size, size), dtype=int)
    for actual, predicted in pairs:
        matrix[actual, predicted] += 1
    return matrix.tolist()


def matched_pairs(truth: list[GroundTruth], found: list[Detections], background: int) -> list[tuple]:
    pairs = []
    for gt, det in zip(truth, found, strict=True):
        keep = det.scores >= CONFIDENT
        boxes, labels = det.boxes[keep], det.classes[keep]
        free = np.ones(len(boxes), dtype=bool)
        overlaps = iou(gt.boxes, boxes) if len(gt.boxes) and len(boxes) else np.zeros((len(gt.boxes), 0))
        for i, label in enumerate(gt.labels):
            candidates = np.where(free & (overlaps[i] >= 0.5))[0] if overlaps.shape[1] else []
            if len(candidates):
                best = candidates[np.argmax(overlaps[i][candidates])]
                free[best] = False
                pairs.append((int(label), int(labels[best])))
            else:
                pairs.append((int(label), background))
        pairs += [(background, int(label)) for label in labels[free]]
    return pairs


def write_predictions(
    path: Path, truth: list[GroundTruth], found: list[Detections] | None, classes: list[str]
) -> None:
    """actual,predicted per matched object, miss and false alarm of the release file in LiteRT: DVC's
    confusion-matrix plot, as for the classifier."""
    names = [*classes, BACKGROUND]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        if found is not None:
            pairs = matched_pairs(truth, found, len(classes))
            writer.writerows((names[a], names[p]) for a, p in pairs)
