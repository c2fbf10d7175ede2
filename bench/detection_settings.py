"""Detection settings compared on the pipeline's own steps: for each scenes seed and each settings set,
generated scenes (components/tasks/detection/scenes.py; the bundled set is seed 0) go through the stage
table as the flow runs it (prepare ... validate, no release), with the shipped params.yaml, `task:
detection` and the `-S` overrides (as `dvc exp run -S`). Prints one row per run: the float detector's best
validation mAP@0.5 (FOMO: centroid F1) and epoch, the test score of the float model and of the int8 files
in LiteRT and TFLite-Micro, the gate verdict and the step times.

    python bench/detection_settings.py --seeds 0,11 -S train.learning_rate=0.003 -S train.learning_rate=0.01

Each -S is one settings set; several keys in one set are joined with ';' (-S 'train.epochs=80;qat.epochs=6').
"""

from __future__ import annotations

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
from components.config import Params  # noqa: E402
from components.paths import ProjectPaths  # noqa: E402
from components.stages import STAGES  # noqa: E402
from components.tasks.detection.scenes import write_detection_set  # noqa: E402

RUN_STAGES = ("prepare", "train", "prune", "qat", "export_tflite", "export_onnx", "mcu", "validate")


def settings(overrides: str) -> dict:
    """`a.b=1;c.d=x` as params.yaml's nested dict, each value read as YAML."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"task": "detection"}
    for item in filter(None, overrides.split(";")):
        dotted, value = item.split("=", 1)
        *sections, key = dotted.strip().split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = yaml.safe_load(value)
    return raw


def run(seed: int, overrides: str, images: int, base: Path) -> dict:
    root = base / f"seed{seed}-{abs(hash(overrides))}"
    write_detection_set(root / "data" / "raw", images=images, seed=seed)
    params, paths = Params.model_validate(settings(overrides)), ProjectPaths(root)
    results, seconds = {}, {}
    for stage in STAGES:
        if stage.name not in RUN_STAGES:
            continue
        start = time.monotonic()
        results[stage.name] = stage.run(params, paths)
        seconds[stage.name] = time.monotonic() - start
    return {"results": results, "seconds": seconds}


def row(done: dict) -> list[str]:
    train, report, seconds = done["results"]["train"], done["results"]["validate"], done["seconds"]

    def score(fmt: str, runtime: str) -> str:
        cell = report.cell(fmt, runtime)
        return f"{cell.accuracy:.3f}" if cell and cell.loaded else "-"

    return [
        f"{train.get('val_map_50', train.get('val_f1')):.3f} ({train['best_epoch']}/{train['epochs_run']})",
        f"{report.float_accuracy:.3f}",
        score("tflite_float32", "litert"),
        score("tflite_int8_ptq", "litert"),
        score("tflite_int8", "litert"),
        score("tflite_int8", "tflm"),
        "pass" if report.gates.passed else "fail",
        f"{seconds['train']:.0f}",
        f"{seconds['prune'] + seconds['qat']:.0f}",
        f"{sum(seconds.values()):.0f}",
    ]


def main(
    seeds: str = typer.Option("0,11", help="scenes seeds, comma-separated"),
    overrides: list[str] = typer.Option([""], "-S", help="one settings set (key=value;key=value)"),
    images: int = typer.Option(400),
) -> None:
    console = Console(width=200)
    table = Table(title=f"detection settings on the pipeline's steps ({images} generated scenes per seed)")
    for column in (
        "seed",
        "settings",
        "val score (epoch)",
        "float",
        "pruned (f32 file)",
        "int8 PTQ LiteRT",
        "int8 LiteRT",
        "int8 TFLite-Micro",
        "gates",
        "train s",
        "prune+qat s",
        "total s",
    ):
        table.add_column(column)
    with tempfile.TemporaryDirectory(prefix="edgepipe-detection-settings-") as base:
        for seed in (int(s) for s in seeds.split(",")):
            for chosen in overrides:
                table.add_row(str(seed), chosen or "(shipped)", *row(run(seed, chosen, images, Path(base))))
                console.print(table)  # after each run: a long comparison shows its progress


if __name__ == "__main__":
    typer.run(main)
