"""`edgepipe run` with `task: detection` on annotated folders that are not the bundled scenes: generated
scenes of other seeds, one folder in YOLO layout and one as a COCO export, each in a fresh project (git +
DVC with a local remote, SQLite MLflow), with the shipped params.yaml. Prints, per folder: the release,
the float detector's and the release int8 file's mAP@0.5 (LiteRT and TFLite-Micro), its size and arena,
and the wall time of the run.

    python bench/detection_release.py [--images 400] [--layouts yolo,coco]
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
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from components.tasks.detection.annotations import read_detection_set, write_coco  # noqa: E402
from components.tasks.detection.scenes import write_detection_set  # noqa: E402

SEEDS = {"yolo": 11, "coco": 12}  # the bundled set is seed 0


def project(base: Path, layout: str, images: int) -> Path:
    root = base / layout / "project"
    root.mkdir(parents=True)
    for name in ("components", "flows"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "task": "detection"}, sort_keys=False))
    scenes = base / layout / "scenes"
    write_detection_set(scenes, images=images, seed=SEEDS[layout])
    if layout == "yolo":
        shutil.copytree(scenes, root / "data" / "raw")
    else:
        write_coco(read_detection_set(scenes), root / "data" / "raw")
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        [*dvc, "init", "-q"],
        [*dvc, "remote", "add", "-d", "local", "../remote"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@edgepipe.invalid", "commit", "-qm", "p"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def main(images: int = typer.Option(400), layouts: str = typer.Option("yolo,coco")) -> None:
    console = Console(width=160)
    base = Path(tempfile.mkdtemp(prefix="edgepipe-detection-release-"))
    table = Table(title=f"edgepipe run, task: detection, shipped params.yaml ({images} generated scenes)")
    for column in (
        "layout",
        "exit",
        "release",
        "float mAP@0.5",
        "int8 LiteRT",
        "int8 TFLite-Micro",
        "int8 bytes",
        "arena bytes",
        "wall s",
    ):
        table.add_column(column)
    for layout in layouts.split(","):
        root = project(base, layout, images)
        start = time.monotonic()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "edgepipe"), "run"], cwd=root, capture_output=True, text=True
        )
        wall = time.monotonic() - start
        (base / f"{layout}.log").write_text(done.stdout + done.stderr)
        release = next((line for line in done.stdout.splitlines() if line.startswith("Registered")), "-")
        report = (
            json.loads((root / "metrics" / "validation.json").read_text())
            if done.returncode in (0, 2) and (root / "metrics" / "validation.json").is_file()
            else None
        )
        if report is None:
            table.add_row(layout, str(done.returncode), "-", "-", "-", "-", "-", "-", f"{wall:.0f}")
            continue
        cells = {(c["format"], c["runtime"]): c for c in report["cells"]}
        int8 = report["artifacts"]["tflite_int8"]
        table.add_row(
            layout,
            str(done.returncode),
            release.replace("Registered MLflow model ", ""),
            f"{report['float_accuracy']:.3f}",
            f"{cells[('tflite_int8', 'litert')]['accuracy']:.3f}",
            f"{cells[('tflite_int8', 'tflm')]['accuracy']:.3f}",
            f"{int8['bytes']:,}",
            f"{cells[('tflite_int8', 'tflm')]['arena_bytes']:,}",
            f"{wall:.0f}",
        )
    console.print(table)
    console.print(f"projects and logs in {base}")


if __name__ == "__main__":
    typer.run(main)
