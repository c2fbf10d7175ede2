"""release: the git half of a release. A gate-passing run commits what `dvc.lock` records (with the params
and the data's .dvc file it was made from) and tags that commit `<model>@v<N>`, the MLflow version
number; `dvc get --rev <tag>` or a checkout of the tag + `dvc pull` returns the released bytes.

Plain git through subprocess: the project is the user's own repository, and git is what they will use to
look at it.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.errors import EdgepipeError

log = logging.getLogger(__name__)

# Used only when the repository has no identity configured (a fresh container, a CI runner).
FALLBACK_IDENTITY = ("edgepipe", "edgepipe@localhost")


@dataclass(frozen=True)
class GitRelease:
    tag: str
    commit: str
    created: bool  # False: the tag already pointed at this commit (a re-run after a failed registration)


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EdgepipeError(f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}")
    return result


def _identity_args(root: Path) -> list[str]:
    if git(root, "config", "user.email", check=False).returncode == 0:
        return []
    name, email = FALLBACK_IDENTITY
    log.warning("git has no user.email in %s; committing as %s <%s>", root, name, email)
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def release_files(root: Path, params_file: Path, data_dir: Path) -> list[str]:
    """What a release commit holds: the lock, the params and data pointer it was made from, the small
    metrics DVC keeps in git, and the .gitignore files DVC writes next to its outputs."""
    root = Path(root).resolve()
    candidates = [root / "dvc.lock", Path(params_file), Path(f"{data_dir}.dvc"), root / "metrics"]
    listed = git(root, "ls-files", "--others", "--modified", "--exclude-standard", "--", "*.gitignore")
    candidates += [root / line for line in listed.stdout.splitlines()]
    return sorted({Path(c).resolve().relative_to(root).as_posix() for c in candidates if Path(c).exists()})


def tag_name(tag_format: str, model: str, version: str | int) -> str:
    return tag_format.format(model=model, version=version)


def tag_commit(root: Path, tag: str) -> str | None:
    result = git(root, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}", check=False)
    return result.stdout.strip() or None


def commit_and_tag(root: Path, files: list[str], tag: str, message: str) -> GitRelease:
    """Commit `files` (only those, whatever else is staged) and tag the commit. Idempotent: when nothing
    changed since a commit that already carries `tag`, the tag is reused."""
    root = Path(root)
    git(root, "add", "--", *files)
    staged = git(root, "diff", "--cached", "--quiet", "--", *files, check=False).returncode != 0
    if staged:
        git(root, *_identity_args(root), "commit", "--quiet", "-m", message, "--", *files)
    head = git(root, "rev-parse", "HEAD").stdout.strip()
    existing = tag_commit(root, tag)
    if existing == head:
        return GitRelease(tag=tag, commit=head, created=False)
    if existing:
        raise EdgepipeError(
            f"git tag {tag} already exists on commit {existing[:12]}, not on this release ({head[:12]}). "
            "The MLflow registry and git disagree on the version numbers: run `edgepipe verify-release "
            f"{tag}`, then delete the stale tag (`git tag -d {tag}`) if it belongs to no MLflow version."
        )
    git(root, *_identity_args(root), "tag", "-a", tag, "-m", message)
    return GitRelease(tag=tag, commit=head, created=True)


def delete_tag(root: Path, tag: str) -> None:
    """Undo a tag whose MLflow registration failed, so the registries never disagree."""
    git(root, "tag", "-d", tag, check=False)


def locked_md5_at(root: Path, rev: str, rel_path: str) -> str:
    """The md5 the dvc.lock of a git revision records for an output."""
    shown = git(root, "show", f"{rev}:dvc.lock", check=False)
    if shown.returncode != 0:
        raise EdgepipeError(f"{rev}: no dvc.lock in that revision ({shown.stderr.strip()})")
    lock = yaml.safe_load(shown.stdout) or {}
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if out["path"] == rel_path:
                return out["md5"]
    raise EdgepipeError(f"{rev}: dvc.lock records no output {rel_path}")
