"""Model architectures, Keras model file I/O and weight sparsity (tf-keras, i.e. Keras 2, for tfmot)."""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from components.atomic import atomic_path
from components.config import ModelConfig
from components.errors import EdgepipeError

keras = tf.keras  # tf_keras, because components/__init__ sets TF_USE_LEGACY_KERAS=1

PRUNABLE_WEIGHTS = ("kernel:0", "depthwise_kernel:0")


def build_model(config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """An untrained classifier that outputs logits. Never downloads weights (weights=None)."""
    if config.architecture == "mobilenet_v2":
        backbone = keras.applications.MobileNetV2(
            input_shape=input_shape,
            alpha=config.width_multiplier,
            include_top=False,
            weights=None,
            pooling="avg",
        )
        # Keras' MobileNetV2 uses batch-norm momentum 0.999, tuned for ImageNet-length training. Trained from
        # scratch on a few thousand images, the moving statistics inference uses would still be mostly
        # their initial values at the end (a near-chance classifier); 0.9 tracks the data within ~50 steps.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        outputs = keras.layers.Dense(num_classes, name="logits")(backbone.output)
        return keras.Model(backbone.input, outputs, name=config.name)

    def filters(n: int) -> int:
        return max(4, round(n * config.width_multiplier))

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(filters(16), 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(filters(32), 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(filters(64), 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=config.name)


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    learning_rate: float,
    epochs: int,
    batch_size: int,
    callbacks: tuple[keras.callbacks.Callback, ...] = (),
) -> keras.callbacks.History:
    """Compile (Adam, cross-entropy on logits) and fit on (images, labels), validating every epoch.

    The one training loop that train, prune and QAT share."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.fit(
        *train,
        validation_data=val,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=list(callbacks),
        verbose=2,
    )


def save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)
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


def sparsity(model: keras.Model) -> float:
    """Fraction of exactly-zero values over all conv/dense kernels (biases are never pruned)."""
    kernels = [w.numpy() for w in model.weights if w.name.split("/")[-1] in PRUNABLE_WEIGHTS]
    total = sum(k.size for k in kernels)
    return float(sum(np.count_nonzero(k == 0) for k in kernels) / total) if total else 0.0


def seed_everything(seed: int) -> None:
    """Make the next build/fit reproducible. Clearing the Keras session first matters: its global state
    (seed generators, name counters) otherwise makes a step that runs second in a process (a long-lived
    Prefect worker, the test suite) train different weights than the same step in a fresh process."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    with contextlib.suppress(RuntimeError):  # already enabled in this process
        tf.config.experimental.enable_op_determinism()
