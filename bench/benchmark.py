"""Benchmark every exported artifact in every runtime its registry row names (components/formats.py).

    python bench/benchmark.py [--project-dir .] [--params params.yaml] [--no-mlflow] [--formats a,b]

Per cell (format x runtime target): batch-1 latency (median, p90), peak RSS, file and gzip size, top-1
test accuracy, and ratios against LiteRT float32. Each cell runs in its own spawned worker process that
stays alive for the whole benchmark, so one runtime's memory never counts against another's, and the
parent times the cells round-robin so drift and heat hit every cell alike. See bench/README.md.
"""

from __future__ import annotations

import gzip
import importlib
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import components  # noqa: F401  (environment defaults before any runtime or MLflow import)
from components.config import BenchmarkConfig, load_params
from components.dataset import load_split
from components.errors import EdgepipeError
from components.formats import ExportFormat, RuntimeTarget, formats_for
from components.paths import ProjectPaths
from components.runtimes import open_runner

REFERENCE = ("tflite_float32", "litert")  # the cell every ratio is relative to
# Imported by the worker before the model, so runtime code and model memory can be told apart.
RUNTIME_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "onnxruntime": "onnxruntime",
    "opencv_dnn": "cv2",
    "tflm": "tflite_micro.python.tflite_micro.runtime",
}
VERSIONED = ("ai-edge-litert", "onnxruntime", "tflite-micro")
LOAD_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 600
ACCURACY_CHUNK = 64  # test images sent per message: keeps the worker's peak free of the whole test set
MIB, KIB = 1024 * 1024, 1024

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
# Logs and CI have no terminal width; keep the 12-column table readable there.
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=180, emoji=False)
err_console = Console(stderr=True)


def rss_bytes(key: str) -> int:
    """This process's resident set in bytes from /proc/self/status: "VmRSS" now, "VmHWM" its peak.

    Not ru_maxrss: after the spawn's fork+exec it still holds the parent's peak (measured: 400 MB held by
    the parent showed up in every worker). Where /proc is missing, ru_maxrss is the best there is.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * KIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB  # bytes on macOS, KiB elsewhere


def one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # OpenCV's messages span lines


def open_cell_runner(target: RuntimeTarget, path: Path, threads: int, detector: dict | None):
    """The runner of one cell: the classifier's (logits), or with `detector` (anchors, nms) a detector's,
    which returns Detections through the shared decoding (components/tasks/detection/runtimes.py)."""
    if detector is None:
        return open_runner(target, path, threads)
    from components.tasks.detection.runtimes import open_detection_runner

    return open_detection_runner(target, path, detector["anchors"], detector["nms"], threads)


def worker(
    conn, target: RuntimeTarget, path: Path, threads: int, image: np.ndarray, detector: dict | None = None
) -> None:
    """One cell in its own process: load the model, then serve the parent's commands until "stop".

    Replies are ("ok", value) or ("error", message); after an error the worker exits. "predict" answers
    top-1 classes, or a detector's Detections per image.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    batch = image[None]
    baseline = rss_bytes("VmRSS")
    try:
        importlib.import_module(RUNTIME_MODULES[target.runtime])
        after_import = rss_bytes("VmRSS")
        run = open_cell_runner(target, path, threads, detector)
        run(batch)  # a model that loads but cannot run a single image is reported as not loaded
    except Exception as exc:
        conn.send(("error", one_line(exc)))
        return
    conn.send(("ok", None))
    while True:
        command, arg = conn.recv()
        if command == "stop":
            return
        try:
            if command == "time":
                durations = []
                for _ in range(arg):
                    start = time.perf_counter_ns()
                    run(batch)
                    durations.append(time.perf_counter_ns() - start)
                reply = durations
            elif command == "memory":
                peak = rss_bytes("VmHWM")
                reply = {"baseline": baseline, "runtime_import": after_import - baseline, "peak": peak}
            else:  # "predict"
                reply = run(arg) if detector else run(arg).argmax(axis=1)
        except Exception as exc:
            conn.send(("error", f"during {command}: {one_line(exc)}"))
            return
        conn.send(("ok", reply))


