"""A detector's float training, from scratch or from model.pretrained weights (the SSD and FOMO heads
alike): the weights of every backbone layer whose name and shapes match are loaded (components.pretrained:
ImageNet's MobileNetV2, or the .keras of an earlier run), the class heads start fresh, and the
classifier's two phases train it (components.train.fit_from_pretrained: the new layers on a frozen
backbone, then the top of the backbone too at train.transfer.learning_rate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from components.config import Params
from components.model import keras
from components.pretrained import LoadedWeights, load_weights, weights_file
from components.train import fit_from_pretrained

# fit_phase(model, peak learning rate, epochs) -> (history, index of the best epoch)
Phase = Callable[[keras.Model, float, int], tuple[dict, int]]


def train_detector(
    params: Params, root: Path, model: keras.Model, fit_phase: Phase, fresh: tuple[str, ...]
) -> tuple[dict, int, LoadedWeights | None]:
    """Train `model`; returns the history (both phases' epochs with pretrained weights), the best epoch
    and what was loaded (None from scratch)."""
    file = weights_file(params.model, params.data.image, root)
    if file is None:
        history, best = fit_phase(model, params.train.learning_rate, params.train.epochs)
        return history, best, None
    loaded = load_weights(model, params.model.pretrained, file, fresh)
    history, best = fit_from_pretrained(model, loaded, fit_phase, params.train)
    return history, best, loaded


def learning_rate_schedule(config, peak: float, epochs: int, train_images: int):
    """`peak`, or with train.schedule cosine its cosine decay to 1 % over `epochs` after a short warm-up
    (focal loss on an untrained head is unstable at the peak rate)."""
    if config.schedule != "cosine":
        return peak
    steps = epochs * -(-train_images // config.batch_size)
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.01, warmup_target=peak, warmup_steps=min(100, steps // 10)
    )


def best_epoch(scores: list[float]) -> int:
    return int(max(range(len(scores)), key=lambda i: scores[i]))


def pretrained_facts(loaded: LoadedWeights | None) -> dict:
    """What train.json records of the starting weights (the flow re-runs train when their sha256 changes)."""
    if loaded is None:
        return {}
    return {
        "pretrained": {
            "source": loaded.source,
            "file": loaded.file.name,
            "sha256": loaded.sha256,
            "layers_loaded": len(loaded.layers_loaded),
            "layers_new": len(loaded.layers_new),
        }
    }
