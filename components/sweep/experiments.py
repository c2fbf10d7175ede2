"""Each sweep candidate is a DVC experiment: `dvc exp run --temp -n NAME -S key=value ...` runs the whole
dvc.yaml pipeline in a copy of the workspace under .dvc/tmp/exps, so candidates run side by side without
touching the workspace, and commits the result to a git ref that `dvc exp show` lists and `dvc exp apply`
brings back. Stages whose command, deps and params match an earlier run are restored from DVC's run cache
instead of run again (how a sweep over prune settings trains once).

An experiment starts from HEAD plus the workspace's tracked changes: the data pointer (`data/raw.dvc`) is
staged first, or a project that has never committed it would give the experiment no data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.errors import EdgepipeError
from components.git_cli import fallback_identity, git
from components.results import ValidationReport
from components.sweep.plan import Candidate


@dataclass(frozen=True)
class ExperimentRun:
    candidate: Candidate
    rev: str | None  # the experiment's commit; None: it failed (see `error` and the log)
    log_file: Path
    error: str | None = None
    seconds: float = 0.0
    reused: tuple[str, ...] = ()  # steps DVC restored (run cache) instead of running


def stage_data_pointer(root: Path, data_dir: Path) -> None:
    """`git add` the data folder's .dvc file, so experiments (made from HEAD plus staged changes) see it."""
    pointer = Path(f"{data_dir}.dvc")
    if pointer.is_file():
        git(root, "add", "--", str(pointer.resolve().relative_to(root.resolve())))


def run_experiment(root: Path, candidate: Candidate, log_dir: Path) -> ExperimentRun:
    """Run one candidate as a DVC experiment in a temporary copy; its output goes to `log_dir/NAME.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{candidate.name}.log"
    command = ["dvc", "exp", "run", "--temp", "-n", candidate.name, *candidate.set_args()]
    started = time.monotonic()
    with log_file.open("w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        env = {**os.environ, **commit_identity(root)}
        done = subprocess.run(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - started
    reused = tuple(REUSED.findall(log_file.read_text(errors="replace")))
    if done.returncode != 0:
        return ExperimentRun(candidate, None, log_file, last_error(log_file), seconds, reused)
    rev = experiment_rev(root, candidate.name)
    if rev is None:
        error = "dvc exp run ended without an experiment ref"
        return ExperimentRun(candidate, None, log_file, error, seconds, reused)
    return ExperimentRun(candidate, rev, log_file, None, seconds, reused)


# what `dvc exp run` prints for a step it did not run: restored from the run cache, or already current in
# the baseline's dvc.lock
REUSED = re.compile(r"^Stage '(\w+)' (?:is cached - skipping run|didn't change, skipping)", re.MULTILINE)


def commit_identity(root: Path) -> dict[str, str]:
    """DVC commits each experiment and refuses without a git identity: the release's fallback one then."""
    identity = fallback_identity(root)
    if identity is None:
        return {}
    name, email = identity
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def last_error(log_file: Path) -> str:
    """The reason a candidate failed: edgepipe's own error line (what the step said), else DVC's."""
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    for marker in ("edgepipe error:", "Error:", "ERROR:"):  # the step's own words first, then DVC's
        found = [line for line in lines if line.startswith(marker)]
        if found:
            return found[0]
    return lines[-1] if lines else "no output"


def experiment_rev(root: Path, name: str) -> str | None:
    """The commit of the experiment `name` (refs/exps/<baseline>/<name>)."""
    refs = git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").stdout.splitlines()
    for line in refs:
        ref, _, rev = line.partition(" ")
        if ref.rsplit("/", 1)[-1] == name:
            return rev
    return None


def read_at(root: Path, rev: str, relpath: str) -> str:
    return git(root, "show", f"{rev}:{relpath}").stdout


def report_at(root: Path, rev: str, relpath: str = "metrics/validation.json") -> ValidationReport:
    return ValidationReport.model_validate(json.loads(read_at(root, rev, relpath)))


def cached_output(root: Path, rev: str, relpath: str) -> Path:
    """The file at `relpath` as the experiment made it, read from the DVC cache (no checkout): its md5 from
    the experiment's dvc.lock, through the directory listing when the file is inside an output folder."""
    lock = yaml.safe_load(read_at(root, rev, "dvc.lock"))
    cache = root / ".dvc" / "cache" / "files" / "md5"
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            path, md5 = out["path"], out["md5"]
            if path == relpath:
                return cache / md5[:2] / md5[2:]
            if relpath.startswith(path.rstrip("/") + "/") and md5.endswith(".dir"):
                listing = json.loads((cache / md5[:2] / md5[2:]).read_text())
                inner = relpath[len(path.rstrip("/")) + 1 :]
                for entry in listing:
                    if entry["relpath"] == inner:
                        return cache / entry["md5"][:2] / entry["md5"][2:]
    raise EdgepipeError(f"experiment {rev[:7]}: dvc.lock records no output {relpath}")


def apply_experiment(root: Path, name: str) -> None:
    """`dvc exp apply NAME`: the workspace gets the candidate's params, dvc.lock and outputs."""
    done = subprocess.run(["dvc", "exp", "apply", name], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgepipeError(f"dvc exp apply {name} failed: {(done.stderr or done.stdout).strip()}")