class Cell:
    """The parent's handle on one worker, and what has been measured so far."""

    def __init__(self, fmt: ExportFormat, target: RuntimeTarget, process, conn) -> None:
        self.fmt, self.target, self.process, self.conn = fmt, target, process, conn
        self.error: str | None = None
        self.times_ns: list[int] = []
        self.memory: dict | None = None
        self.accuracy: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def ask(self, command: str, arg=None, timeout: float = COMMAND_TIMEOUT_S):
        """Send a command and wait for the reply; a failure or a dead worker marks the cell as failed."""
        try:
            if command != "load":
                self.conn.send((command, arg))
            if not self.conn.poll(timeout):
                raise TimeoutError(f"no reply to {command} within {timeout} s")
            status, value = self.conn.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            self.process.join(1)
            status, value = (
                "error",
                f"worker died during {command} (exit code {self.process.exitcode}): {exc}",
            )
        if status == "error":
            self.error = value
            return None
        return value

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop", None))
            except OSError:
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def select_formats(names: str | None, export_dir: Path, task: str = "classification") -> list[ExportFormat]:
    """The formats to benchmark (all, or those named), each of which must have been exported."""
    chosen = list(formats_for(task))
    if names:
        known = {fmt.name: fmt for fmt in chosen}
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise EdgepipeError(f"--formats: unknown format(s) {unknown}; known: {', '.join(known)}")
        chosen = [known[name] for name in wanted]
    missing = [fmt for fmt in chosen if not fmt.path(export_dir).is_file()]
    if missing:
        files = ", ".join(f"{fmt.path(export_dir)} ({fmt.name})" for fmt in missing)
        raise EdgepipeError(
            f"not exported yet: {files}. Run `edgepipe run` first, or leave them out with --formats."
        )
    return chosen


def measure(cells: list[Cell], config: BenchmarkConfig, x: np.ndarray, score) -> None:
    """Warm up, time the cells interleaved round by round, then read memory and accuracy (`score` of the
    predictions of the whole test split)."""
    with Progress(console=err_console, transient=False) as progress:
        loading = progress.add_task("loading models", total=len(cells))
        for cell in cells:  # workers load in parallel; loading is not timed
            cell.ask("load", timeout=LOAD_TIMEOUT_S)
            progress.advance(loading)
        warming = progress.add_task("warm-up", total=len(cells))
        for cell in cells:
            if cell.ok and config.warmup:
                cell.ask("time", config.warmup)
            progress.advance(warming)
        timing = progress.add_task("interleaved rounds", total=config.rounds * len(cells))
        for _ in range(config.rounds):
            for cell in cells:  # every cell once per round: slow drift spreads evenly over all of them
                if cell.ok:
                    cell.times_ns += cell.ask("time", config.runs_per_round) or []
                progress.advance(timing)
        # Memory before the accuracy pass: the peak of load + inference, as on the device.
        for cell in cells:
            if cell.ok:
                cell.memory = cell.ask("memory")
        scoring = progress.add_task("test accuracy", total=len(cells))
        for cell in cells:
            predictions = []
            for start in range(0, len(x), ACCURACY_CHUNK):
                if cell.ok:
                    predictions += list(cell.ask("predict", x[start : start + ACCURACY_CHUNK]))
            if cell.ok:  # still ok: every chunk answered
                cell.accuracy = score(predictions)
            progress.advance(scoring)


