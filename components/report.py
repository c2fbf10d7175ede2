"""The results table: one row per (exported artifact, runtime that ran it), from the validation report."""

from __future__ import annotations

from pathlib import Path

from components.atomic import atomic_path

COLUMNS = (
    "artifact",
    "format",
    "precision",
    "bytes",
    "runtime",
    "top-1 accuracy",
    "agreement vs float",
    "status",
)


def result_rows(report: dict) -> list[dict]:
    rows = []
    for cell in report["cells"]:
        loaded = cell["loaded"]
        rows.append(
            {
                "artifact": cell["file"],
                "format": cell["format"],
                "precision": cell["precision"],
                "bytes": cell["bytes"],
                "runtime": cell["runtime"],
                "top-1 accuracy": f"{cell['accuracy']:.4f}" if loaded else "-",
                "agreement vs float": f"{cell['agreement']:.4f}" if loaded else "-",
                "status": "ok" if loaded else f"failed: {cell['error'][:80]}",
            }
        )
    return rows


def to_markdown(report: dict, sparsity: float | None = None) -> str:
    lines = [
        f"Float Keras model: top-1 accuracy {report['float_accuracy']:.4f} "
        f"on {report['test_images']} test images"
        + (f"; weight sparsity after pruning + QAT {sparsity:.2%}" if sparsity is not None else ""),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in result_rows(report)]
    gates = report["gates"]
    lines += ["", "Release gates: " + ("passed" if gates["passed"] else "FAILED")]
    lines += [f"- {failure}" for failure in gates["failures"]]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
