"""train: the float baseline classifier, with the recipe that makes small real datasets learn (augmentation,
a cosine learning-rate schedule, class weights, early stopping that keeps the best epoch), and a diagnosis
that stops the run when the model did not learn."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, write_json
from components.config import AugmentConfig, ModelConfig, TrainConfig
from components.dataset import DatasetInfo, load_split, read_dataset_info
from components.errors import EdgepipeError
from components.model import build_model, fit_classifier, keras, save_model, seed_everything

log = logging.getLogger(__name__)


def augmentation_layers(
    config: AugmentConfig, info: DatasetInfo, seed: int
) -> tuple[keras.layers.Layer, ...]:
    """Keras preprocessing layers for training only. They work on pixels in [0, 1], so the normalised input
    is mapped back to that range first and normalised again after."""
    if not config.enabled:
        return ()
    layers = keras.layers
    steps: list[keras.layers.Layer] = [layers.Rescaling(info.std, offset=info.mean)]  # -> pixel / 255
    if config.flip != "none":
        steps.append(layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        steps.append(layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        steps.append(layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.translate:
        steps.append(layers.RandomTranslation(config.translate, config.translate, "reflect", seed=seed + 3))
    if config.brightness:
        steps.append(layers.RandomBrightness(config.brightness, value_range=(0.0, 1.0), seed=seed + 4))
    if config.contrast:
        steps.append(layers.RandomContrast(config.contrast, seed=seed + 5))
    steps.append(layers.Rescaling(1.0 / info.std, offset=-info.mean / info.std))
    return tuple(steps)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (classes * count): every class weighs as much in the loss as if the folders were balanced."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) for c, n in enumerate(counts) if n}


def learning_bar(config: TrainConfig, val_labels: np.ndarray) -> float:
    """The val accuracy below which the model has not learned: train.min_val_accuracy, or else what always
    answering the largest class scores plus a quarter of the way from there to 1."""
    if config.min_val_accuracy is not None:
        return config.min_val_accuracy
    majority = float(np.bincount(val_labels).max() / len(val_labels))
    return majority + 0.25 * (1.0 - majority)


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    prepared_dir: Path,
    model_out: Path,
    metrics_out: Path,
    history_out: Path,
) -> dict:
    info = read_dataset_info(prepared_dir)
    train_split, val_split = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    seed_everything(config.seed)
    model = build_model(model_config, info.input_shape, info.num_classes)
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    learning_rate = config.learning_rate
    if config.schedule == "cosine":
        steps = math.ceil(len(train_split[1]) / config.batch_size) * config.epochs
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.01)
    history = fit_classifier(
        model,
        train_split,
        val_split,
        learning_rate,
        config.epochs,
        config.batch_size,
        callbacks=(keep_best,),
        augmentation=augmentation_layers(config.augment, info, config.seed),
        class_weight=(
            balanced_class_weights(train_split[1], info.num_classes)
            if config.class_weights == "balanced"
            else None
        ),
    )
    epochs_run = len(history.history["val_loss"])
    best = keep_best.best_epoch  # its weights are the ones restored
    # train accuracy is measured on the augmented batches; val accuracy is what the exported model will do
    metrics = {
        "val_accuracy": float(history.history["val_accuracy"][best]),
        "train_accuracy": float(history.history["accuracy"][best]),
        "best_epoch": best + 1,
        "epochs_run": epochs_run,
        "parameters": int(model.count_params()),
        "learning_bar": learning_bar(config, val_split[1]),
    }
    metrics["learned"] = metrics["val_accuracy"] >= metrics["learning_bar"]
    write_history(history_out, history.history)
    write_json(metrics_out, metrics)
    if not metrics["learned"]:
        raise EdgepipeError(diagnosis(metrics, model_config, info, history_out))
    save_model(model, model_out)
    log.info("trained %s: %s", model_config.architecture, metrics)
    return metrics


def diagnosis(metrics: dict, model_config: ModelConfig, info: DatasetInfo, history_file: Path) -> str:
    """Why a model that did not learn probably did not, and the settings to try, in the order to try them."""
    val, train_acc = metrics["val_accuracy"], metrics["train_accuracy"]
    lines = [
        f"{history_file}: the float model did not learn, so nothing was exported or released. Validation "
        f"accuracy {val:.3f} at its best epoch ({metrics['best_epoch']} of {metrics['epochs_run']}), below "
        f"the bar {metrics['learning_bar']:.3f} (train.min_val_accuracy, or by default the largest class's "
        f"share of the validation images plus a quarter of the rest); training accuracy {train_acc:.3f}.",
    ]
    if train_acc < metrics["learning_bar"]:
        lines.append(
            "It did not fit the training images either (underfitting). Try, in this order: more epochs "
            "(train.epochs, train.patience); a larger input (data.image.height/width, now "
            f"{info.height}x{info.width}); a wider or larger model (model.width_multiplier, now "
            f"{model_config.width_multiplier:g}; model.architecture: mobilenet_v2); another "
            "train.learning_rate (0.001 or 0.01)."
        )
    else:
        lines.append(
            "It fit the training images but not the validation images (overfitting). Try: more images per "
            "class; stronger train.augment; a smaller model (model.width_multiplier)."
        )
    lines.append(
        "Check too that each class folder holds the images of its class. The curves are in "
        f"{history_file} (`dvc plots show`)."
    )
    return "\n".join(lines)


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """One row per epoch (epoch, loss, accuracy, val_loss, val_accuracy): the curves `dvc plots` draws."""
    columns = sorted(c for c in history if c != "lr")
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch, values in enumerate(zip(*(history[c] for c in columns), strict=True), start=1):
            writer.writerow([epoch, *(f"{v:.6f}" for v in values)])
