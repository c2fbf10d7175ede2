"""train (detection): the SSD-style MobileNetV2 detector from scratch, with the classifier's schedule
(cosine, with a short warm-up: focal loss on an untrained head is unstable at the peak rate) and its
keep-the-best-epoch rule, where the best epoch is the one with the highest validation COCO mAP@0.5 (as
Ultralytics keeps best.pt); then the diagnosis that stops a run whose detector did not learn."""

from __future__ import annotations

import logging

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.errors import EdgepipeError
from components.model import keras, save_model, seed_everything, write_history
from components.paths import ProjectPaths
from components.tasks.detection.model import build_detector
from components.tasks.detection.prepared import nms_settings, training_data
from components.tasks.detection.train import ValidationMap, fit_detector

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config = params.train
    if params.model.pretrained != "none":
        raise EdgepipeError(
            f"model.pretrained: {params.model.pretrained} is not read for task detection yet; the detector "
            "trains from scratch. Set model.pretrained: none."
        )
    info = read_dataset_info(paths.prepared_dir)
    data = training_data(paths.prepared_dir)
    seed_everything(config.seed)
    model = build_detector(info.input_shape, info.num_classes, params.model.width_multiplier, "detector")
    learning_rate = learning_rate_schedule(config, len(data.train.images))
    validation = ValidationMap(data, info.classes, nms_settings(params.detection.nms))
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_map_50", mode="max", patience=config.patience, restore_best_weights=True
    )
    history = fit_detector(
        model,
        data,
        learning_rate,
        config.epochs,
        config.batch_size,
        callbacks=(validation, keep_best),
        augment=config.augment.enabled,
        seed=config.seed,
    ).history
    best = int(max(range(len(history["val_map_50"])), key=lambda i: history["val_map_50"][i]))
    metrics = {
        "val_map_50": float(history["val_map_50"][best]),
        "val_map_50_95": float(history["val_map_50_95"][best]),
        "best_epoch": best + 1,
        "epochs_run": len(history["loss"]),
        "parameters": int(model.count_params()),
        "learning_bar": params.detection.min_val_map,
    }
    metrics["learned"] = metrics["val_map_50"] >= metrics["learning_bar"]
    write_history(paths.train_history, history)
    write_json(paths.metrics_file("train"), metrics)
    if not metrics["learned"]:
        raise EdgepipeError(diagnosis(metrics, params, paths))
    save_model(model, paths.float_model)
    log.info("trained the detector: %s", metrics)
    return metrics


def learning_rate_schedule(config, train_images: int):
    """train.learning_rate, or with train.schedule cosine its cosine decay to 1 % after a short warm-up."""
    if config.schedule != "cosine":
        return config.learning_rate
    steps = config.epochs * -(-train_images // config.batch_size)
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.01, warmup_target=config.learning_rate, warmup_steps=min(100, steps // 10)
    )


def diagnosis(metrics: dict, params: Params, paths: ProjectPaths) -> str:
    return (
        f"{paths.train_history}: the detector did not learn, so nothing was exported or released. "
        f"Validation COCO mAP@0.5 {metrics['val_map_50']:.3f} at its best epoch ({metrics['best_epoch']} of "
        f"{metrics['epochs_run']}), below detection.min_val_map {metrics['learning_bar']}. Try, in this "
        f"order: more annotated images (a few hundred objects per class); more epochs (train.epochs, now "
        f"{params.train.epochs}, and train.patience); a larger input (data.image.height/width) when the "
        f"objects are small; a wider backbone (model.width_multiplier, now "
        f"{params.model.width_multiplier:g}). Check too that the boxes are where the objects are: the "
        "labels of a few images drawn by your labelling tool."
    )
