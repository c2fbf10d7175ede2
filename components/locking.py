"""One run per project at a time: an OS file lock (released if the process dies) in .dvc/tmp, which DVC keeps
out of git. Concurrent triggers wait instead of interleaving writes to dvc.lock, the DVC cache, git and the
registry."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from components.config import OrchestrationConfig
from components.errors import EdgepipeError


def project_lock(root: Path, config: OrchestrationConfig) -> FileLock:
    path = Path(root) / ".dvc" / "tmp" / "edgepipe-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=config.lock_timeout_seconds)


@contextlib.contextmanager
def one_run_at_a_time(
    root: Path, config: OrchestrationConfig, on_wait: Callable[[str], None]
) -> Iterator[None]:
    """Hold the project lock; when another run holds it, say so (`on_wait`) and wait for it, at most
    orchestration.lock_timeout_seconds."""
    lock = project_lock(root, config)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(lock.lock_file)
        try:
            lock.acquire()
        except Timeout:
            raise EdgepipeError(
                f"another run of this project held {lock.lock_file} for longer than "
                f"orchestration.lock_timeout_seconds ({config.lock_timeout_seconds:g} s)"
            ) from None
    try:
        yield
    finally:
        lock.release()


__all__ = ["Timeout", "one_run_at_a_time", "project_lock"]
