"""The `git` command line, as the release commit and the sweep's experiments use it, and the identity to
commit with where the repository has none."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from components.errors import EdgepipeError

log = logging.getLogger(__name__)

# Used only when the repository has no identity configured (a fresh container, a CI runner).
FALLBACK_IDENTITY = ("edgepipe", "edgepipe@localhost")


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EdgepipeError(f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}")
    return result


def fallback_identity(root: Path) -> tuple[str, str] | None:
    """(name, email) to commit as when git has no user.email in `root`; None when it has one."""
    if git(root, "config", "user.email", check=False).returncode == 0:
        return None
    name, email = FALLBACK_IDENTITY
    log.warning("git has no user.email in %s; committing as %s <%s>", root, name, email)
    return name, email
