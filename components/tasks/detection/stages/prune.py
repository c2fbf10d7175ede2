"""prune (detection): magnitude pruning of the float detector to prune.target_sparsity, fine-tuning with the
detector's losses while it cuts (components/tasks/detection/optimize.py)."""

from __future__ import annotations

import logging

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.model import load_model, save_model, sparsity, write_history
from components.paths import ProjectPaths
from components.tasks.detection.optimize import prune_detector
from components.tasks.detection.prepared import nms_settings, training_data
from components.tasks.detection.train import ValidationMap

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    data = training_data(paths.prepared_dir)
    validation = ValidationMap(
        data, read_dataset_info(paths.prepared_dir).classes, nms_settings(params.detection.nms)
    )
    pruned, history = prune_detector(
        load_model(paths.float_model), data, params.prune, callbacks=(validation,)
    )
    scores = validation.scores(pruned)
    metrics = {
        "sparsity": sparsity(pruned),
        "target_sparsity": params.prune.target_sparsity,
        "val_map_50": scores["map_50"],
        "val_map_50_95": scores["map_50_95"],
        "epochs_run": len(history["loss"]),
    }
    save_model(pruned, paths.pruned_model)
    write_history(paths.history_file("prune"), history)
    write_json(paths.metrics_file("prune"), metrics)
    log.info("pruned the detector: %s", metrics)
    return metrics
