"""What components.up_to_date runs in a child process: `dvc status`, then `dvc push`. Nothing is imported
at the top, so the parent names this function without importing DVC, and the child imports DVC only."""

from __future__ import annotations

from pathlib import Path


def status_then_push(root: Path, push: bool):
    """Whether `dvc status` is clean (the data and every stage as dvc.lock records them) and, when it is and
    `push`, how many files `dvc push` sent (what the remote lacked) or the push's EdgepipeError, returned
    for the caller to raise only if it acts on this answer."""
    from components import versioning  # DVC, in the child
    from components.errors import EdgepipeError

    if versioning.pipeline_status(root):
        return False, None, None
    if not push:
        return True, None, None
    try:
        return True, versioning.push(root), None
    except EdgepipeError as error:
        return True, None, error
