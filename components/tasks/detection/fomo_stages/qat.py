"""qat (FOMO): pruning-preserving quantization-aware fine-tuning of the pruned FOMO detector (weights only,
rebuilt from pruned.keras as for the classifier)."""

from __future__ import annotations

import logging

from components.atomic import atomic_path, write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.hashing import file_digest
from components.model import load_model, sparsity, write_history
from components.paths import ProjectPaths
from components.qat import keep_qat_model
from components.tasks.detection.fomo import ValidationCentroids, fit_fomo_on
from components.tasks.detection.optimize import qat_detector
from components.tasks.detection.prepared import training_data

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config, fomo = params.qat, params.detection.fomo
    data = training_data(paths.prepared_dir)
    pruned = load_model(paths.pruned_model)
    classes = read_dataset_info(paths.prepared_dir).classes
    validation = ValidationCentroids(data, classes, fomo.threshold, fomo.max_distance)
    model, history = qat_detector(pruned, data, config, fit=fit_fomo_on, callbacks=(validation,))
    # the last epoch's validation F1: the callback scored this very model
    metrics = {
        "sparsity_before": sparsity(pruned),
        "sparsity": sparsity(model),
        "val_f1": history["val_f1"][-1],
    }
    with atomic_path(paths.qat_weights) as tmp:
        model.save_weights(tmp)
    keep_qat_model((file_digest(paths.pruned_model), file_digest(paths.qat_weights)), model)
    write_history(paths.history_file("qat"), history)
    write_json(paths.metrics_file("qat"), metrics)
    log.info("quantization-aware fine-tuning of the FOMO detector: %s", metrics)
    return metrics
