"""report (FOMO): reports/ with report.md (the validation matrix, sizes, gates, per-class precision, recall
and F1 of the object centres), a few test images with the ground truth, the float model's and the
release file's centres side by side (a small square per centre), the release file's confusion matrix
(with `background`) and the training curves."""

from __future__ import annotations

import logging

import numpy as np

from components.atomic import atomic_path, read_json, write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.formats import RELEASE_FORMAT
from components.paths import ProjectPaths
from components.report import plot_confusion, save_plot, to_markdown
from components.results import ValidationReport
from components.tasks.detection.decode import Detections
from components.tasks.detection.plots import draw_side_by_side
from components.tasks.detection.prepared import load_detection_split
from components.tasks.detection.stages.report import training_curves

log = logging.getLogger(__name__)

PLOTS = ("float_vs_release.png", "confusion_release.png", "training_curves.png")
LABELS = {"float": "float Keras", "release": f"{RELEASE_FORMAT} (LiteRT)"}
MARK = 0.03  # half the side of the square drawn at a centre, as a fraction of the image


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    report = ValidationReport.load(paths.validation_file)
    metrics = {name: read_json(paths.metrics_file(name)) for name in ("train", "prune", "qat", "mcu")}
    classes = read_dataset_info(paths.prepared_dir).classes
    test = load_detection_split(paths.prepared_dir, "test")
    with atomic_path(paths.reports_dir) as tmp:
        tmp.mkdir()
        shown = len(next(iter(report.examples.values())))
        truth = [centres(b, lab) for b, lab in zip(test.boxes, test.labels, strict=True)][:shown]
        columns = {"ground truth (centres)": truth} | {
            LABELS[name]: [as_marks(image["centroids"]) for image in found]
            for name, found in report.examples.items()
        }
        draw_side_by_side(tmp / PLOTS[0], test.images[:shown], columns, classes)
        save_plot(tmp / PLOTS[1], lambda ax: plot_confusion(ax, paths.release_predictions))
        save_plot(tmp / PLOTS[2], training_curves(paths.train_history, "val_f1", "val centroid F1", "FOMO"))
        (tmp / "report.md").write_text(report_markdown(report, metrics))
    log.info("wrote %s", paths.reports_dir)
    summary = {"files": sorted(["report.md", *PLOTS])}
    write_json(paths.metrics_file("report"), summary)
    return summary


def square(cx: float, cy: float) -> list[float]:
    return [cy - MARK, cx - MARK, cy + MARK, cx + MARK]


def centres(boxes: np.ndarray, labels: np.ndarray) -> Detections:
    marks = [square((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in boxes]
    return Detections(np.asarray(marks, np.float32).reshape(-1, 4), labels, np.ones(len(labels)))


def as_marks(centroids: list) -> Detections:
    return Detections(
        np.asarray([square(cx, cy) for cx, cy, _, _ in centroids], np.float32).reshape(-1, 4),
        np.asarray([c for _, _, c, _ in centroids], np.int64),
        np.asarray([s for _, _, _, s in centroids], np.float32),
    )


def report_markdown(report: ValidationReport, metrics: dict) -> str:
    mcu, train = metrics["mcu"], metrics["train"]
    models = list(report.per_class)
    rows = [
        f"| {name} | "
        + " | ".join(
            "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**report.per_class[m][name]) for m in models
        )
        + " |"
        for name in report.per_class[models[0]]
    ]
    lines = [
        "# edgepipe report (detection, FOMO head)",
        "",
        to_markdown(report, sparsity=metrics["qat"]["sparsity"]),
        "## Per-class precision / recall / F1 of the object centres (test split)",
        "",
        "| class | " + " | ".join(LABELS[m] for m in models) + " |",
        "|---|" + "---|" * len(models),
        *rows,
        "",
        "## Microcontroller package (`models/mcu/`)",
        "",
        f"- `{RELEASE_FORMAT}`: flash {mcu['flash_bytes']} bytes, TFLite-Micro tensor arena "
        f"{mcu['arena_bytes']} bytes; heatmap {' x '.join(map(str, mcu['grid']))}; OpenMV `main.py` "
        "decodes it with the `ml` module's FOMO post-processing",
        "",
        "## Training",
        "",
        f"- float model: best epoch {train['best_epoch']} of {train['epochs_run']}, validation centroid F1 "
        f"{train['val_f1']:.4f} (precision {train['val_precision']:.4f}, recall {train['val_recall']:.4f})",
        f"- pruning: sparsity {metrics['prune']['sparsity']:.2%}, val F1 {metrics['prune']['val_f1']:.4f}; "
        f"after QAT {metrics['qat']['sparsity']:.2%}, {metrics['qat']['val_f1']:.4f}",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"
