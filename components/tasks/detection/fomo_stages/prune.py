"""prune (FOMO): magnitude pruning of the float FOMO detector, fine-tuning with its loss while it cuts."""

from __future__ import annotations

import logging

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.model import load_model, save_model, sparsity, write_history
from components.paths import ProjectPaths
from components.tasks.detection.fomo import ValidationCentroids, fit_fomo_on
from components.tasks.detection.optimize import prune_detector
from components.tasks.detection.prepared import training_data

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    data, fomo = training_data(paths.prepared_dir), params.detection.fomo
    classes = read_dataset_info(paths.prepared_dir).classes
    validation = ValidationCentroids(data, classes, fomo.threshold, fomo.max_distance)
    pruned, history = prune_detector(
        load_model(paths.float_model), data, params.prune, fit=fit_fomo_on, callbacks=(validation,)
    )
    scores = validation.scores(pruned)
    metrics = {
        "sparsity": sparsity(pruned),
        "target_sparsity": params.prune.target_sparsity,
        "val_f1": scores["f1"],
        "epochs_run": len(history["loss"]),
    }
    save_model(pruned, paths.pruned_model)
    write_history(paths.history_file("prune"), history)
    write_json(paths.metrics_file("prune"), metrics)
    log.info("pruned the FOMO detector: %s", metrics)
    return metrics
