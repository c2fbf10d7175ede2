"""Model architectures, Keras model file I/O and weight sparsity (tf-keras, i.e. Keras 2, for tfmot)."""

from __future__ import annotations

import contextlib
import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.atomic import atomic_path
from components.config import ModelConfig
from components.errors import EdgepipeError
from components.keras2 import tfmot
from components.results import VAL_SCORE_COLUMN, VAL_SCORE_KEYS

keras = tf.keras  # tf_keras, because components/__init__ sets TF_USE_LEGACY_KERAS=1

PRUNABLE_WEIGHTS = ("kernel:0", "depthwise_kernel:0")
HEAD_LAYER = "logits"  # the classifier head: one output per class of this dataset


def build_model(config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """An untrained classifier that outputs logits. Never downloads weights (weights=None)."""
    if config.architecture == "mobilenet_v2":
        return _mobilenet(config, input_shape, num_classes)

    def filters(n: int) -> int:
        return max(4, round(n * config.width_multiplier))

    # Four conv -> batch norm -> ReLU blocks (tfmot folds each batch norm into its conv for int8), three of
    # them followed by 2x2 max-pooling, then global average pooling: ~99k weights at width 1.0.
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    # Named layers: model.pretrained copies weights by layer name (components/pretrained.py).
    for block, width in enumerate((16, 32, 64, 128), start=1):
        conv = keras.layers.Conv2D(
            filters(width), 3, padding="same", use_bias=False, name=f"block{block}_conv"
        )
        x = conv(x)
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        if block < 4:
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name=HEAD_LAYER)(x)
    return keras.Model(inputs, outputs, name=config.name)


# Keras' default batch-norm momentum (0.99; 0.999 in MobileNetV2) suits ImageNet-length training. On a few
# hundred images (~15 steps an epoch) the moving statistics that inference uses would still be mostly
# their initial values when training ends (measured: 0.29 inference accuracy on the training set vs 0.52
# in training mode); 0.9 tracks the data within ~50 steps.
BATCH_NORM_MOMENTUM = 0.9


def _mobilenet(config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    backbone = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=config.width_multiplier, include_top=False, weights=None, pooling="avg"
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    outputs = keras.layers.Dense(num_classes, name=HEAD_LAYER)(backbone.output)
    return keras.Model(backbone.input, outputs, name=config.name)


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    epochs: int,
    batch_size: int,
    callbacks: tuple[keras.callbacks.Callback, ...] = (),
    augmentation: tuple[keras.layers.Layer, ...] = (),
    class_weight: dict[int, float] | None = None,
    weight_decay: float = 0.0,
) -> keras.callbacks.History:
    """Compile (Adam, cross-entropy on logits) and fit on (images, labels), validating every epoch.

    The one training loop that train, prune and QAT share. `augmentation` layers run in front of the model
    during training only: they wrap it in a training-time model, so `model` itself (what is saved and
    exported) never contains them."""
    trained = model
    if augmentation:
        trained = keras.Sequential([keras.Input(model.input_shape[1:]), *augmentation, model])
    trained.compile(
        optimizer=keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    make_training_variables(trained, train[0][:1], train[1][:1])
    return trained.fit(
        *train,
        validation_data=val,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=list(callbacks),
        class_weight=class_weight,
        verbose=2,
    )


def make_training_variables(model: keras.Model, inputs, targets) -> None:
    """Create the optimizer's slots and the loss and metric totals of a compiled model before `fit`, from
    one batch (`inputs`, `targets`: a structure like the model's outputs). Keras otherwise creates them
    inside the first training step, and a tf.function that creates variables on its first call is traced
    twice: for MobileNetV2 under pruning that second trace was about half of a short fine-tune's time
    (a pruned MobileNetV2 alpha 0.35 at 96 px, first epoch of 3 batches: 48.7 s -> 24.4 s). The values are
    the ones the first step would have made (zeros), so training is unchanged."""
    model.optimizer.build(model.trainable_variables)
    predicted = model(inputs, training=False)
    model.compiled_loss.build(predicted)  # tf-keras' compile containers (Keras 2 API, frozen)
    model.compiled_metrics.build(predicted, tf.nest.map_structure(tf.constant, targets))


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """One row per epoch (epoch, loss, accuracy, val_loss, val_accuracy, ..., val_score): the curves
    `dvc plots` draws."""
    columns = sorted(c for c in history if c not in ("lr", "phase"))
    score = next((key for key in VAL_SCORE_KEYS.values() if key in history), None)
    if score is not None:
        history = {**history, VAL_SCORE_COLUMN: history[score]}
        columns.append(VAL_SCORE_COLUMN)
    if "phase" in history:  # transfer learning: 1 = head only, 2 = fine-tuning
        columns.append("phase")
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch, values in enumerate(zip(*(history[c] for c in columns), strict=True), start=1):
            writer.writerow([epoch, *(v if isinstance(v, int) else f"{v:.6f}" for v in values)])


def save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        # "keras_v3", not the default: tf-keras decides ".keras means the zip format" from a thread-local
        # flag that its load_model leaves False in any thread but the importing one, so a step that loaded
        # a model and saved one in a worker thread (a served Prefect run) wrote HDF5 under a .keras name.
        model.save(tmp, save_format="keras_v3")
        _drop_save_time(tmp)


def _drop_save_time(keras_file: Path) -> None:
    """Rewrite a .keras zip without its save time (metadata.json `date_saved`, zip entry dates), so the
    same weights give the same bytes and a forced re-run does not change dvc.lock."""
    with zipfile.ZipFile(keras_file) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(keras_file, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            stable = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            stable.compress_type = info.compress_type
            archive.writestr(stable, data)


def load_model(path: Path) -> keras.Model:
    """Load a .keras file written by this pipeline (safe_mode: no arbitrary code from the file)."""
    if not Path(path).is_file():
        raise EdgepipeError(f"{path}: model file not found. Run the step that makes it first (edgepipe run).")
    with tfmot.quantization.keras.quantize_scope():
        try:
            return keras.models.load_model(path, compile=False, safe_mode=True)
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            raise EdgepipeError(
                f"{path}: refused to load: the file holds Python code (a Lambda layer), which could run "
                "anything. edgepipe never writes one; replace the file with one the pipeline made."
            ) from None


def kernels(model: keras.Model) -> list[np.ndarray]:
    """The conv/dense kernels (what pruning and clustering act on; biases are left alone)."""
    return [w.numpy() for w in model.weights if w.name.split("/")[-1] in PRUNABLE_WEIGHTS]


def unique_weights_per_kernel(model: keras.Model) -> int:
    """The most distinct values any conv/dense kernel holds (clustering bounds it by prune.clusters; zeros
    of pruning count as one)."""
    return max((len(np.unique(k)) for k in kernels(model)), default=0)


def sparsity(model: keras.Model) -> float:
    """Fraction of exactly-zero values over all conv/dense kernels (biases are never pruned)."""
    found = kernels(model)
    total = sum(k.size for k in found)
    return float(sum(np.count_nonzero(k == 0) for k in found) / total) if total else 0.0


def seed_everything(seed: int) -> None:
    """Make the next build/fit reproducible. Clearing the Keras session first matters: its global state
    (seed generators, name counters) otherwise makes a step that runs second in a process (a long-lived
    Prefect worker, the test suite) train different weights than the same step in a fresh process."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    with contextlib.suppress(RuntimeError):  # already enabled in this process
        tf.config.experimental.enable_op_determinism()
