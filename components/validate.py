"""validate: run every artifact in every runtime its format names, on the test split, against the
float Keras model; apply the release gates. A runtime that cannot load a file is a reported failure."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from components.atomic import write_json
from components.config import GatesConfig
from components.dataset import load_split
from components.formats import FORMATS
from components.model import load_model
from components.qat import load_qat_model
from components.runtimes import RUNTIMES

log = logging.getLogger(__name__)


def validate(
    gates: GatesConfig,
    prepared_dir: Path,
    float_model: Path,
    pruned_model: Path,
    qat_weights: Path,
    export_dir: Path,
    report_out: Path,
) -> dict:
    x_test, y_test = load_split(prepared_dir, "test")
    float_logits = load_model(float_model).predict(x_test, verbose=0)
    source_logits = {
        "pruned": load_model(pruned_model).predict(x_test, verbose=0),
        "qat": load_qat_model(pruned_model, qat_weights).predict(x_test, verbose=0),
    }
    float_pred = float_logits.argmax(axis=1)
    float_accuracy = float(np.mean(float_pred == y_test))

    cells = []
    for fmt in FORMATS:
        path = fmt.path(export_dir)
        for runtime in fmt.runtimes:
            cell = {
                "format": fmt.name,
                "container": fmt.container,
                "precision": fmt.precision,
                "runtime": runtime,
                "file": path.name,
                "bytes": path.stat().st_size,
            }
            try:
                logits = RUNTIMES[runtime](path)(x_test)
            except Exception as exc:  # a runtime that cannot load or run the file is a result, not a crash
                cells.append({**cell, "loaded": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            pred = logits.argmax(axis=1)
            cells.append(
                {
                    **cell,
                    "loaded": True,
                    "accuracy": float(np.mean(pred == y_test)),
                    "agreement": float(np.mean(pred == float_pred)),
                    "max_abs_diff_vs_source": float(np.abs(logits - source_logits[fmt.source]).max()),
                }
            )
    failures = gate_failures(gates, float_accuracy, cells)
    report = {
        "float_accuracy": float_accuracy,
        "test_images": len(y_test),
        "cells": cells,
        "gates": {"passed": not failures, "failures": failures, **gates.model_dump()},
    }
    write_json(report_out, report)
    for failure in failures:
        log.warning("gate failed: %s", failure)
    return report


def gate_failures(gates: GatesConfig, float_accuracy: float, cells: list[dict]) -> list[str]:
    failures = []
    for cell in cells:
        where = f"{cell['format']} on {cell['runtime']}"
        if not cell["loaded"]:
            failures.append(f"{where}: could not run ({cell['error']})")
            continue
        drop = float_accuracy - cell["accuracy"]
        if drop > gates.max_accuracy_drop:
            failures.append(
                f"{where}: accuracy drop {drop:.4f} > gates.max_accuracy_drop {gates.max_accuracy_drop}"
            )
        if cell["agreement"] < gates.min_agreement:
            failures.append(
                f"{where}: agreement {cell['agreement']:.4f} < gates.min_agreement {gates.min_agreement}"
            )
    return failures
