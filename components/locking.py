"""One run per project at a time: an OS file lock (released if the process dies) in .dvc/tmp, which DVC keeps
out of git. Concurrent triggers wait instead of interleaving writes to dvc.lock, the DVC cache, git and the
registry."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from components.config import OrchestrationConfig


def project_lock(root: Path, config: OrchestrationConfig) -> FileLock:
    path = Path(root) / ".dvc" / "tmp" / "edgepipe-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=config.lock_timeout_seconds)


__all__ = ["Timeout", "project_lock"]
