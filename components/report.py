"""report: the human-readable results. The validation matrix and artifact table as Markdown (also printed
by the CLI and published as a Prefect artifact), and `reports/` with report.md and its PNG plots: accuracy
vs size, the training curves and the confusion matrix of the release int8 model."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, read_json, write_json
from components.config import Params
from components.formats import FORMATS, RELEASE_FORMAT
from components.paths import ProjectPaths
from components.results import ValidationReport

log = logging.getLogger(__name__)

MATRIX_COLUMNS = (
    "format",
    "runtime",
    "required",
    "top-1 accuracy",
    "agreement vs source",
    "max Δ logit",
    "arena bytes",
    "status",
)
# a detector's cells: COCO mAP instead of top-1, no logits to compare (agreement compares the boxes)
DETECTION_COLUMNS = (
    "format",
    "runtime",
    "required",
    "mAP@0.5",
    "mAP@0.5:0.95",
    "agreement vs source",
    "arena bytes",
    "status",
)
# a FOMO detector's cells: object centres found (F1) and the heatmap's distance from its Keras model
FOMO_COLUMNS = (
    "format",
    "runtime",
    "required",
    "centroid F1",
    "agreement vs source",
    "max Δ heatmap",
    "arena bytes",
    "status",
)
REGISTRY_ORDER = {fmt.name: i for i, fmt in enumerate(FORMATS)}


def matrix_columns(report: ValidationReport) -> tuple[str, ...]:
    return {"detection": DETECTION_COLUMNS, "fomo": FOMO_COLUMNS}.get(report.task, MATRIX_COLUMNS)


ARTIFACT_COLUMNS = (
    "format",
    "file",
    "precision",
    "made from",
    "bytes",
    "gzip bytes",
    "bytes/param",
    "values/channel",
)


def matrix_rows(report: ValidationReport) -> list[dict]:
    rows = []
    for cell in report.cells:
        loaded = cell.loaded
        status = cell.status
        max_diff = f"{cell.max_abs_diff:.2g}" if loaded and cell.max_abs_diff is not None else "-"
        if not loaded:
            status += f": {short_error(cell.error)}"
        rows.append(
            {
                "format": cell.format,
                "runtime": cell.runtime + (f" ({cell.layout})" if cell.layout != "NHWC" else ""),
                "required": "yes" if cell.required else "no",
                "top-1 accuracy": f"{cell.accuracy:.4f}" if loaded else "-",
                "mAP@0.5": f"{cell.accuracy:.4f}" if loaded else "-",
                "centroid F1": f"{cell.accuracy:.4f}" if loaded else "-",
                "mAP@0.5:0.95": f"{cell.map_50_95:.4f}" if loaded and cell.map_50_95 is not None else "-",
                "agreement vs source": f"{cell.agreement:.4f}" if loaded else "-",
                "max Δ logit": max_diff,
                "max Δ heatmap": max_diff,
                "arena bytes": "" if cell.arena_bytes is None else str(cell.arena_bytes),
                "status": status,
            }
        )
    return rows


def short_error(error: str, limit: int = 120) -> str:
    """The gist of a runtime's error for a table cell: OpenCV's `(-213:Not implemented) what` part, without
    its source path; the whole text stays in validation.json and the report's failure list."""
    match = re.search(r"\((-?\d+:[^)]*)\)\s*(.+)", error)
    gist = f"{match.group(2)} (OpenCV {match.group(1)})" if match else error
    return gist if len(gist) <= limit else gist[: limit - 1] + "…"


def failure_lines(report: ValidationReport) -> list[str]:
    """Every cell a runtime could not run, with the runtime's own words and the registry's note."""
    lines = []
    for cell in report.cells:
        if not cell.loaded:
            note = f" Known: {cell.note}." if cell.note else ""
            lines.append(f"- `{cell.format}` on `{cell.runtime}`: {cell.error}{note}")
    return lines


def artifact_rows(report: ValidationReport) -> list[dict]:
    return [
        {
            "format": name,
            "file": a.file,
            "precision": a.precision,
            "made from": a.source,
            "bytes": a.bytes,
            "gzip bytes": a.gzip_bytes,
            "bytes/param": f"{a.bytes_per_parameter:.2f}",
            # clustering's mark on an int8 .tflite: at most prune.clusters distinct weights per channel
            "values/channel": "-" if a.values_per_channel is None else a.values_per_channel,
        }
        for name, a in sorted(report.artifacts.items(), key=lambda item: REGISTRY_ORDER[item[0]])
    ]


def table(columns: tuple[str, ...], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row[c]).replace("|", "/") for c in columns) + " |" for row in rows]


