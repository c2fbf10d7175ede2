"""train (FOMO): the centroid detector, from scratch or from model.pretrained weights, with the SSD
detector's schedule; the best epoch is the
one with the highest validation centroid F1, and a detector below detection.min_val_map stops the run."""

from __future__ import annotations

import logging

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.errors import EdgepipeError
from components.model import keras, save_model, seed_everything, write_history
from components.paths import ProjectPaths
from components.tasks.detection.fomo import ValidationCentroids, build_fomo, fit_fomo
from components.tasks.detection.prepared import training_data
from components.tasks.detection.transfer import (
    best_epoch,
    learning_rate_schedule,
    pretrained_facts,
    train_detector,
)

log = logging.getLogger(__name__)


FRESH = ("fomo_head", "fomo_logits")  # start fresh over pretrained weights: other classes, other grid


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config, fomo = params.train, params.detection.fomo
    info = read_dataset_info(paths.prepared_dir)
    data = training_data(paths.prepared_dir)
    seed_everything(config.seed)
    model = build_fomo(info.input_shape, info.num_classes, params.model.width_multiplier, "fomo")
    validation = ValidationCentroids(data, info.classes, fomo.threshold, fomo.max_distance)

    def fit_phase(model, peak: float, epochs: int) -> tuple[dict, int]:
        keep_best = keras.callbacks.EarlyStopping(
            monitor="val_f1", mode="max", patience=config.patience, restore_best_weights=True
        )
        history = fit_fomo(
            model,
            data.train,
            data.val,
            data.normalize,
            learning_rate_schedule(config, peak, epochs, len(data.train.images)),
            epochs,
            config.batch_size,
            seed=config.seed,
            weight_decay=config.weight_decay,
            augment=config.augment.enabled,
            callbacks=(validation, keep_best),
        ).history
        return history, best_epoch(history["val_f1"])

    history, best, loaded = train_detector(params, paths.root, model, fit_phase, FRESH)
    metrics = {
        **{f"val_{k}": float(history[f"val_{k}"][best]) for k in ("f1", "precision", "recall")},
        "best_epoch": best + 1,
        "epochs_run": len(history["loss"]),
        "parameters": int(model.count_params()),
        "learning_bar": params.detection.min_val_map,
        **pretrained_facts(loaded),
    }
    metrics["learned"] = metrics["val_f1"] >= metrics["learning_bar"]
    write_history(paths.train_history, history)
    write_json(paths.metrics_file("train"), metrics)
    if not metrics["learned"]:
        raise EdgepipeError(
            f"{paths.train_history}: the FOMO detector did not learn, so nothing was exported or released. "
            f"Validation centroid F1 {metrics['val_f1']:.3f} (precision {metrics['val_precision']:.3f}, "
            f"recall {metrics['val_recall']:.3f}) at its best epoch, below detection.min_val_map "
            f"{metrics['learning_bar']}. Try more annotated images, more epochs (train.epochs), or a lower "
            "detection.fomo.threshold when the recall is the low one."
        )
    save_model(model, paths.float_model)
    log.info("trained the FOMO detector: %s", metrics)
    return metrics
