"""train: the float baseline classifier."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from components.atomic import atomic_path, write_json
from components.config import ModelConfig, TrainConfig
from components.dataset import load_split, read_dataset_info
from components.model import build_model, fit_classifier, keras, save_model, seed_everything

log = logging.getLogger(__name__)


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    prepared_dir: Path,
    model_out: Path,
    metrics_out: Path,
    history_out: Path,
) -> dict:
    info = read_dataset_info(prepared_dir)
    seed_everything(config.seed)
    model = build_model(model_config, info.input_shape, info.num_classes)
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=config.patience, restore_best_weights=True
    )
    history = fit_classifier(
        model,
        load_split(prepared_dir, "train"),
        load_split(prepared_dir, "val"),
        config.learning_rate,
        config.epochs,
        config.batch_size,
        callbacks=(keep_best,),
    )
    best = keep_best.best_epoch
    metrics = {
        "val_accuracy": float(history.history["val_accuracy"][best]),
        "train_accuracy": float(history.history["accuracy"][best]),
        "best_epoch": best + 1,
        "epochs_run": len(history.history["val_accuracy"]),
        "parameters": int(model.count_params()),
    }
    save_model(model, model_out)
    write_history(history_out, history.history)
    write_json(metrics_out, metrics)
    log.info("trained %s: %s", model_config.architecture, metrics)
    return metrics


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """One row per epoch (epoch, loss, accuracy, val_loss, val_accuracy): the curves `dvc plots` draws."""
    columns = sorted(history)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch, values in enumerate(zip(*(history[c] for c in columns), strict=True), start=1):
            writer.writerow([epoch, *(f"{v:.6f}" for v in values)])
