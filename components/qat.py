"""qat: pruning-preserving quantization-aware fine-tuning (PQAT) of the pruned model.

The PrunePreserve scheme keeps the zero mask of the pruned kernels during fine-tuning, so the sparsity
reached by `prune` survives into the int8 model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from components.atomic import atomic_path, write_json
from components.config import Params, QatConfig
from components.dataset import load_split
from components.hashing import file_digest
from components.keras2 import tfmot
from components.model import fit_classifier, load_model, seed_everything, sparsity, write_history
from components.paths import ProjectPaths

log = logging.getLogger(__name__)


def quantization_aware(pruned: object, clustered: bool = False) -> object:
    """The QAT model of the pruned one: PQAT keeps its zeros; for a clustered model PCQAT keeps its zeros
    and its clusters (tfmot's collaborative optimisation), so both reach the int8 file."""
    annotated = tfmot.quantization.keras.quantize_annotate_model(pruned)
    if clustered:
        scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    else:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return tfmot.quantization.keras.quantize_apply(annotated, scheme)


def load_qat_model(pruned_model: Path, qat_weights: Path, clustered: bool = False) -> object:
    """The fine-tuned QAT model: the PQAT (PCQAT when `clustered`) wrapping of the pruned model with the
    saved weights.

    Only weights are saved because tf-keras cannot reload a quantize-wrapped .keras file, and wrapping
    is slow (tfmot clones the model four times: 18 s for MobileNetV2), so the process keeps the model of
    the last pair of files: in one flow, export_tflite and validate use the model the qat step trained.
    The key is the files' content, so a file written again is read again.
    """
    key = (file_digest(pruned_model), file_digest(qat_weights), clustered)
    if key not in _KEPT:
        model = quantization_aware(load_model(pruned_model), clustered)
        model.load_weights(qat_weights)
        keep_qat_model(key, model)
    return _KEPT[key]


_KEPT: dict[tuple[str, str, bool], object] = {}  # {(pruned sha256, weights sha256, clustered): model}, one


def keep_qat_model(key: tuple[str, str, bool], model: object) -> None:
    _KEPT.clear()
    _KEPT[key] = model


def qat(
    config: QatConfig,
    prepared_dir: Path,
    pruned_model: Path,
    weights_out: Path,
    metrics_out: Path,
    history_out: Path,
    clustered: bool = False,
) -> dict:
    seed_everything(0)
    pruned = load_model(pruned_model)
    model = quantization_aware(pruned, clustered)
    history = fit_classifier(
        model,
        load_split(prepared_dir, "train"),
        load_split(prepared_dir, "val"),
        config.learning_rate,
        config.epochs,
        config.batch_size,
    )
    metrics = {
        "sparsity_before": sparsity(pruned),
        "sparsity": sparsity(model),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "scheme": "PCQAT (sparsity and clusters kept)" if clustered else "PQAT (sparsity kept)",
    }
    with atomic_path(weights_out) as tmp:
        model.save_weights(tmp)
    # these weights, in memory for the export and validate steps of the same process
    keep_qat_model((file_digest(pruned_model), file_digest(weights_out), clustered), model)
    write_history(history_out, history.history)
    write_json(metrics_out, metrics)
    log.info("quantization-aware fine-tuning: %s", metrics)
    return metrics


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `qat` stage: quantization-aware fine-tuning of the pruned model (weights only)."""
    return qat(
        params.qat,
        paths.prepared_dir,
        paths.pruned_model,
        paths.qat_weights,
        paths.metrics_file("qat"),
        paths.history_file("qat"),
        clustered=params.prune.clusters is not None,
    )
