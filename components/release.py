"""release: what a gate-passing run becomes, as one transaction (`release`): the MLflow run gets the
results; the outputs `dvc.lock` records are committed in git (with the params and the data's .dvc file
they were made from) and the commit tagged `<model>@v<N>`; MLflow version N of the release file is
registered with that tag; the champion alias moves to it if it scored at least as well. A failure after
tagging removes the tag, so a re-run registers exactly once. `dvc get --rev <tag>` or a checkout of the tag
+ `dvc pull` returns the released bytes.

The git half is plain git through subprocess: the project is the user's own repository, and git is what
they will use to look at it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from components import versioning
from components.atomic import read_json
from components.config import Params
from components.errors import EdgepipeError
from components.formats import FORMATS, RELEASE_FORMAT, get_format
from components.git_cli import fallback_identity, git
from components.hashing import file_digest
from components.paths import ProjectPaths
from components.prepare import describe_data
from components.register import RunRecord, register
from components.registry import (
    Registration,
    check_reachable,
    existing_version,
    next_version,
    promote_champion,
    tracking_uri,
)
from components.results import SCORE_TAGS, ValidationReport
from components.stages import STAGES
from components.tracking import identity_tags, input_tags


@dataclass(frozen=True)
class GitRelease:
    tag: str
    commit: str
    created: bool  # False: the tag already pointed at this commit (a re-run after a failed registration)


def release(
    params: Params,
    params_file: Path,
    paths: ProjectPaths,
    report: ValidationReport,
    stage_results: dict[str, dict],
    *,
    prefect_run_id: str,
    run_name: str | None,
    run_id: str | None,
) -> Registration:
    """Log the run's results to MLflow (`run_id`: the pipeline's run; None: a new run named `run_name`) and,
    when the gates passed, release: git commit + tag `<model>@v<N>`, MLflow version N tagged with it, the
    champion alias. `stage_results`: the metrics each step wrote (metrics/<step>.json)."""
    uri = tracking_uri(paths.root)
    check_reachable(uri)  # before touching git: a dead server changes nothing
    version_tags = release_tags(paths, report)
    git_release = None
    if (
        report.passed
        and params.mlflow.register_model
        and params.release.git_tag
        and existing_version(uri, params.model.name, version_tags["sha256"]) is None
    ):
        number = next_version(uri, params.model.name)
        git_release = tag_release(params, params_file, paths, number, version_tags["sha256"])
        version_tags["git_tag"] = git_release.tag
    data = read_json(paths.metrics_file("prepare"))
    # after the release commit: git_commit names the commit the tag points at
    run_tags = {**input_tags(data), **identity_tags(params, paths.root, prefect_run_id)}
    record = RunRecord(
        report=report,
        metrics=run_metrics(stage_results),
        files=run_files(paths),
        run_tags=run_tags,
        version_tags={**run_tags, **version_tags},
        run_name=run_name,
        description=describe_data(data) + "\n\n" + paths.report_file.read_text(),
        run_id=run_id,
    )
    try:
        registration = register(params, paths, record)
    except BaseException:
        if git_release is not None and git_release.created:
            delete_tag(paths.root, git_release.tag)
        raise
    if registration.version is None:
        return registration
    released = MlflowClient(uri).get_model_version(params.model.name, registration.version)
    champion = promote_champion(uri, params.model.name, registration.version, params.release.champion_alias)
    return replace(registration, git_tag=released.tags.get("git_tag"), champion=champion)


def release_accuracy(report: ValidationReport) -> float | None:
    """Top-1 test accuracy of the release file in LiteRT: what the champion alias compares (None: it did
    not load, so the gates have failed)."""
    return report.accuracy(RELEASE_FORMAT, "litert")


def release_tags(paths: ProjectPaths, report: ValidationReport) -> dict[str, str]:
    """The release file's identity in DVC and its score, as model version tags."""
    release_file = get_format(RELEASE_FORMAT).path(paths.export_dir)
    tags = {"sha256": file_digest(release_file), "dvc_md5": versioning.locked_md5(paths.root, release_file)}
    if (accuracy := release_accuracy(report)) is not None:
        tags[SCORE_TAGS[report.task]] = f"{accuracy:.6f}"
    return tags


def tag_release(
    params: Params, params_file: Path, paths: ProjectPaths, number: int, sha256: str
) -> GitRelease:
    """Commit the release files and tag the commit `<model>@v<number>` (MLflow's next version number)."""
    tag = tag_name(params.release.tag_format, params.model.name, number)
    files = release_files(paths.root, params_file, paths.raw_dir(params.data))
    filename = get_format(RELEASE_FORMAT).filename
    return commit_and_tag(paths.root, files, tag, f"Release {tag}: {filename} sha256 {sha256}")


def run_metrics(stage_results: dict[str, dict]) -> dict[str, float]:
    """The steps' figures the MLflow run shows beside the validation matrix."""
    mcu, train = stage_results["mcu"], stage_results["train"]
    metrics = {
        "sparsity": stage_results["qat"]["sparsity"],
        "mcu.arena_bytes": mcu["arena_bytes"],
        "mcu.flash_bytes": mcu["flash_bytes"],
    }
    # the float model's validation score: top-1 accuracy, or COCO mAP@0.5 for a detector
    for key in ("val_accuracy", "val_map_50", "val_map_50_95"):
        if key in train:
            metrics[f"float_{key}"] = train[key]
    if "latency" in stage_results:  # the flow's timing of the target's main file
        metrics["latency_ms"] = stage_results["latency"]["latency_ms"]
    if "openmv_input_error_steps" in mcu:  # the classifier's OpenMV input check
        metrics["mcu.openmv_input_error_steps"] = mcu["openmv_input_error_steps"]
    return metrics


def run_files(paths: ProjectPaths) -> tuple[Path, ...]:
    """What the MLflow run keeps: the exports, reports, MCU package, each step's metrics and curves."""
    files = [fmt.path(paths.export_dir) for fmt in FORMATS] + [paths.reports_dir, paths.mcu_dir]
    files += [stage.metrics(paths) for stage in STAGES] + [paths.release_predictions]
    files += [paths.history_file(name) for name in ("train", "prune", "qat")]
    return tuple(files)


def _identity_args(root: Path) -> list[str]:
    identity = fallback_identity(root)
    if identity is None:
        return []
    name, email = identity
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
