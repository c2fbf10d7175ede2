"""prune: magnitude pruning of the float model to a target sparsity (tfmot), then strip the wrappers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import tensorflow_model_optimization as tfmot

from components.atomic import write_json
from components.config import PruneConfig
from components.dataset import load_split
from components.model import compile_classifier, load_model, save_model, seed_everything, sparsity

log = logging.getLogger(__name__)


def pruning_schedule(config: PruneConfig, steps_per_epoch: int) -> tfmot.sparsity.keras.PolynomialDecay:
    """Ramp from 0 to the target sparsity so that the last pruning event happens within training.

    tfmot only prunes on steps that are multiples of `frequency` and <= end_step, so end_step is put on
    such a step; otherwise the final sparsity would never be applied.
    """
    total_steps = steps_per_epoch * config.epochs
    frequency = max(1, min(config.frequency, total_steps // 2))
    end_step = max(frequency, ((total_steps - 1) // frequency) * frequency)
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=config.target_sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )


def prune(
    config: PruneConfig, prepared_dir: Path, float_model: Path, model_out: Path, metrics_out: Path
) -> dict:
    x_train, y_train = load_split(prepared_dir, "train")
    x_val, y_val = load_split(prepared_dir, "val")
    seed_everything(0)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    model = tfmot.sparsity.keras.prune_low_magnitude(
        load_model(float_model), pruning_schedule=pruning_schedule(config, steps_per_epoch)
    )
    compile_classifier(model, config.learning_rate)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=2,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    metrics = {
        "sparsity": sparsity(stripped),
        "target_sparsity": config.target_sparsity,
        "val_accuracy": float(history.history["val_accuracy"][-1]),
    }
    save_model(stripped, model_out)
    write_json(metrics_out, metrics)
    log.info("pruned: %s", metrics)
    return metrics
