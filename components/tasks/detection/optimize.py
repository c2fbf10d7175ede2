"""Pruning and pruning-preserving QAT of the detector: the classifier's schedule and tfmot schemes
(components.prune, components.qat) with the detector's training loop."""

from __future__ import annotations

import math

from components.config import PruneConfig, QatConfig
from components.keras2 import tfmot
from components.model import keras, seed_everything
from components.prune import pruning_epochs, pruning_schedule
from components.qat import quantization_aware
from components.tasks.detection.train import TrainingData, fit_detector


def copy_of(model: keras.Model) -> keras.Model:
    """A model with its own layers and the same weights. tfmot's wrappers wrap the layer objects they are
    given, so pruning or QAT of `model` itself would change it in place (measured: the float detector's
    kernels were 50 % zeros after pruning its wrapped copy)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def prune_detector(
    model: keras.Model, data: TrainingData, config: PruneConfig, fit=fit_detector, callbacks: tuple = ()
) -> tuple[keras.Model, dict]:
    """Magnitude pruning to config.target_sparsity, fine-tuning as it cuts (`fit`: the head's training
    loop, fit_detector's signature; `callbacks`: e.g. the head's validation score per epoch); returns the
    stripped model (`model` is left as it was)."""
    model = copy_of(model)
    seed_everything(0)
    steps_per_epoch = math.ceil(len(data.train.images) / config.batch_size)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=pruning_schedule(config, steps_per_epoch)
    )
    history = fit(
        wrapped,
        data,
        config.learning_rate,
        pruning_epochs(config, steps_per_epoch),
        config.batch_size,
        callbacks=(tfmot.sparsity.keras.UpdatePruningStep(), *callbacks),
    )
    return tfmot.sparsity.keras.strip_pruning(wrapped), history.history


def qat_detector(
    pruned: keras.Model, data: TrainingData, config: QatConfig, fit=fit_detector, callbacks: tuple = ()
) -> tuple[keras.Model, dict]:
    """Pruning-preserving quantization-aware fine-tuning (the sparsity survives into the int8 file);
    `pruned` is left as it was. `fit` and `callbacks` as for prune_detector."""
    pruned = copy_of(pruned)
    seed_everything(0)
    model = quantization_aware(pruned)
    history = fit(model, data, config.learning_rate, config.epochs, config.batch_size, callbacks=callbacks)
    return model, history.history
