"""validate (FOMO): every artifact of the FOMO rows of the format registry in every runtime its row names,
on the test split: the heatmap decoded to object centres (fomo.centroids_from_heatmap) and scored by
centroid F1 (a centre within detection.fomo.max_distance of an object's centre, same class), with the
agreement of those centres with the Keras model the file was made from and with the row's first runtime;
then the classifier's gates, on the F1 (`gates.max_accuracy_drop` bounds its drop)."""

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
from components.results import SCORE_NAMES, Cell, ValidationReport
from components.runtimes import open_runner
from components.targets import get_profile
from components.tasks.detection.fomo import (
    Centroid,
    centroid_agreement,
    centroid_metrics,
    centroid_pairs,
    centroids_from_heatmap,
)
from components.tasks.detection.prepared import load_detection_split
from components.validate import describe_artifact, measure_cell, row_cells

BACKGROUND = "background"
EXAMPLES = 6  # test images drawn in the report


@dataclass(frozen=True)
class ScoringSet:
    x: np.ndarray
    truth: list[tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    threshold: float
    max_distance: float
    source_heatmaps: dict[str, np.ndarray]
    source_found: dict[str, list[list[Centroid]]]
    heatmap_shape: tuple[int, int, int]  # grid height, width, classes + 1

    def heatmaps(self, outputs: np.ndarray) -> np.ndarray:
        """A runtime's outputs as heatmaps (OpenCV's come flat: shaped back to the heatmap's)."""
        return np.asarray(outputs, np.float32).reshape(len(self.x), *self.heatmap_shape)


def run_stage(params: Params, paths: ProjectPaths, map_fn: Callable = map) -> ValidationReport:
    info, fomo = read_dataset_info(paths.prepared_dir), params.detection.fomo
    test = load_detection_split(paths.prepared_dir, "test")
    x_test = info.normalize(test.images)
    truth = list(zip(test.boxes, test.labels, strict=True))
    keras_float = load_model(paths.float_model)
    sources = {
        "float": keras_float,
        "pruned": load_model(paths.pruned_model),
        "qat": load_qat_model(paths.pruned_model, paths.qat_weights),
    }
    heatmaps = {name: m.predict(x_test, verbose=0, batch_size=32) for name, m in sources.items()}
    found = {name: centroids_from_heatmap(h, fomo.threshold) for name, h in heatmaps.items()}
    scoring = ScoringSet(
        x_test,
        truth,
        info.classes,
        fomo.threshold,
        fomo.max_distance,
        heatmaps,
        found,
        keras_float.output_shape[1:],
    )
    float_scores = centroid_metrics(truth, found["float"], info.classes, fomo.max_distance)
    formats = formats_for("detection", "fomo")
    parameters = int(keras_float.count_params())
    artifacts = {fmt.name: describe_artifact(fmt, paths.export_dir, parameters) for fmt in formats}
    cells, release_found = [], None
    run_format = partial(validate_format, export_dir=paths.export_dir, scoring=scoring)
    for fmt, (format_cells, litert_found) in zip(formats, map_fn(run_format, formats), strict=True):
        cells += format_cells
        if fmt.name == RELEASE_FORMAT:
            release_found = litert_found
    per_model = {"float": found["float"]} | ({"release": release_found} if release_found else {})
    background = len(info.classes)
    report = ValidationReport(
        task="fomo",
        float_accuracy=float_scores["f1"],
        test_images=len(test.images),
        parameters=parameters,
        artifacts=artifacts,
        cells=cells,
        gates=verdict(
            params.gates,
            float_scores["f1"],
            artifacts,
            cells,
            SCORE_NAMES["fomo"],
            deployed=get_profile(params.target).deploys,
        ),
        per_class={"float": float_scores["per_class"]}
        | (
            {"release": centroid_metrics(truth, release_found, info.classes, fomo.max_distance)["per_class"]}
            if release_found
            else {}
        ),
        confusion={
            name: confusion(centroid_pairs(truth, f, background, fomo.max_distance), background + 1)
            for name, f in per_model.items()
        },
        examples={
            name: [
                {"centroids": [[round(x, 4), round(y, 4), c, round(s, 4)] for x, y, c, s in image]}
                for image in f[:EXAMPLES]
            ]
            for name, f in per_model.items()
        },
    )
    names = [*info.classes, BACKGROUND]
    with atomic_path(paths.release_predictions) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        if release_found is not None:
            pairs = centroid_pairs(truth, release_found, background, fomo.max_distance)
            writer.writerows((names[a], names[p]) for a, p in pairs)
    report.save(paths.validation_file)
    return report


def confusion(pairs: list[tuple[int, int]], size: int) -> list[list[int]]:
    matrix = np.zeros((size, size), dtype=int)
    for actual, predicted in pairs:
        matrix[actual, predicted] += 1
    return matrix.tolist()


def validate_format(
    fmt: ExportFormat, export_dir: Path, scoring: ScoringSet
) -> tuple[list[Cell], list[list[Centroid]] | None]:
    return row_cells(
        fmt,
        lambda target: run_cell(fmt, target, export_dir, scoring),
        lambda reference, found: centroid_agreement(reference, found, scoring.max_distance),
    )


def run_cell(
    fmt: ExportFormat, target: RuntimeTarget, export_dir: Path, scoring: ScoringSet
) -> tuple[Cell, list[list[Centroid]] | None]:
    cell, outputs = measure_cell(fmt, target, export_dir, lambda path: open_runner(target, path)(scoring.x))
    if outputs is None:
        return cell, None
    reference = scoring.source_found[fmt.source]
    heatmaps = scoring.heatmaps(outputs)
    found = centroids_from_heatmap(heatmaps, scoring.threshold)
    # the heatmap's own distance from its Keras model: a cell near the threshold flips with any rounding,
    # so centre agreement alone cannot tell a faithful float file from a wrong one
    cell.max_abs_diff = float(np.abs(heatmaps - scoring.source_heatmaps[fmt.source]).max())
    scores = centroid_metrics(scoring.truth, found, scoring.classes, scoring.max_distance)
    cell.loaded = True
    cell.accuracy = scores["f1"]
    cell.agreement = centroid_agreement(reference, found, scoring.max_distance)
    cell.float_agreement = centroid_agreement(scoring.source_found["float"], found, scoring.max_distance)
    return cell, found