def to_markdown(report: ValidationReport, sparsity: float | None = None) -> str:
    """The validation matrix, the artifact sizes and the gate verdict."""
    lines = [
        f"Float Keras model: {report.score_name} {report.float_accuracy:.4f}"
        + (f" (mAP@0.5:0.95 {report.float_map_50_95:.4f})" if report.float_map_50_95 is not None else "")
        + f" on {report.test_images} test images, {report.parameters} parameters"
        + (f"; weight sparsity after pruning + QAT {sparsity:.2%}" if sparsity is not None else ""),
        "",
        "Validation matrix (every artifact in every runtime its format names; `edgepipe formats`):",
        "",
        *table(matrix_columns(report), matrix_rows(report)),
        "",
        "Artifacts:",
        "",
        *table(ARTIFACT_COLUMNS, artifact_rows(report)),
        "",
        "Release gates: " + ("passed" if report.passed else "FAILED"),
    ]
    lines += [f"- {failure}" for failure in report.gates.failures]
    failures = failure_lines(report)
    if failures:
        lines += ["", "Runtime errors, in full:", "", *failures]
    return "\n".join(lines) + "\n"


def write_report(
    report: ValidationReport, stage_metrics: dict, history_csv: Path, predictions_csv: Path, reports_dir: Path
) -> dict:
    """Write reports/ (report.md and its plots) in one atomic swap; returns what it wrote."""
    plots = {
        "accuracy_vs_size.png": lambda ax: plot_accuracy_vs_size(ax, report),
        "training_curves.png": lambda ax: plot_history(ax, history_csv),
        "confusion_release.png": lambda ax: plot_confusion(ax, predictions_csv),
    }
    with atomic_path(reports_dir) as tmp:
        tmp.mkdir()
        for name, draw in plots.items():
            save_plot(tmp / name, draw)
        (tmp / "report.md").write_text(report_markdown(report, stage_metrics, plots))
    log.info("wrote %s", reports_dir)
    return {"files": sorted(["report.md", *plots])}


def save_plot(path: Path, draw) -> None:
    """One 640x480 PNG drawn by `draw(ax)`, without a version stamp (the same bytes each run)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def report_markdown(report: ValidationReport, stage_metrics: dict, plots: dict) -> str:
    mcu, train = stage_metrics["mcu"], stage_metrics["train"]
    lines = [
        "# edgepipe report",
        "",
        to_markdown(report, sparsity=stage_metrics["qat"]["sparsity"]),
        "## Microcontroller package (`models/mcu/`)",
        "",
        f"- `{RELEASE_FORMAT}`: flash {mcu['flash_bytes']} bytes, TFLite-Micro tensor arena "
        f"{mcu['arena_bytes']} bytes (measured by the TFLite-Micro interpreter)",
        f"- operators: {', '.join(mcu['ops'])}",
        "",
        "## Training",
        "",
        f"- float model: best epoch {train['best_epoch']} of {train['epochs_run']}, "
        f"validation accuracy {train['val_accuracy']:.4f}",
        f"- pruning: sparsity {stage_metrics['prune']['sparsity']:.2%}; "
        f"after QAT {stage_metrics['qat']['sparsity']:.2%}",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_size(ax, report: ValidationReport) -> None:
    """One point per artifact: its size and its accuracy in the first required runtime."""
    for name, artifact in report.artifacts.items():
        cell = next(c for c in report.cells if c.format == name and c.required)
        if not cell.loaded:
            continue
        ax.scatter(artifact.bytes / 1024, cell.accuracy)
        ax.annotate(name, (artifact.bytes / 1024, cell.accuracy), fontsize=8)
    ax.axhline(report.float_accuracy, linestyle="--", linewidth=1, label="float Keras model")
    ax.set(xlabel="file size (KiB)", ylabel="top-1 accuracy (test split)", title="Accuracy vs size")
    ax.legend(loc="lower right")


def plot_history(ax, history_csv: Path) -> None:
    rows = _read_csv(history_csv)
    epochs = [int(r["epoch"]) for r in rows]
    for column in ("accuracy", "val_accuracy"):
        ax.plot(epochs, [float(r[column]) for r in rows], marker=".", label=column)
    ax.set(xlabel="epoch", ylabel="accuracy", title="Float model training")
    ax.legend()


def plot_confusion(ax, predictions_csv: Path) -> None:
    rows = _read_csv(predictions_csv)
    labels = sorted({r["actual"] for r in rows} | {r["predicted"] for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for r in rows:
        matrix[index[r["actual"]], index[r["predicted"]]] += 1
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="actual", title=f"{RELEASE_FORMAT} (LiteRT) on the test split")


def _read_csv(path: Path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_markdown(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `report` stage: report.md and its plots from the validation report and the stage metrics."""
    summary = write_report(
        ValidationReport.load(paths.validation_file),
        {name: read_json(paths.metrics_file(name)) for name in ("train", "prune", "qat", "mcu")},
        paths.train_history,
        paths.release_predictions,
        paths.reports_dir,
    )
    write_json(paths.metrics_file("report"), summary)
    return summary
