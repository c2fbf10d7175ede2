"""Does the sweep find a model that fits the device and is nearly as good as the best one that does not?
A fresh git + DVC project with a generated colour folder (components/synthetic.py: mixed sizes, JPEG and PNG,
imbalanced classes), the shipped params.yaml and `target: openmv_h7` (256 KiB flash and arena), and one
`edgepipe sweep` over the settings given (by default the small CNN's width: 2.0 does not fit the flash).

    python bench/sweep_fit.py [--dataset produce] [--images 600] [-S model.width_multiplier=0.5,1.0,2.0]

Prints each candidate (score, int8 bytes, arena, fits), the released candidate, the best candidate without
budgets and the gap between them in percentage points (issue: within 1 pp), and the sweep's wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.own_data import make_project  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    dataset: str = typer.Option("produce", help="components/synthetic.py DATASETS name"),
    images: int = typer.Option(600, help="images in the generated folder"),
    set_: list[str] = typer.Option(["model.width_multiplier=0.5,1.0,2.0"], "-S", "--set"),
    target: str = typer.Option("openmv_h7", help="the device profile the release must fit"),
) -> None:
    base = Path(tempfile.mkdtemp(prefix="edgepipe-sweep-fit-"))
    root = base / "project"
    counts = make_project(root, dataset, images)
    params = (root / "params.yaml").read_text().replace("target: auto ", f"target: {target} ", 1)
    (root / "params.yaml").write_text(params)
    command = [str(Path(sys.executable).parent / "edgepipe"), "sweep"]
    for option in set_:
        command += ["-S", option]
    started = time.monotonic()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    seconds = time.monotonic() - started
    sweep_dirs = sorted((root / "sweeps").glob("sweep-*"))
    if not sweep_dirs:
        sys.exit(
            f"the sweep made no summary (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    outcomes = json.loads((sweep_dirs[-1] / "sweep.json").read_text())

    console = Console(width=160)
    console.print(
        f"{dataset}: {sum(counts.values())} images {counts}; target {target}; sweep exit {done.returncode}"
    )
    table = Table(title=f"edgepipe sweep {' '.join(set_)} ({seconds:.0f} s)")
    for column in (
        "candidate",
        "settings",
        "test acc. int8",
        "float",
        "int8 bytes",
        "arena",
        "fits",
        "misses",
    ):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o["name"].rsplit("-", 1)[-1],
            " ".join(f"{k}={v}" for k, v in o["overrides"].items()),
            "-" if o["score"] is None else f"{o['score']:.4f}",
            "-" if o["float_score"] is None else f"{o['float_score']:.4f}",
            "-" if o["release_bytes"] is None else f"{o['release_bytes']:,}",
            "-" if o["arena_bytes"] is None else f"{o['arena_bytes']:,}",
            "yes" if o["passed"] else "no",
            "; ".join(o["misses"]),
        )
    console.print(table)
    passing = [o for o in outcomes if o["passed"]]
    scored = [o for o in outcomes if o["score"] is not None and o["checks"].get("accuracy") is not False]
    if passing and scored:
        chosen = max(passing, key=lambda o: (round(o["score"], 6), -o["release_bytes"]))
        unconstrained = max(scored, key=lambda o: round(o["score"], 6))
        gap = (chosen["score"] - unconstrained["score"]) * 100
        console.print(
            f"released {chosen['name']} {chosen['overrides']}: {chosen['score']:.4f}; best without budgets "
            f"{unconstrained['name']} {unconstrained['overrides']}: {unconstrained['score']:.4f}; "
            f"gap {gap:+.1f} pp (issue: within 1 pp)"
        )
    console.print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:])


if __name__ == "__main__":
    app()
