"""prune: magnitude pruning of the float model to a target sparsity (tfmot), then strip the wrappers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import tensorflow_model_optimization as tfmot

from components.atomic import write_json
from components.config import PruneConfig
from components.dataset import load_split
from components.model import fit_classifier, load_model, save_model, seed_everything, sparsity, write_history

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
    config: PruneConfig,
    prepared_dir: Path,
    float_model: Path,
    model_out: Path,
    metrics_out: Path,
    history_out: Path,
) -> dict:
    train = load_split(prepared_dir, "train")
    seed_everything(0)
    steps_per_epoch = math.ceil(len(train[1]) / config.batch_size)
    model = tfmot.sparsity.keras.prune_low_magnitude(
        load_model(float_model), pruning_schedule=pruning_schedule(config, steps_per_epoch)
    )
    history = fit_classifier(
        model,
        train,
        load_split(prepared_dir, "val"),
        config.learning_rate,
        config.epochs,
        config.batch_size,
        callbacks=(tfmot.sparsity.keras.UpdatePruningStep(),),
    )
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    metrics = {
        "sparsity": sparsity(stripped),
        "target_sparsity": config.target_sparsity,
        "val_accuracy": float(history.history["val_accuracy"][-1]),
    }
    save_model(stripped, model_out)
    write_history(history_out, history.history)
    write_json(metrics_out, metrics)
    log.info("pruned: %s", metrics)
    return metrics