def summarise(cells: list[Cell], export_dir: Path) -> list[dict]:
    """One JSON-ready row per cell, with ratios against the LiteRT float32 cell of this run."""
    sizes = {}  # gzip -9 of a large model takes seconds: once per format
    for fmt in {cell.fmt.name: cell.fmt for cell in cells}.values():
        data = fmt.path(export_dir).read_bytes()
        sizes[fmt.name] = (len(data), len(gzip.compress(data, 9)))
    rows = []
    for cell in cells:
        times = np.array(cell.times_ns if cell.ok else [], dtype=np.float64) / 1e6
        memory = cell.memory if cell.ok else None
        rows.append(
            {
                "format": cell.fmt.name,
                "runtime": cell.target.name,
                "required": cell.target.required,
                "note": cell.target.note,
                "loaded": cell.ok,
                "error": cell.error,
                "timed_runs": len(times),
                "median_ms": float(np.median(times)) if len(times) else None,
                "p90_ms": float(np.percentile(times, 90)) if len(times) else None,
                "peak_rss_bytes": memory["peak"] if memory else None,
                "baseline_rss_bytes": memory["baseline"] if memory else None,
                "runtime_import_bytes": memory["runtime_import"] if memory else None,
                "above_baseline_bytes": memory["peak"] - memory["baseline"] if memory else None,
                "file_bytes": sizes[cell.fmt.name][0],
                "gzip_bytes": sizes[cell.fmt.name][1],
                "accuracy": cell.accuracy,
            }
        )
    reference = next((r for r in rows if (r["format"], r["runtime"]) == REFERENCE), None)
    ref_ms = reference and reference["median_ms"]
    for row in rows:
        row["latency_ratio"] = row["median_ms"] / ref_ms if ref_ms and row["median_ms"] else None
        row["size_ratio"] = row["file_bytes"] / reference["file_bytes"] if reference else None
    return rows


def _num(key: str, scale: float = 1.0, digits: int = 2, suffix: str = ""):
    """A column showing row[key] / scale, or "-" for a cell that was not measured."""
    return lambda row: "-" if row[key] is None else f"{row[key] / scale:.{digits}f}{suffix}"


# The printed and the Markdown table: header -> cell text.
COLUMNS = {
    "format": lambda row: row["format"],
    "runtime": lambda row: row["runtime"],
    "loaded": lambda row: "yes" if row["loaded"] else "no",
    "median ms": _num("median_ms", digits=3),
    "p90 ms": _num("p90_ms", digits=3),
    "× LiteRT float": _num("latency_ratio", suffix="×"),
    "peak RSS MiB": _num("peak_rss_bytes", MIB, 1),
    "above base MiB": _num("above_baseline_bytes", MIB, 1),
    "file KiB": _num("file_bytes", KIB, 1),
    "gzip KiB": _num("gzip_bytes", KIB, 1),
    "size × float": _num("size_ratio", suffix="×"),
    "accuracy": _num("accuracy", digits=4),
}


def display_row(row: dict) -> list[str]:
    return [cell_text(row) for cell_text in COLUMNS.values()]


def failures(rows: list[dict]) -> list[str]:
    return [
        f"{r['format']} on {r['runtime']} ({'required' if r['required'] else 'known: ' + r['note']}): "
        f"{r['error']}"
        for r in rows
        if r["error"]
    ]


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("format", "runtime", "loaded") else "right")
    for row in rows:
        table.add_row(*display_row(row))
    console.print(table)
    for line in failures(rows):
        console.print(f"[red]not measured:[/] {line}", highlight=False, soft_wrap=True)


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"{title}\n", "| " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---:|" * (len(COLUMNS) - 3)]
    lines += ["| " + " | ".join(display_row(row)) + " |" for row in rows]
    lines += ["", *(f"- not measured: {line}" for line in failures(rows))]
    return "\n".join(lines).rstrip() + "\n"


