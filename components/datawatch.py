"""datawatch: has the dataset changed since the last time we said so? And `data add`: copy new images in.

The dataset's identity is a content hash of the image folder (components.hashing.tree_digest). A cheap
signature (paths, sizes, modification times) decides whether the content hash needs recomputing, so a
watcher can poll a large folder often. The last announced hash is kept in a small state file per project
(.edgepipe/, not in git); unchanged data announces nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.atomic import read_json, write_json
from components.config import DataConfig
from components.errors import EdgepipeError
from components.hashing import tree_digest
from components.image_folder import IMAGE_SUFFIXES
from components.paths import ProjectPaths

DATA_EVENT = "edgepipe.data.updated"


def dataset_resource_id(raw_dir: Path) -> str:
    """The Prefect event resource id of a dataset: one per data folder."""
    return f"edgepipe.dataset.{Path(raw_dir).resolve()}"


@dataclass(frozen=True)
class DataChange:
    raw_dir: Path
    sha256: str
    files: int
    previous: str | None  # the last announced hash; None: never announced

    @property
    def changed(self) -> bool:
        return self.sha256 != self.previous


def quick_signature(raw_dir: Path) -> str:
    """Paths, sizes and mtimes of every file: changes whenever a file is added, removed or rewritten."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(raw_dir).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(
            f"{path.relative_to(raw_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


class DataWatch:
    """Compares the data folder with the hash last announced for it (state in `state_file`)."""

    def __init__(self, raw_dir: Path, state_file: Path):
        self.raw_dir = Path(raw_dir).resolve()
        self.state_file = Path(state_file)
        self._signature: str | None = None
        self._sha256: str | None = None

    def _state(self) -> dict:
        return read_json(self.state_file) if self.state_file.is_file() else {}

    def current(self) -> str:
        if not self.raw_dir.is_dir():
            raise EdgepipeError(f"{self.raw_dir}: data folder not found (data.raw_dir in params.yaml)")
        signature = quick_signature(self.raw_dir)
        if signature != self._signature:  # something moved: hash the content
            self._signature, self._sha256 = signature, tree_digest(self.raw_dir)
        return self._sha256

    def check(self) -> DataChange:
        files = sum(1 for p in self.raw_dir.rglob("*") if p.is_file())
        return DataChange(self.raw_dir, self.current(), files, self._state().get(str(self.raw_dir)))

    def mark_announced(self, change: DataChange) -> None:
        state = self._state()
        state[str(self.raw_dir)] = change.sha256
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.state_file, state)

    def forget_announcement(self) -> None:
        """The announced data was not processed (its runs were cancelled): the next check reports a change.
        An empty hash, not a missing entry, which would make the next start take the data as its baseline."""
        self.mark_announced(DataChange(self.raw_dir, "", 0, None))


def project_data_watch(paths: ProjectPaths, data: DataConfig) -> DataWatch:
    """The watch of a project's data folder, its state in the project's .edgepipe/ folder."""
    return DataWatch(paths.raw_dir(data), paths.state_dir / "data-events.json")


def add_images(source: Path, raw_dir: Path, label: str | None = None) -> list[Path]:
    """Copy images into the data folder: `source` is a folder of class folders, or (with `label`) one
    image or a folder of images for that class. Existing files are never overwritten."""
    source = Path(source)
    if not source.exists():
        raise EdgepipeError(f"{source}: not found. Pass an image, a folder of images, or class folders.")
    if label is not None:
        if not label.strip() or "/" in label or label in (".", ".."):
            raise EdgepipeError(f"--label {label!r}: a class name must be a plain folder name")
        files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
        plan = [(p, Path(raw_dir) / label / p.name) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    elif source.is_dir():
        plan = [
            (p, Path(raw_dir) / p.parent.name / p.name)
            for folder in sorted(d for d in source.iterdir() if d.is_dir())
            for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        raise EdgepipeError(f"{source}: a single image needs --label CLASS (its class folder)")
    if not plan:
        raise EdgepipeError(
            f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found. Pass class folders "
            "(<source>/<class>/*.png), or --label CLASS with an image or a folder of images."
        )
    clashes = [str(dest) for _, dest in plan if dest.exists()]
    if clashes:
        raise EdgepipeError(
            f"{len(clashes)} file(s) already exist in the data folder, e.g. {clashes[0]}; rename them "
            "first (nothing was copied)."
        )
    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)  # a watcher never sees a half-copied image
    return [dest for _, dest in plan]
