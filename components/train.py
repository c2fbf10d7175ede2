"""train: the float baseline classifier, with the recipe that makes small real datasets learn (augmentation,
a cosine learning-rate schedule, class weights, early stopping that keeps the best epoch), and a diagnosis
that stops the run when the model did not learn."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from components.atomic import write_json
from components.config import AugmentConfig, ModelConfig, Params, TrainConfig
from components.dataset import DatasetInfo, load_split, read_dataset_info
from components.errors import EdgepipeError
from components.model import build_model, fit_classifier, keras, save_model, seed_everything, write_history
from components.paths import ProjectPaths
from components.pretrained import LoadedWeights, load_weights, weights_file

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
    pretrained_file: Path | None = None,
) -> dict:
    """Train the float model (from model.pretrained weights in two phases when `pretrained_file` is given),
    keep the best epoch, and save it only if it learned."""
    info = read_dataset_info(prepared_dir)
    train_split, val_split = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    seed_everything(config.seed)
    model = build_model(model_config, info.input_shape, info.num_classes)
    fit = _Fitter(config, info, train_split, val_split)
    loaded = None
    if pretrained_file is None:
        history, best = fit(model, config.learning_rate, config.epochs)
    else:
        loaded = load_weights(model, model_config.pretrained, pretrained_file)
        history, best = fit_from_pretrained(model, loaded, fit, config)
    epochs_run = len(history["val_loss"])
    # train accuracy is measured on the augmented batches; val accuracy is what the exported model will do
    metrics = {
        "val_accuracy": float(history["val_accuracy"][best]),
        "train_accuracy": float(history["accuracy"][best]),
        "best_epoch": best + 1,
        "epochs_run": epochs_run,
        "parameters": int(model.count_params()),
        "learning_bar": learning_bar(config, val_split[1]),
    }
    if loaded is not None:
        metrics["pretrained"] = {
            "source": loaded.source,
            "file": loaded.file.name,
            "sha256": loaded.sha256,
            "layers_loaded": len(loaded.layers_loaded),
            "layers_new": len(loaded.layers_new),
        }
    metrics["learned"] = metrics["val_accuracy"] >= metrics["learning_bar"]
    write_history(history_out, history)
    write_json(metrics_out, metrics)
    if not metrics["learned"]:
        raise EdgepipeError(diagnosis(metrics, model_config, info, history_out))
    save_model(model, model_out)
    log.info("trained %s: %s", model_config.architecture, metrics)
    return metrics


class _Fitter:
    """One training phase with the recipe: augmentation, class weights, a cosine schedule over the phase,
    early stopping on val loss with the best epoch's weights restored."""

    def __init__(self, config: TrainConfig, info: DatasetInfo, train_split, val_split) -> None:
        self.config, self.train_split, self.val_split = config, train_split, val_split
        self.augmentation = augmentation_layers(config.augment, info, config.seed)
        self.class_weight = (
            balanced_class_weights(train_split[1], info.num_classes)
            if config.class_weights == "balanced"
            else None
        )

    def __call__(self, model, peak_learning_rate: float, epochs: int) -> tuple[dict[str, list], int]:
        config = self.config
        keep_best = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
        learning_rate = peak_learning_rate
        if config.schedule == "cosine":
            steps = math.ceil(len(self.train_split[1]) / config.batch_size) * epochs
            learning_rate = keras.optimizers.schedules.CosineDecay(peak_learning_rate, steps, alpha=0.01)
        history = fit_classifier(
            model,
            self.train_split,
            self.val_split,
            learning_rate,
            epochs,
            config.batch_size,
            callbacks=(keep_best,),
            augmentation=self.augmentation,
            class_weight=self.class_weight,
            weight_decay=config.weight_decay,
        )
        # best_epoch stays 0 when the phase ran fewer epochs than patience and never improved on epoch 1
        return history.history, keep_best.best_epoch


def fit_from_pretrained(model, loaded: LoadedWeights, fit: _Fitter, config: TrainConfig) -> tuple[dict, int]:
    """Phase 1: the pretrained layers frozen, the new ones (the head) trained at train.learning_rate.
    Phase 2: the top train.transfer.unfreeze of the pretrained layers trained too, at the lower
    train.transfer.learning_rate, for up to train.epochs. Batch norm stays frozen in both phases (it then
    keeps the statistics it learned, as Keras' transfer-learning guide advises). Returns both phases'
    history, one row per epoch, and the best epoch (of phase 2, counted from the start)."""
    transfer = config.transfer
    pretrained = [layer for layer in model.layers if layer.name in loaded.layers_loaded]
    _freeze(model, pretrained)
    head: dict[str, list] = {}
    if transfer.head_epochs:
        head, _ = fit(model, config.learning_rate, transfer.head_epochs)
    top = pretrained[len(pretrained) - round(transfer.unfreeze * len(pretrained)) :]
    _freeze(model, [layer for layer in pretrained if layer not in top or _is_batch_norm(layer)])
    tuned, best = fit(model, transfer.learning_rate, config.epochs)
    for layer in model.layers:  # what prune and QAT load must be trainable again
        layer.trainable = True
    phases = {key: head.get(key, []) + tuned[key] for key in tuned}
    phases["phase"] = [1] * len(head.get("loss", [])) + [2] * len(tuned["loss"])
    return phases, len(head.get("loss", [])) + best


def _is_batch_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _freeze(model, frozen: list) -> None:
    for layer in model.layers:
        layer.trainable = layer not in frozen


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


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `train` stage: the float model, from scratch or from model.pretrained."""
    return train(
        params.model,
        params.train,
        paths.prepared_dir,
        paths.float_model,
        paths.metrics_file("train"),
        paths.train_history,
        pretrained_file=weights_file(params.model, params.data.image, paths.root),
    )