def plot_accuracy_vs_size(rows: list[dict], path: Path) -> None:
    """One point per format: its file size and the accuracy in its first (primary) runtime that ran it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [
        next((r for r in rows if r["format"] == name and r["accuracy"] is not None), None)
        for name in dict.fromkeys(r["format"] for r in rows)
    ]
    for i, row in enumerate(r for r in points if r):
        xy = (row["file_bytes"] / KIB, row["accuracy"])
        ax.scatter(*xy)
        label = f"{row['format']} ({row['runtime']})"
        # Alternate above and below: formats of similar size and accuracy would otherwise overprint.
        offset = (4, 5) if i % 2 == 0 else (4, -12)
        ax.annotate(label, xy, fontsize=8, xytext=offset, textcoords="offset points")
    ax.set(xlabel="file size (KiB)", ylabel="top-1 test accuracy", title="Accuracy vs size")
    ax.margins(x=0.25, y=0.15)  # room for the labels
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(rows: list[dict], path: Path) -> None:
    """Grouped bars: formats along x, one bar per runtime target, whiskers up to p90."""
    import matplotlib.pyplot as plt

    formats = list(dict.fromkeys(r["format"] for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    width = 0.8 / len(runtimes)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(formats) + 2), 4.5))
    for i, runtime in enumerate(runtimes):
        cells = {r["format"]: r for r in rows if r["runtime"] == runtime and r["median_ms"] is not None}
        xs = [j + (i - (len(runtimes) - 1) / 2) * width for j, f in enumerate(formats) if f in cells]
        medians = [cells[f]["median_ms"] for f in formats if f in cells]
        upper = [cells[f]["p90_ms"] - cells[f]["median_ms"] for f in formats if f in cells]
        ax.bar(xs, medians, width, label=runtime, yerr=[[0] * len(upper), upper], capsize=2)
    ax.set_xticks(range(len(formats)), formats, rotation=20, ha="right")
    ax.set(ylabel="batch-1 latency, median (ms); whisker p90", title="Latency by format and runtime")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: never over a bar
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment(config: BenchmarkConfig) -> dict:
    """What the numbers depend on besides the models: settings, machine and runtime versions."""
    import cv2  # its version is not in package metadata under one fixed distribution name

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["cv2"] = cv2.__version__
    machine = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    return {"benchmark": config.model_dump(), "machine": machine, "versions": versions}


def write_reports(rows: list[dict], env: dict, title: str, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / name for name in ("benchmark.json", "benchmark.md")]
    files[0].write_text(json.dumps({**env, "reference": "/".join(REFERENCE), "rows": rows}, indent=2) + "\n")
    files[1].write_text(markdown(rows, title))
    plot_accuracy_vs_size(rows, out_dir / "accuracy_vs_size.png")
    plot_latency(rows, out_dir / "latency_by_runtime.png")
    return [*files, out_dir / "accuracy_vs_size.png", out_dir / "latency_by_runtime.png"]


def log_to_mlflow(uri: str, experiment: str, rows: list[dict], env: dict, files: list[Path]) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="benchmark") as run:
        mlflow.set_tags({"edgepipe.kind": "benchmark"})
        mlflow.log_params(
            {
                **env["benchmark"],
                "machine": f"{env['machine']['processor']} ({env['machine']['cpu_count']} CPUs)",
                "cpu_count": env["machine"]["cpu_count"],
                **{f"version.{name}": version for name, version in env["versions"].items()},
            }
        )
        metrics = {}
        for row in rows:
            key = f"{row['format']}.{row['runtime'].replace(':', '_')}"  # ':' is not allowed in names
            metrics[f"loaded.{key}"] = float(row["loaded"])
            for name, value in (
                ("latency_ms", row["median_ms"]),
                ("p90_ms", row["p90_ms"]),
                ("peak_rss_mib", row["peak_rss_bytes"] and row["peak_rss_bytes"] / MIB),
                ("accuracy", row["accuracy"]),
                ("latency_ratio", row["latency_ratio"]),
            ):
                if value is not None:
                    metrics[f"{name}.{key}"] = value
            metrics[f"file_bytes.{row['format']}"] = row["file_bytes"]
            metrics[f"gzip_bytes.{row['format']}"] = row["gzip_bytes"]
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="benchmark")
        return run.info.run_id


def test_scoring(params, paths: ProjectPaths, y: np.ndarray):
    """How a cell's predictions are scored (top-1 accuracy, or a detector's COCO mAP@0.5
    from pycocotools) and, for a detector, what its runners need (anchors and NMS settings)."""
    if params.task != "detection":
        return lambda predicted: float(np.mean(np.asarray(predicted) == y)), None
    from components.dataset import read_dataset_info
    from components.tasks.detection.metrics import coco_map
    from components.tasks.detection.model import anchors_for
    from components.tasks.detection.prepared import ground_truth, load_detection_split, nms_settings

    info = read_dataset_info(paths.prepared_dir)
    truth = ground_truth(load_detection_split(paths.prepared_dir, "test"))
    detector = {"anchors": anchors_for(info.input_shape), "nms": nms_settings(params.detection.nms)}
    return lambda found: coco_map(truth, found, info.classes)["map_50"], detector


def benchmark(root: Path, params_path: Path, format_names: str | None, use_mlflow: bool) -> list[dict]:
    """The whole benchmark: check inputs, measure every cell, print, write the reports, log to MLflow."""
    params = load_params(params_path)
    paths = ProjectPaths(root)
    formats = select_formats(format_names, paths.export_dir, params.task)
    uri = None
    if use_mlflow:  # before measuring: an unreachable store should not cost a whole benchmark run
        from components.registry import check_reachable, tracking_uri  # imports MLflow: only when used

        uri = tracking_uri(root)
        try:
            check_reachable(uri)
        except EdgepipeError:
            raise EdgepipeError(
                f"MLflow tracking store {uri} is not reachable. Start it, point MLFLOW_TRACKING_URI at a "
                "running one, or run the benchmark with --no-mlflow."
            ) from None
    x, y = load_split(paths.prepared_dir, "test")
    score, detector = test_scoring(params, paths, y)
    config = params.benchmark
    ctx = mp.get_context("spawn")  # a fresh interpreter per cell: nothing inherited from this process
    cells = []
    try:
        for fmt in formats:
            for target in fmt.runtimes:
                parent_end, child_end = ctx.Pipe()
                args = (child_end, target, fmt.path(paths.export_dir), config.threads, x[0], detector)
                process = ctx.Process(target=worker, args=args, daemon=True)
                process.start()
                child_end.close()  # so a dead worker shows up as EOF here
                cells.append(Cell(fmt, target, process, parent_end))
        measure(cells, config, x, score)
    finally:
        for cell in cells:
            cell.stop()
    rows = summarise(cells, paths.export_dir)
    env = environment(config)
    title = (
        f"edgepipe benchmark: batch 1, {config.threads} thread(s), {config.rounds} rounds × "
        f"{config.runs_per_round} runs per cell, {len(y)} test images"
        + ("; accuracy is COCO mAP@0.5 (a detector)" if detector else "")
    )
    print_table(rows, title)
    # Not in reports/: that folder is the report stage's DVC output; a benchmark is not a pipeline step.
    files = write_reports(rows, env, title, paths.root / "bench" / "results")
    console.print(f"Reports: {files[0].parent}")
    if uri:
        run_id = log_to_mlflow(uri, params.mlflow.experiment, rows, env, files)
        console.print(f"MLflow: run {run_id} in experiment {params.mlflow.experiment!r} at {uri}")
    return rows


@app.command()
def main(
    project_dir: Path = typer.Option(
        Path("."), help="the project folder (holds models/export, data/prepared)"
    ),
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    use_mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log a 'benchmark' run to MLflow"),
    formats: str | None = typer.Option(None, help="comma-separated format names (default: all)"),
) -> None:
    """Batch-1 latency, peak memory, size and accuracy of every exported artifact in every runtime."""
    try:
        benchmark(project_dir, project_dir / params, formats, use_mlflow)
    except EdgepipeError as exc:
        err_console.print(f"[bold red]benchmark error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
