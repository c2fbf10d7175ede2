"""What components.up_to_date runs in a child process: `dvc status`, then `dvc push`. Nothing is imported
at the top, so the parent names this function without importing DVC, and the child imports DVC only."""

from __future__ import annotations


def status_then_push(root, push: bool):
    from components.versioning import status_then_push as run  # DVC, in the child

    return run(root, push)
