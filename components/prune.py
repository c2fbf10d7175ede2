"""prune: magnitude pruning of the float model to a target sparsity (tfmot), then strip the wrappers; with
`prune.clusters`, weight clustering after it (tfmot's sparsity-preserving clustering, the collaborative
optimisation's prune -> cluster), so each kernel keeps at most that many distinct values and its zeros.
The qat step then preserves both (PCQAT, components/qat.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from components.atomic import write_json
from components.config import Params, PruneConfig
from components.dataset import load_split
from components.keras2 import tfmot
from components.model import (
    fit_classifier,
    load_model,
    save_model,
    seed_everything,
    sparsity,
    unique_weights_per_kernel,
    write_history,
)
from components.paths import ProjectPaths

log = logging.getLogger(__name__)


# Pruning needs steps to recover from each cut, not epochs: on a 150-image folder (4 steps an epoch) 4
# epochs cut 50 % of the weights within 16 steps and test accuracy fell from 0.83 to 0.52; with the cuts
# over the first 60 % of >= 100 steps (prune.min_steps) and the rest at the target sparsity it stayed at
# 0.83-0.96 (the generated `produce` folder). A dataset with >= 25 steps an epoch keeps prune.epochs.
RAMP_SHARE = 0.6


def pruning_epochs(config: PruneConfig, steps_per_epoch: int) -> int:
    """prune.epochs, or more when the dataset is so small that they would give fewer than prune.min_steps."""
    return max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))


def pruning_schedule(config: PruneConfig, steps_per_epoch: int) -> tfmot.sparsity.keras.PolynomialDecay:
    """Ramp from 0 to the target sparsity over the first RAMP_SHARE of the steps; the rest fine-tune at the
    target sparsity.

    tfmot only prunes on steps that are multiples of `frequency` and <= end_step, so end_step is put on
    such a step; otherwise the final sparsity would never be applied.
    """
    total_steps = steps_per_epoch * pruning_epochs(config, steps_per_epoch)
    ramp = max(1, int(total_steps * RAMP_SHARE))
    frequency = max(1, min(config.frequency, ramp // 2))
    end_step = max(frequency, (ramp // frequency) * frequency)
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
        pruning_epochs(config, steps_per_epoch),
        config.batch_size,
        callbacks=(tfmot.sparsity.keras.UpdatePruningStep(),),
    )
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    curves = history.history
    if config.clusters is not None:
        stripped, clustering = cluster(stripped, config, train, load_split(prepared_dir, "val"))
        curves = {key: curves[key] + clustering[key] for key in curves}  # one curve: prune, then cluster
    metrics = {
        "sparsity": sparsity(stripped),
        "target_sparsity": config.target_sparsity,
        "val_accuracy": float(curves["val_accuracy"][-1]),
        "epochs_run": len(curves["val_accuracy"]),
        "clusters": config.clusters,
        "unique_weights_per_kernel": unique_weights_per_kernel(stripped),
    }
    save_model(stripped, model_out)
    write_history(history_out, curves)
    write_json(metrics_out, metrics)
    log.info("pruned: %s", metrics)
    return metrics


def cluster(pruned: object, config: PruneConfig, train, val) -> tuple[object, dict]:
    """Sparsity-preserving weight clustering (k-means++ centroids per kernel), fine-tuned for
    prune.cluster_epochs at the pruning learning rate; returns the stripped model and its curves."""
    clustered = tfmot.clustering.keras.cluster_weights(
        pruned,
        number_of_clusters=config.clusters,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=True,
    )
    history = fit_classifier(
        clustered, train, val, config.learning_rate, config.cluster_epochs, config.batch_size
    )
    return tfmot.clustering.keras.strip_clustering(clustered), history.history


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `prune` stage: magnitude pruning of the float model."""
    return prune(
        params.prune,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.metrics_file("prune"),
        paths.history_file("prune"),
    )
