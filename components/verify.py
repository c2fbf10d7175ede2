"""verify: do git, DVC and MLflow agree about a release? `edgepipe verify-release <tag>`.

Reads the tag's dvc.lock, the bytes DVC returns for that revision (local cache or remote), the MLflow
model version tagged with it and the file inside that model version, and compares them.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dvc.api
import mlflow
from mlflow.tracking import MlflowClient

from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, get_format
from components.registry import redacted
from components.release import locked_md5_at, tag_commit


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str


def _digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def find_version(uri: str, tag: str):
    versions = MlflowClient(uri).search_model_versions(f"tags.git_tag = '{tag}'")
    if not versions:
        raise EdgepipeError(f"no MLflow model version in {redacted(uri)} carries git_tag={tag}")
    if len(versions) > 1:
        names = ", ".join(f"{v.name} v{v.version}" for v in versions)
        raise EdgepipeError(f"several MLflow model versions carry git_tag={tag}: {names}")
    return versions[0]


def verify_release(root: Path, tag: str, uri: str) -> list[Check]:
    root = Path(root).resolve()
    commit = tag_commit(root, tag)
    if commit is None:
        raise EdgepipeError(f"git tag {tag} not found in {root} (`git tag -l` lists the releases)")
    rel = get_format(RELEASE_FORMAT).path(Path("models/export")).as_posix()
    lock_md5 = locked_md5_at(root, tag, rel)
    version = find_version(uri, tag)
    tags = version.tags
    with dvc.api.open(rel, repo=str(root), rev=tag, mode="rb") as handle:
        dvc_sha256, dvc_md5 = _digests(handle.read())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=tmp, tracking_uri=uri))
        files = sorted(local.rglob(f"*{Path(rel).suffix}"))
        if len(files) != 1:
            raise EdgepipeError(
                f"MLflow model {version.name} v{version.version} holds {len(files)} .tflite files"
            )
        mlflow_sha256, _ = _digests(files[0].read_bytes())
    label = f"{version.name} v{version.version}"
    return [
        Check(
            "git commit",
            tags.get("git_commit") == commit,
            f"{tag} -> {commit[:12]}; MLflow {tags.get('git_commit')}",
        ),
        Check(
            "dvc.lock md5",
            tags.get("dvc_md5") == lock_md5,
            f"{rel} at {tag}: {lock_md5}; MLflow {tags.get('dvc_md5')}",
        ),
        Check("DVC bytes md5", dvc_md5 == lock_md5, f"`dvc get --rev {tag}` bytes: {dvc_md5}"),
        Check(
            "DVC bytes sha256",
            dvc_sha256 == tags.get("sha256"),
            f"{dvc_sha256}; MLflow tag {tags.get('sha256')}",
        ),
        Check("MLflow file sha256", mlflow_sha256 == tags.get("sha256"), f"file in {label}: {mlflow_sha256}"),
    ]
