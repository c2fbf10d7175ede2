"""What a new user sees on their own colour images: the shipped params.yaml, unchanged, on generated colour
folders (components/synthetic.py), each run as a user would run it, in a fresh git + DVC project.

    python bench/own_data.py [--datasets signs,produce,shapes] [--images 600]
    python bench/own_data.py --datasets produce --images 150 --pretrain-on signs   # transfer learning

Per dataset: the input `auto` chose, float val and test accuracy, int8 (the release file in LiteRT) test
accuracy, flash (int8 file) and TFLite-Micro arena bytes, the release gates, and the wall time of
`edgepipe run` (a fresh process, imports included).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from components.results import ValidationReport  # noqa: E402
from components.synthetic import DATASETS, write_colour_folder  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@edgepipe.invalid"]


def make_project(dest: Path, dataset: str, images: int) -> dict[str, int]:
    """A clone of this project's committed state with a colour folder in data/raw and a local DVC remote."""
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(dest)], check=True)
    counts = write_colour_folder(dest / "data" / "raw", dataset, images=images, seed=11)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(
        [*dvc, "remote", "add", "-q", "-d", "bench", str(dest.parent / "remote")], cwd=dest, check=True
    )
    subprocess.run([*GIT, "commit", "-qam", "bench remote"], cwd=dest, check=True)
    return counts


def measure(
    dataset: str, images: int, work: Path, pretrained: Path | None = None, start_label="scratch"
) -> dict:
    """One `edgepipe run` on a fresh project; with `pretrained`, that weights file is copied in and named
    by model.pretrained (the only edit to params.yaml)."""
    name = f"{dataset}-{start_label}"
    root = work / name / "project"
    counts = make_project(root, dataset, images)
    if pretrained is not None:
        shutil.copy2(pretrained, root / "pretrained.keras")
        params = root / "params.yaml"
        params.write_text(
            params.read_text().replace("  pretrained: none ", "  pretrained: pretrained.keras ")
        )
        subprocess.run([*GIT, "add", "pretrained.keras", "params.yaml"], cwd=root, check=True)
        subprocess.run([*GIT, "commit", "-qm", "start from pretrained.keras"], cwd=root, check=True)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run"], cwd=root, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - start
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    metrics = root / "metrics"
    row = {
        "dataset": dataset,
        "start": start_label,
        "classes": counts,
        "seconds": seconds,
        "exit": done.returncode,
    }
    if (metrics / "prepare.json").is_file():
        prepared = json.loads((metrics / "prepare.json").read_text())
        row["input"] = f"{prepared['image_height']}x{prepared['image_width']}x{prepared['image_channels']}"
    if (metrics / "train.json").is_file():
        row["float_val"] = json.loads((metrics / "train.json").read_text())["val_accuracy"]
    if (metrics / "validation.json").is_file():
        report = ValidationReport.load(metrics / "validation.json")
        row["float_test"] = report.float_accuracy
        row["int8_test"] = report.accuracy("tflite_int8", "litert")
        row["flash"] = report.artifacts["tflite_int8"].bytes
        row["gates"] = "passed" if report.passed else f"{len(report.gates.failures)} failed"
    if (metrics / "mcu.json").is_file():
        row["arena"] = json.loads((metrics / "mcu.json").read_text())["arena_bytes"]
    row["released"] = "Registered MLflow model" in done.stdout
    return row


def main(
    datasets: str = typer.Option("signs,produce", help=f"comma-separated, from {', '.join(DATASETS)}"),
    images: int = typer.Option(600, help="about this many images per dataset"),
    keep: bool = typer.Option(False, help="keep the projects (printed) instead of deleting them"),
    pretrain_on: str = typer.Option(
        "", help="also train each dataset from the float model of a run on this dataset (transfer learning)"
    ),
    pretrain_images: int = typer.Option(1500, help="images of the --pretrain-on dataset"),
) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepipe-own-data-"))
    rows = []
    if pretrain_on:
        rows.append(measure(pretrain_on, pretrain_images, work, start_label="source"))
        source = work / f"{pretrain_on}-source" / "project" / "models" / "float.keras"
    for name in datasets.split(","):
        rows.append(measure(name, images, work))
        if pretrain_on:
            rows.append(measure(name, images, work, source, f"{pretrain_on} weights"))
    table = Table(title=f"Default params.yaml on generated colour folders (~{images} images each)")
    for column in (
        "dataset",
        "start",
        "images (per class)",
        "input",
        "float val",
        "float test",
        "int8 test",
        "flash B",
        "arena B",
        "gates",
        "released",
        "edgepipe run s",
    ):
        table.add_column(column)

    def fmt(value, spec="{:.4f}"):
        return "-" if value is None else spec.format(value)

    for row in rows:
        table.add_row(
            row["dataset"],
            row["start"],
            f"{sum(row['classes'].values())} ({', '.join(map(str, row['classes'].values()))})",
            row.get("input", "-"),
            fmt(row.get("float_val")),
            fmt(row.get("float_test")),
            fmt(row.get("int8_test")),
            fmt(row.get("flash"), "{:,}"),
            fmt(row.get("arena"), "{:,}"),
            row.get("gates", f"exit {row['exit']}"),
            "yes" if row["released"] else "no",
            f"{row['seconds']:.0f}",
        )
    Console(width=200).print(table)
    print(f"logs: {work}/<dataset>-<start>.log")
    if not keep:
        for row in rows:
            shutil.rmtree(work / f"{row['dataset']}-{row['start']}", ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
