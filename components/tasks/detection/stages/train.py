"""train (detection): the SSD-style MobileNetV2 detector, from scratch or from model.pretrained weights
(components/tasks/detection/transfer.py), with the classifier's schedule
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
from components.tasks.detection.transfer import (
    best_epoch,
    learning_rate_schedule,
    pretrained_facts,
    train_detector,
)

log = logging.getLogger(__name__)


CLASS_HEADS = ("head0_classes", "head1_classes")  # start fresh over pretrained weights: other classes


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    config = params.train
    info = read_dataset_info(paths.prepared_dir)
    data = training_data(paths.prepared_dir)
    seed_everything(config.seed)
    model = build_detector(info.input_shape, info.num_classes, params.model.width_multiplier, "detector")
    validation = ValidationMap(data, info.classes, nms_settings(params.detection.nms))

    def fit_phase(model, peak: float, epochs: int) -> tuple[dict, int]:
        keep_best = keras.callbacks.EarlyStopping(
            monitor="val_map_50", mode="max", patience=config.patience, restore_best_weights=True
        )
        history = fit_detector(
            model,
            data,
            learning_rate_schedule(config, peak, epochs, len(data.train.images)),
            epochs,
            config.batch_size,
            callbacks=(validation, keep_best),
            augment=config.augment.enabled,
            seed=config.seed,
            weight_decay=config.weight_decay,
        ).history
        return history, best_epoch(history["val_map_50"])

    history, best, loaded = train_detector(params, paths.root, model, fit_phase, CLASS_HEADS)
    metrics = {
        "val_map_50": float(history["val_map_50"][best]),
        "val_map_50_95": float(history["val_map_50_95"][best]),
        "best_epoch": best + 1,
        "epochs_run": len(history["loss"]),
        "parameters": int(model.count_params()),
        "learning_bar": params.detection.min_val_map,
        **pretrained_facts(loaded),
    }
    metrics["learned"] = metrics["val_map_50"] >= metrics["learning_bar"]
    write_history(paths.train_history, history)
    write_json(paths.metrics_file("train"), metrics)
    if not metrics["learned"]:
        raise EdgepipeError(diagnosis(metrics, params, paths))
    save_model(model, paths.float_model)
    log.info("trained the detector: %s", metrics)
    return metrics


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
