"""qat (detection): pruning-preserving quantization-aware fine-tuning of the pruned detector; weights only,
the model is rebuilt from pruned.keras as for the classifier (components.qat.load_qat_model)."""

from __future__ import annotations

import logging

from components.atomic import atomic_path, write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.hashing import file_digest
from components.model import load_model, sparsity, write_history
from components.paths import ProjectPaths
from components.qat import keep_qat_model
from components.tasks.detection.optimize import qat_detector
from components.tasks.detection.prepared import nms_settings, training_data
from components.tasks.detection.train import ValidationMap

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config = params.qat
    data = training_data(paths.prepared_dir)
    pruned = load_model(paths.pruned_model)
    validation = ValidationMap(
        data, read_dataset_info(paths.prepared_dir).classes, nms_settings(params.detection.nms)
    )
    model, history = qat_detector(pruned, data, config, callbacks=(validation,))
    metrics = {  # the validation scores are the last epoch's: the callback scored this very model
        "sparsity_before": sparsity(pruned),
        "sparsity": sparsity(model),
        "val_map_50": history["val_map_50"][-1],
        "val_map_50_95": history["val_map_50_95"][-1],
    }
    with atomic_path(paths.qat_weights) as tmp:
        model.save_weights(tmp)
    keep_qat_model((file_digest(paths.pruned_model), file_digest(paths.qat_weights)), model)
    write_history(paths.history_file("qat"), history)
    write_json(paths.metrics_file("qat"), metrics)
    log.info("quantization-aware fine-tuning of the detector: %s", metrics)
    return metrics
