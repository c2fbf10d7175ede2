"""Prefect task runners from params.yaml (`orchestration`): where per-format work fans out."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.config import OrchestrationConfig
from components.errors import EdgepipeError


def make_task_runner(config: OrchestrationConfig) -> TaskRunner:
    """Threads by default (the work is in native code that releases the GIL); Dask when configured."""
    if config.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=config.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise EdgepipeError(
            "orchestration.task_runner is 'dask' but prefect-dask is not installed: "
            "`uv pip install 'edgepipe[dask]'`, or set orchestration.task_runner: thread."
        ) from None
    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.max_workers, "threads_per_worker": 1})


@task(cache_policy=NO_CACHE)
def _apply(fn: Callable, item: object) -> object:
    return fn(item)


def task_runner_map(config: OrchestrationConfig, label: str) -> Callable[[Callable, Iterable], list]:
    """A `map(fn, items)` whose calls are Prefect task runs `<label>-<item name>` on the configured task
    runner; results come back in the order of `items`."""

    def map_fn(fn: Callable, items: Iterable) -> list:
        items = list(items)
        with make_task_runner(config) as runner:
            futures = [
                runner.submit(
                    _apply.with_options(name=f"{label}-{getattr(item, 'name', item)}"),
                    {"fn": fn, "item": item},
                )
                for item in items
            ]
            return [future.result() for future in futures]

    return map_fn


__all__ = ["make_task_runner", "task_runner_map"]
