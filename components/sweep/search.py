"""`edgepipe sweep --search optuna --trials N`: Optuna's TPE sampler picks the candidates from the `-S` value
lists, a batch at a time (as many as run side by side), maximising the release file's score under the
constraint that every gate passes (Optuna's constrained TPE). A setting it proposes again is not run again:
its earlier outcome is told instead."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import optuna

from components.sweep.decision import Outcome

optuna.logging.set_verbosity(logging.WARNING)
# constraints_func is marked experimental (Optuna 4.9); the pinned version is the tested one
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return trial.user_attrs.get("constraints", [1.0])


def optuna_search(
    space: dict[str, list[object]],
    trials: int,
    batch_size: int,
    seed: int,
    run_batch: Callable[[list[dict[str, object]]], list[Outcome]],
) -> list[Outcome]:
    """Up to `trials` distinct candidates (fewer when the space has fewer settings); `run_batch` runs a list
    of settings side by side and returns their outcomes in order."""
    sampler = optuna.samplers.TPESampler(
        seed=seed, constraints_func=_constraints, n_startup_trials=batch_size
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    size = math.prod(len(values) for values in space.values())  # settings in the space
    done: dict[str, Outcome] = {}
    outcomes: list[Outcome] = []
    asked = 0
    while len(done) < min(trials, size) and asked < 20 * trials:
        batch, new = [], {}
        for _ in range(min(batch_size, trials - len(done))):
            trial = study.ask()
            asked += 1
            setting = {key: trial.suggest_categorical(key, values) for key, values in space.items()}
            batch.append((trial, setting))
            key = repr(setting)
            if key not in done and key not in new:
                new[key] = setting
        for key, outcome in zip(new, run_batch(list(new.values())), strict=True):
            done[key] = outcome
            outcomes.append(outcome)
        for trial, setting in batch:
            outcome = done[repr(setting)]
            if outcome.score is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            trial.set_user_attr("constraints", [-1.0 if outcome.passed else 1.0])
            study.tell(trial, outcome.score)
    return outcomes
