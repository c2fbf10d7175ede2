"""train (FOMO): the centroid detector from scratch with the SSD detector's schedule; the best epoch is the
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
from components.tasks.detection.stages.train import learning_rate_schedule

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config, fomo = params.train, params.detection.fomo
    if params.model.pretrained != "none":
        raise EdgepipeError(
            f"model.pretrained: {params.model.pretrained} is not read for task detection yet; set none."
        )
    info = read_dataset_info(paths.prepared_dir)
    data = training_data(paths.prepared_dir)
    seed_everything(config.seed)
    model = build_fomo(info.input_shape, info.num_classes, params.model.width_multiplier, "fomo")
    validation = ValidationCentroids(data, info.classes, fomo.threshold, fomo.max_distance)
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_f1", mode="max", patience=config.patience, restore_best_weights=True
    )
    history = fit_fomo(
        model,
        data.train,
        data.val,
        data.normalize,
        learning_rate_schedule(config, len(data.train.images)),
        config.epochs,
        config.batch_size,
        seed=config.seed,
        augment=config.augment.enabled,
        callbacks=(validation, keep_best),
    ).history
    best = max(range(len(history["val_f1"])), key=lambda i: history["val_f1"][i])
    metrics = {
        **{f"val_{k}": float(history[f"val_{k}"][best]) for k in ("f1", "precision", "recall")},
        "best_epoch": best + 1,
        "epochs_run": len(history["loss"]),
        "parameters": int(model.count_params()),
        "learning_bar": params.detection.min_val_map,
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
