"""report (detection): reports/ with report.md (the validation matrix, sizes, gates, per-class AP@0.5), the
precision-recall curves of the float detector and the release file, a few test images with the ground
truth, the float detector's and the release file's boxes side by side, the release file's detection
confusion matrix (with `background` for misses and false alarms) and the training curves."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, read_json, write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.formats import RELEASE_FORMAT
from components.paths import ProjectPaths
from components.report import plot_confusion, save_plot, to_markdown
from components.results import ValidationReport
from components.tasks.detection.decode import Detections
from components.tasks.detection.plots import draw_side_by_side, plot_precision_recall
from components.tasks.detection.prepared import load_detection_split

log = logging.getLogger(__name__)

PLOTS = ("precision_recall.png", "float_vs_release.png", "confusion_release.png", "training_curves.png")
LABELS = {"float": "float Keras", "release": f"{RELEASE_FORMAT} (LiteRT)"}


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    report = ValidationReport.load(paths.validation_file)
    metrics = {name: read_json(paths.metrics_file(name)) for name in ("train", "prune", "qat", "mcu")}
    classes = read_dataset_info(paths.prepared_dir).classes
    test = load_detection_split(paths.prepared_dir, "test")
    with atomic_path(paths.reports_dir) as tmp:
        tmp.mkdir()
        plot_precision_recall(
            tmp / PLOTS[0],
            {LABELS[name]: curves for name, curves in report.precision_recall.items()},
            "Precision-recall at IoU 0.5 (test split)",
        )
        shown = len(next(iter(report.examples.values())))
        truth = [
            Detections(b, lab, np.ones(len(lab))) for b, lab in zip(test.boxes, test.labels, strict=True)
        ]
        columns = {"ground truth": truth[:shown]} | {
            LABELS[name]: [as_detections(d) for d in found] for name, found in report.examples.items()
        }
        draw_side_by_side(tmp / PLOTS[1], test.images[:shown], columns, classes)
        save_plot(tmp / PLOTS[2], lambda ax: plot_confusion(ax, paths.release_predictions))
        save_plot(
            tmp / PLOTS[3], training_curves(paths.train_history, "val_map_50", "val mAP@0.5", "Detector")
        )
        (tmp / "report.md").write_text(report_markdown(report, metrics))
    log.info("wrote %s", paths.reports_dir)
    summary = {"files": sorted(["report.md", *PLOTS])}
    write_json(paths.metrics_file("report"), summary)
    return summary


def as_detections(found: dict) -> Detections:
    return Detections(
        np.asarray(found["boxes"], np.float32).reshape(-1, 4),
        np.asarray(found["classes"], np.int64),
        np.asarray(found["scores"], np.float32),
    )


def training_curves(history_csv: Path, score: str, score_label: str, title: str):
    """The drawer of a detector's training curves: train and val loss, and the validation score per epoch
    (`score`: its column in the history) on a second axis."""

    def draw(ax) -> None:
        with Path(history_csv).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        ax.plot(epochs, [float(r["loss"]) for r in rows], label="train loss")
        ax.plot(epochs, [float(r["val_loss"]) for r in rows], label="val loss")
        ax.set(xlabel="epoch", ylabel="loss", title=f"{title} training")
        twin = ax.twinx()
        twin.plot(epochs, [float(r[score]) for r in rows], color="black", label=score_label)
        twin.set(ylabel=score_label, ylim=(0, 1))
        ax.legend(loc="center right")
        twin.legend(loc="lower right")

    return draw


def report_markdown(report: ValidationReport, metrics: dict) -> str:
    mcu, train = metrics["mcu"], metrics["train"]
    ap_rows = [
        f"| {name} | "
        + " | ".join(f"{report.per_class[m][name]['ap_50']:.4f}" for m in report.per_class)
        + " |"
        for name in next(iter(report.per_class.values()))
    ]
    lines = [
        "# edgepipe report (detection)",
        "",
        to_markdown(report, sparsity=metrics["qat"]["sparsity"]),
        "## Per-class AP@0.5 (test split)",
        "",
        "| class | " + " | ".join(LABELS[m] for m in report.per_class) + " |",
        "|---|" + "---|" * len(report.per_class),
        *ap_rows,
        "",
        "## Microcontroller package (`models/mcu/`)",
        "",
        f"- `{RELEASE_FORMAT}`: flash {mcu['flash_bytes']} bytes, TFLite-Micro tensor arena "
        f"{mcu['arena_bytes']} bytes (measured by the TFLite-Micro interpreter), up to "
        f"{mcu['max_detections']} detections per image",
        f"- operators: {', '.join(mcu['ops'])}",
        "",
        "## Training",
        "",
        f"- float detector: best epoch {train['best_epoch']} of {train['epochs_run']}, validation "
        f"mAP@0.5 {train['val_map_50']:.4f} (mAP@0.5:0.95 {train['val_map_50_95']:.4f})",
        f"- pruning: sparsity {metrics['prune']['sparsity']:.2%}, validation mAP@0.5 "
        f"{metrics['prune']['val_map_50']:.4f}; after QAT {metrics['qat']['sparsity']:.2%}, "
        f"{metrics['qat']['val_map_50']:.4f}",
        "",
        "## Plots",
        "",
        "`float_vs_release.png`: the first test images, one row each: the ground truth, the float "
        "detector's and the release file's boxes scoring at least 0.3.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"
