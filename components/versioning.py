"""DVC: track the raw data, record each step in dvc.lock, push to the remote. In-process (dvc.repo.Repo).

A step run outside `dvc repro` is recorded with `dvc commit -f <stage>` right after it ran, which
writes the same dvc.lock as `dvc repro` would.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import yaml
from dvc.exceptions import DvcException, NotDvcRepoError
from dvc.repo import Repo

from components.errors import EdgepipeError

log = logging.getLogger(__name__)
# DVC's INFO lines are hints for its own CLI ("To track the changes with git, run: ..."); edgepipe does the
# git side itself (components.release). Warnings and errors still show.
logging.getLogger("dvc").setLevel(logging.WARNING)


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[Repo]:
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise EdgepipeError(
            f"{root}: not a DVC repository. Run `git init && dvc init` there first."
        ) from None
    try:
        yield repo
    finally:
        repo.close()


def track_data(root: Path, data_dir: Path) -> None:
    """`dvc add` the raw data folder (a no-op when it is unchanged)."""
    with open_repo(root) as repo:
        try:
            repo.add(str(data_dir))
        except DvcException as exc:
            raise EdgepipeError(f"{data_dir}: DVC could not track the data folder: {exc}") from None


def git_commit(root: Path) -> str:
    """HEAD of the project's git repository, "+dirty" when tracked files differ; "none" before a commit."""
    with open_repo(root) as repo:
        try:
            rev = repo.scm.get_rev()
        except Exception:
            return "none"
        return rev + ("+dirty" if repo.scm.is_dirty(untracked_files=False) else "")


def stage_is_current(root: Path, stage: str) -> bool:
    """True when dvc.lock already records this stage's current deps, params and outs."""
    with open_repo(root) as repo:
        return not repo.status(targets=[stage])


def commit_stage(root: Path, stage: str) -> None:
    with open_repo(root) as repo:
        repo.commit(stage, force=True)


def pipeline_status(root: Path) -> dict:
    with open_repo(root) as repo:
        return repo.status()


def push(root: Path, remote: str | None = None) -> int:
    """Push every tracked output to the remote (the default one unless named); returns files pushed."""
    with open_repo(root) as repo:
        try:
            return repo.push(remote=remote)
        # OSError: a local remote that is a file, read-only or full; DVC passes these through bare.
        except (DvcException, OSError) as exc:
            if isinstance(exc, (ConnectionError, TimeoutError)):
                raise  # network trouble, not the user's: left to the push task's retries
            raise EdgepipeError(
                f"DVC push to remote {remote or '(default)'} failed: {exc}. Check `dvc remote list` and that "
                "the remote is reachable and writable; the local cache is intact, run again to retry."
            ) from None


def data_md5(data_dir: Path) -> str:
    """The md5 `dvc add` recorded for the data folder (`<folder>.dvc`): the dataset's version."""
    dvc_file = Path(f"{data_dir}.dvc")
    if not dvc_file.is_file():
        return "untracked"
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def locked_md5(root: Path, path: Path) -> str:
    """The md5 dvc.lock records for an output file."""
    lock = yaml.safe_load((Path(root) / "dvc.lock").read_text())
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if out["path"] == rel:
                return out["md5"]
    raise EdgepipeError(f"dvc.lock has no entry for {rel}; run the pipeline first.")
