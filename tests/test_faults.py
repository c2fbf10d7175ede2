"""Real faults against real parts, run as a user runs edgepipe: `python -m flows.cli run` in a temporary git +
DVC project, against the session's Prefect server (a team's setup; scenario 3 without one, so Prefect starts
its temporary server), no mocks.

Each scenario copies the session's trained project (tests/conftest.py `trained`): the steps they are about
are the flow's, not the training.

1. The MLflow server is down at registration, then comes back (a real `mlflow server` on the same port):
   the first run fails clearly with everything on disk and in the DVC remote but nothing registered or
   tagged; the next run registers exactly once, and a third registers nothing new.
2. The DVC remote is missing, or is a regular file: the push fails with a message naming the remote
   problem; the local cache is intact; nothing is registered or tagged.
3. A run is killed (SIGKILL to its whole process group) during the export step: no partial file, dvc.lock
   records only the steps that finished, and the next run resumes from them.
4. Two runs start at once on one project (every step done, nothing released): one waits for the other
   while it releases; one version, one tag, clean stores.

With EDGEPIPE_FAULTS_REPORT=/some/file.md set, the messages and timings measured here are written there
(merged across pytest sessions through a .json file beside it); nothing is written otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components import versioning
from components.config import load_params
from components.hashing import file_digest
from components.locking import project_lock
from components.paths import ProjectPaths
from components.stages import STAGES
from conftest import DVC, GIT, free_port, run, wait_for, write_params
from flows.servers import start_mlflow_server

pytestmark = pytest.mark.slow

MODEL = "tiny-patterns"
FIRST_TAG = f"{MODEL}@v1"
VENV_BIN = Path(sys.executable).parent
ALL_STAGES = [stage.name for stage in STAGES]
BEFORE_EXPORT = ["prepare", "train", "prune", "qat"]  # the steps that finish before export_tflite starts
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| ")
TASK_FINISHED = re.compile(r"Task run '([^']+)-[0-9a-f]+' - Finished in state (\w+)")


# --- running edgepipe as a user does -------------------------------------------------------------------


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    seconds: float


def cli_env(prefect_home: Path, tracking_uri: str, prefect_api: str | None = None) -> dict[str, str]:
    """The user's shell: a Prefect home of its own, the venv's tools first on PATH, the tracking store from
    MLFLOW_TRACKING_URI. `prefect_api`: the API URL of a running Prefect server (a team's, here the
    session's); None: no server, so each run starts Prefect's temporary one."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    if prefect_api is not None:
        env["PREFECT_API_URL"] = prefect_api
    env["PREFECT_HOME"] = str(prefect_home)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_cli(root: Path, env: dict, name: str) -> tuple[subprocess.Popen, Path, Path]:
    """`edgepipe run` in `root` (its own copy of the code, as `python -m` runs it from the project folder),
    in a new session so that it and everything it spawns can be killed as one process group."""
    out, err = root.parent / f"{name}.stdout", root.parent / f"{name}.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run"],
            cwd=root,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process, out, err


def finish_cli(process: subprocess.Popen, out: Path, err: Path, started: float, timeout=600) -> CliRun:
    try:
        code = process.wait(timeout=max(1.0, started + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        process.wait()
        raise AssertionError(f"edgepipe run did not finish within {timeout} s; see {err}") from None
    return CliRun(code, out.read_text(), err.read_text(), time.monotonic() - started)


def run_cli(root: Path, env: dict, name: str) -> CliRun:
    started = time.monotonic()
    return finish_cli(*start_cli(root, env, name), started)


def as_an_ordinary_user() -> tuple[str, ...]:
    """A command prefix under which file modes apply: root (CI, containers) ignores them through
    CAP_DAC_OVERRIDE; without it (util-linux's setpriv) root obeys them like any user."""
    if os.geteuid() != 0:
        return ()
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--")


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def live_group_members(pgid: int, wait: float = 10.0) -> list[int]:
    """Processes of a process group still alive after up to `wait` seconds (zombies do not count)."""
    deadline = time.monotonic() + wait
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.2)


def user_error(stderr: str) -> str:
    """The CLI's `edgepipe error: ...` message (it may span lines), up to the next log line."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("edgepipe error:"):
            message = [line]
            for more in lines[i + 1 :]:
                if LOG_LINE.match(more):
                    break
                message.append(more)
            return "\n".join(message).strip()
    return ""


def task_states(stderr: str) -> dict[str, str]:
    """Prefect's final state of each task run in a run's log: {'train': 'Skipped', 'report': 'Completed'}."""
    return {name: state for name, state in TASK_FINISHED.findall(stderr)}


def log_time(stderr: str, needle: str, since: datetime) -> float:
    """Seconds from `since` to the first log line containing `needle`. Prefect stamps lines with the time of
    day only (HH:MM:SS.mmm); counted modulo a day from `since`, a run that crosses midnight still orders."""
    for line in stderr.splitlines():
        if needle in line and (match := LOG_LINE.match(line)):
            stamp = datetime.strptime(match.group(1), "%H:%M:%S.%f").time()
            at = datetime.combine(since.date(), stamp)
            return (at - since).total_seconds() % 86400
    raise AssertionError(f"no log line contains {needle!r}")


# --- looking at the stores -----------------------------------------------------------------------------


def git_tags(root: Path) -> list[str]:
    return run(["git", "tag", "-l", f"{MODEL}@v*"], root).stdout.split()


def git_head(root: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], root).stdout.strip()


def model_versions(uri: str) -> list:
    return MlflowClient(uri).search_model_versions(f"name = '{MODEL}'")


def release_file(root: Path) -> Path:
    return ProjectPaths(root).export_dir / "model_int8.tflite"


def locked_stages(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def status_stages(root: Path) -> set[str]:
    """The stages `dvc status` reports as changed ('dvc.yaml:name' or 'name')."""
    return {key.split(":")[-1] for key in versioning.pipeline_status(root)}


def missing_from_cache(root: Path) -> list[str]:
    """Every file dvc.lock and data/raw.dvc record (folders through their .dir listing) that the local DVC
    cache does not hold."""
    cache = root / ".dvc" / "cache" / "files" / "md5"
    outs = [out for stage in locked_stages(root).values() for out in stage.get("outs", [])]
    outs += yaml.safe_load((root / "data" / "raw.dvc").read_text())["outs"]
    missing = []
    for out in outs:
        entry = cache / out["md5"][:2] / out["md5"][2:]
        if not entry.is_file():
            missing.append(out["path"])
        elif out["md5"].endswith(".dir"):
            for item in json.loads(entry.read_text()):
                if not (cache / item["md5"][:2] / item["md5"][2:]).is_file():
                    missing.append(f"{out['path']}/{item['relpath']}")
    return missing


def remote_files(remote: Path) -> list[Path]:
    return [p for p in remote.rglob("*") if p.is_file()] if remote.is_dir() else []


def temporary_leftovers(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    """What an interrupted write could leave: *.tmp files, and atomic_path's hidden `.<name>.<random>`
    folders; returned as (holding a file, empty)."""
    holding, empty = [], []
    for folder in folders:
        for p in folder.rglob("*") if folder.is_dir() else []:
            if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name != ".gitignore"):
                if p.is_file() or any(q.is_file() for q in p.rglob("*")):
                    holding.append(p)
                else:
                    empty.append(p)
    return holding, empty


def assert_complete_model(path: Path) -> None:
    """The file is a whole model: LiteRT allocates a .tflite, onnx checks an .onnx."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_path=str(path)).allocate_tensors()
    elif path.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    else:
        raise AssertionError(f"unexpected file in the export folder: {path.name}")


# --- what was measured, for the closing note -----------------------------------------------------------

FINDINGS: dict[str, list[str]] = {}


def note(scenario: str, text: str) -> None:
    FINDINGS.setdefault(scenario, []).append(text)


def note_run(scenario: str, label: str, result: CliRun) -> None:
    message = user_error(result.stderr)
    note(scenario, f"{label}: exit {result.code} in {result.seconds:.1f} s")
    if message:
        note(scenario, f"{label} printed:\n\n```\n{message}\n```")


@pytest.fixture(scope="module", autouse=True)
def faults_report():
    yield
    target = os.environ.get("EDGEPIPE_FAULTS_REPORT")
    if not target or not FINDINGS:
        return
    target = Path(target)
    store = target.with_suffix(".json")
    merged = json.loads(store.read_text()) if store.is_file() else {}
    merged.update(FINDINGS)
    store.write_text(json.dumps(merged, indent=1))
    sections = [f"## {scenario}\n\n" + "\n\n".join(lines) for scenario, lines in sorted(merged.items())]
    target.write_text("# edgepipe faults (tests/test_faults.py)\n\n" + "\n\n".join(sections) + "\n")


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def prefect_home(faults_base) -> Path:
    """One user's Prefect home, shared by every run here (as on a developer's machine)."""
    home = faults_base / "prefect-home"
    home.mkdir()
    return home


@pytest.fixture(scope="module")
def outage(faults_base, prefect_home, trained, prefect_api):
    """Scenario 1, first run: MLFLOW_TRACKING_URI names a free port where nothing listens. The project is
    the session's trained one, every step done: the run pushes, then cannot register."""
    base = faults_base / "outage"
    root = trained.copy(trained.unreleased, base)
    write_params(root / "params.yaml", {"mlflow.retries": 1, "mlflow.retry_delay_seconds": 1})
    run([*GIT, "commit", "-q", "-m", "registration: one retry after 1 s", "params.yaml"], root)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    head = git_head(root)
    first = run_cli(root, cli_env(prefect_home, uri, prefect_api), "run1-server-down")
    note_run("1 MLflow server down, then back", "run 1 (nothing on the port)", first)
    # The project as the failed run left it: scenario 2 starts from a copy (every step cached).
    snapshot = base / "snapshot"
    shutil.copytree(root, snapshot, symlinks=True)
    return SimpleNamespace(
        base=base,
        root=root,
        remote=base / "remote",
        port=port,
        uri=uri,
        head=head,
        first=first,
        snapshot=snapshot,
    )


# --- 1. MLflow server down at registration, then back --------------------------------------------------


def test_registration_with_the_server_down_fails_clearly_and_keeps_everything_else(outage):
    root, first = outage.root, outage.first
    assert first.code == 2, first.stderr[-3000:]
    message = user_error(first.stderr)
    assert message.startswith("edgepipe error: MLflow tracking store"), first.stderr[-3000:]
    assert outage.uri in message and "is not reachable" in message and "run again" in message
    assert "Retry 1/1" in first.stderr  # mlflow.retries: 1 from params.yaml, then it gave up
    # the artifacts are on disk, recorded in dvc.lock and in the remote (pushed before registration)
    assert release_file(root).is_file()
    assert set(locked_stages(root)) == set(ALL_STAGES)
    assert versioning.pipeline_status(root) == {}
    assert remote_files(outage.remote)
    assert run([*DVC, "status", "-c"], root).stdout.strip().endswith("are in sync.")
    # nothing released: no tag, no release commit, no fallback local store
    assert git_tags(root) == []
    assert git_head(root) == outage.head
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()


def test_when_the_server_is_back_the_next_run_registers_exactly_once(outage, prefect_home, prefect_api):
    root, uri = outage.root, outage.uri
    env = cli_env(prefect_home, uri, prefect_api)
    scenario = "1 MLflow server down, then back"
    started = time.monotonic()
    # the same server `edgepipe serve` starts (flows.servers), on the port the failed run was pointed at
    server = start_mlflow_server("127.0.0.1", outage.port, outage.base, outage.base)
    server.wait_ready()
    note(scenario, f"real `mlflow server` answered /health after {time.monotonic() - started:.1f} s")
    # MLflow's job execution is off: no huey consumer processes competing with the pipeline for the CPU
    spawned = [" ".join(p.cmdline()) for p in psutil.Process(server.process.pid).children(recursive=True)]
    assert spawned and not [c for c in spawned if "huey_consumer" in c], spawned
    try:
        client = MlflowClient(uri)
        assert client.search_registered_models() == []  # the failed run registered nothing

        second = run_cli(root, env, "run2-server-up")
        note_run(scenario, "run 2 (server up)", second)
        assert second.code == 0, second.stderr[-3000:]
        assert f"Registered MLflow model {MODEL} version 1, git tag {FIRST_TAG}" in second.stdout
        # the flow's timing of the target's main file (an OpenMV H7: LiteRT's time, no budget)
        printed = " ".join(second.stdout.split())
        latency = r"Latency: tflite_int8 on litert [\d.]+ ms \(median, this machine; no budget\)"
        assert re.search(latency, printed), printed
        versions = model_versions(uri)
        assert len(versions) == 1
        version = versions[0]
        assert str(version.version) == "1"
        assert version.tags["git_tag"] == FIRST_TAG
        assert version.tags["sha256"] == file_digest(release_file(root))
        assert git_tags(root) == [FIRST_TAG]
        tagged = run(["git", "rev-list", "-n", "1", FIRST_TAG], root).stdout.strip()
        assert version.tags["git_commit"] == tagged == git_head(root)
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
        states = task_states(second.stderr)
        assert all(states[stage] == "Skipped" for stage in ALL_STAGES), states

        head = git_head(root)
        third = run_cli(root, env, "run3-unchanged")
        note_run(scenario, "run 3 (unchanged)", third)
        assert third.code == 0, third.stderr[-3000:]
        assert f"MLflow model {MODEL} version 1 already holds these bytes" in third.stdout
        # decided from dvc status and the registry: no Prefect flow run, no step, no TensorFlow
        assert "Unchanged: dvc.lock records every step" in third.stdout
        assert "Beginning flow run" not in third.stderr and "Validation matrix" in third.stdout
        assert [str(v.version) for v in model_versions(uri)] == ["1"]
        assert git_tags(root) == [FIRST_TAG] and git_head(root) == head
        assert versioning.pipeline_status(root) == {}
    finally:
        server.stop()
    assert live_group_members(server.process.pid) == []


# --- 2. DVC remote missing or unwritable ---------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_faults(outage, faults_base):
    """A copy of scenario 1's project after its failed run: every step is done and cached, nothing is
    registered or tagged. Its own MLflow store."""
    base = faults_base / "remote-faults"
    base.mkdir()
    root = base / "project"
    shutil.copytree(outage.snapshot, root, symlinks=True)
    return SimpleNamespace(root=root, uri=f"sqlite:///{base / 'mlflow.db'}", head=git_head(root), base=base)


def assert_push_failed_and_nothing_else_changed(project, result: CliRun) -> str:
    assert result.code == 2, result.stderr[-3000:]
    message = user_error(result.stderr)
    assert message.startswith("edgepipe error: DVC push to remote"), result.stderr[-3000:]
    assert "the local cache is intact, run again" in message
    assert "Task run 'register-" not in result.stderr  # never got that far
    assert_nothing_else_changed(project)
    return message


def assert_nothing_else_changed(project) -> None:
    """After a failed push: workspace, dvc.lock and cache agree, every step still recorded, nothing
    registered, no tag, the same commit."""
    root = project.root
    assert versioning.pipeline_status(root) == {}
    assert missing_from_cache(root) == []
    assert set(locked_stages(root)) == set(ALL_STAGES)
    assert model_versions(project.uri) == [] and MlflowClient(project.uri).search_registered_models() == []
    assert git_tags(root) == [] and git_head(root) == project.head


def test_no_dvc_remote_fails_the_push_and_keeps_the_cache(remote_faults, prefect_home, prefect_api):
    root = remote_faults.root
    run([*DVC, "remote", "remove", "local"], root)
    result = run_cli(root, cli_env(prefect_home, remote_faults.uri, prefect_api), "run-no-remote")
    note_run("2a DVC remote removed", "run", result)
    message = assert_push_failed_and_nothing_else_changed(remote_faults, result)
    assert "no remote specified" in message and "dvc remote add -d" in message
    assert "Task run 'dvc-push-" in result.stderr and "Retry " not in result.stderr  # a user error: no retry


# --- 3. a run killed during the export step ------------------------------------------------------------


@pytest.fixture(scope="module")
def killed(faults_base, prefect_home, trained):
    """Scenario 3: `edgepipe run` on the session's project trained through qat, with no Prefect server
    configured, SIGKILLed (its whole process group: the CLI and Prefect's temporary server) as soon as the
    export step has written its first file. The other scenarios' runs use the session's Prefect server."""
    base = faults_base / "killed"
    root = trained.copy(trained.through_qat, base)
    env = cli_env(prefect_home, f"sqlite:///{base / 'mlflow.db'}")
    export_dir = ProjectPaths(root).export_dir
    started = time.monotonic()
    process, _, err = start_cli(root, env, "run-killed")
    try:
        while process.poll() is None and time.monotonic() - started < 600:
            if export_dir.is_dir() and any(p.suffix == ".tflite" for p in export_dir.iterdir()):
                break
            time.sleep(0.02)
    finally:
        kill_group(process.pid)
        code = process.wait()
    seen = sorted(p.name for p in export_dir.iterdir()) if export_dir.is_dir() else []
    note(
        "3 SIGKILL during export",
        f"killed after {time.monotonic() - started:.1f} s (exit {code}); models/export then held {seen}",
    )
    return SimpleNamespace(
        base=base,
        root=root,
        uri=env["MLFLOW_TRACKING_URI"],
        code=code,
        pgid=process.pid,
        stderr=err.read_text(),
        lock=(root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else "",
    )


def test_a_killed_run_leaves_no_partial_file_and_records_only_finished_steps(killed):
    root = killed.root
    assert killed.code == -signal.SIGKILL, "the run finished before the export step was seen"
    assert live_group_members(killed.pgid) == []  # the CLI and Prefect's temporary server are gone
    paths = ProjectPaths(root)
    exported = sorted(paths.export_dir.iterdir())
    assert any(p.suffix == ".tflite" for p in exported)  # killed mid-export, after its first file
    for entry in exported:
        if not entry.name.startswith("."):
            assert_complete_model(entry)  # every file under its final name is a whole model
    holding, empty = temporary_leftovers([paths.models_dir, paths.prepared_dir, paths.metrics_dir])
    if empty:
        note("3 SIGKILL during export", f"empty temporary folders left: {[str(p) for p in empty]}")
    assert holding == [], "half-written files left behind"
    lock = yaml.safe_load(killed.lock)["stages"]  # the lock file is whole YAML
    assert set(lock) == set(BEFORE_EXPORT)
    assert status_stages(root) == set(ALL_STAGES) - set(BEFORE_EXPORT)
    assert "export_tflite" not in task_states(killed.stderr)  # it never finished
    assert git_tags(root) == []


def test_the_next_run_resumes_from_the_steps_dvc_lock_recorded(killed, prefect_home, prefect_api):
    root = killed.root
    paths = ProjectPaths(root)
    finished = [paths.prepared_dir / "train.npz", paths.float_model, paths.pruned_model, paths.qat_weights]
    before = {p: p.stat().st_mtime_ns for p in finished}
    locked_before = yaml.safe_load(killed.lock)["stages"]
    result = run_cli(root, cli_env(prefect_home, killed.uri, prefect_api), "run-after-kill")
    note_run("3 SIGKILL during export", "re-run", result)
    assert result.code == 0, result.stderr[-3000:]
    assert "waiting for it to finish" not in result.stderr  # the killed run's lock died with it
    states = task_states(result.stderr)
    for stage in BEFORE_EXPORT:
        assert states.get(stage) == "Skipped", (stage, states)
    assert all(states[stage] == "Completed" for stage in set(ALL_STAGES) - set(BEFORE_EXPORT)), states
    assert {p: p.stat().st_mtime_ns for p in finished} == before
    locked_after = locked_stages(root)
    assert {stage: locked_after[stage] for stage in BEFORE_EXPORT} == locked_before
    assert set(locked_after) == set(ALL_STAGES)
    assert versioning.pipeline_status(root) == {}
    assert [str(v.version) for v in model_versions(killed.uri)] == ["1"]
    assert git_tags(root) == [FIRST_TAG]
    assert temporary_leftovers([paths.models_dir]) == ([], [])


# --- 4. two runs at once -------------------------------------------------------------------------------


def test_two_runs_started_at_once_serialise_and_release_once(faults_base, prefect_home, trained, prefect_api):
    """On the session's project with every step done but nothing released, two runs wait on the project
    lock (held by the test until both say they are waiting), then race for it at the same instant: one
    pushes and releases (git commit and tag, MLflow version) while the other waits again; that one then
    finds every step recorded and the release registered."""
    base = faults_base / "concurrent"
    root = trained.copy(trained.unreleased, base)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = cli_env(prefect_home, uri, prefect_api)
    started, started_at = time.monotonic(), datetime.now()
    held = project_lock(root, load_params(root / "params.yaml").orchestration)
    held.acquire()
    try:
        launched = [start_cli(root, env, f"run-concurrent-{i}") for i in (1, 2)]
        for process, _, err in launched:
            wait_for(
                lambda err=err, process=process: (
                    "another edgepipe run holds" in err.read_text() or process.poll() is not None
                ),
                "both runs to wait for the project lock",
                err,
                timeout=300,
            )
    finally:
        held.release()
    results = [finish_cli(*job, started) for job in launched]
    scenario = "4 two runs at once (every step done, nothing released)"
    for i, result in enumerate(results, 1):
        note_run(scenario, f"run {i} (seconds from the common start)", result)
    assert [r.code for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
    wait_lines = [
        next(line for line in r.stderr.splitlines() if "another edgepipe run holds" in line) for r in results
    ]
    note(scenario, f"each run logged: `{wait_lines[0]}`")
    assert all(
        f"{root / '.dvc' / 'tmp' / 'edgepipe-run.lock'}; waiting for it to finish" in line
        for line in wait_lines
    )
    # serialised: the run that got the lock second started its first step only after the other registered
    holder, waiter = sorted(results, key=lambda r: log_time(r.stderr, "Task run 'ingest-", started_at))
    assert log_time(waiter.stderr, "Task run 'ingest-", started_at) > log_time(
        holder.stderr, "Task run 'register-", started_at
    )
    assert f"Registered MLflow model {MODEL} version 1, git tag {FIRST_TAG}" in holder.stdout
    assert f"MLflow model {MODEL} version 1 already holds these bytes" in waiter.stdout
    waiter_states = task_states(waiter.stderr)
    assert all(waiter_states[stage] == "Skipped" for stage in ALL_STAGES), waiter_states

    assert versioning.pipeline_status(root) == {}
    assert set(locked_stages(root)) == set(ALL_STAGES)
    fsck = subprocess.run(["git", "fsck", "--full"], cwd=root, capture_output=True, text=True)
    assert fsck.returncode == 0 and not re.search(r"^(error|missing|broken)", fsck.stdout + fsck.stderr, re.M)
    assert [str(v.version) for v in model_versions(uri)] == ["1"]
    assert git_tags(root) == [FIRST_TAG]
    assert run([*DVC, "status", "-c"], root).stdout.strip() == "Cache and remote 'local' are in sync."


# --- more of scenarios 2 and 1 ----------------------------------------------------------------------


# The remote's kind of failure (a file, no write permission) is in DVC's push; what `edgepipe run` does
# with a failed push (exit 2, no retry, nothing registered or tagged) is checked above on a missing remote.
# So these two call the push itself, as the flow's push task calls it, in a process of its own.
PUSH = (
    "import sys; from pathlib import Path; from components.errors import EdgepipeError; "
    "from components.versioning import push\n"
    "try:\n    push(Path('.'))\nexcept EdgepipeError as error:\n    print(error); sys.exit(2)"
)


def push_fails_and_keeps_everything(project, remote: Path, prefix: tuple[str, ...] = ()) -> str:
    """Point the project's default remote at `remote`, push, and check that the push failed with a user
    error and changed nothing else."""
    root = project.root
    run([*DVC, "remote", "add", "--force", "--default", "local", str(remote)], root)
    pushed = subprocess.run([*prefix, sys.executable, "-c", PUSH], cwd=root, capture_output=True, text=True)
    assert pushed.returncode == 2, pushed.stdout + pushed.stderr[-3000:]
    message = pushed.stdout.strip()
    assert message.startswith("DVC push to remote") and "the local cache is intact, run again" in message
    assert_nothing_else_changed(project)
    return message


def test_a_remote_that_is_a_file_fails_the_push_with_a_clear_message(remote_faults):
    """The remote's path named (DVC raises a bare NotADirectoryError here; components.versioning.push turns
    it into a user error)."""
    not_a_dir = remote_faults.base / "not-a-dir"
    not_a_dir.write_text("a regular file where the remote folder should be\n")
    message = push_fails_and_keeps_everything(remote_faults, not_a_dir)
    note("2b DVC remote is a regular file", f"the push said:\n\n```\n{message}\n```")
    assert str(not_a_dir) in message


def test_a_remote_folder_without_write_permission_fails_the_push_with_a_clear_message(remote_faults):
    """A shared remote the user may read but not write (mode 555): the remote's path and the OS's
    `Permission denied` named, nothing half-written in the remote."""
    read_only = remote_faults.base / "read-only-remote"
    read_only.mkdir()
    read_only.chmod(0o555)
    message = push_fails_and_keeps_everything(remote_faults, read_only, prefix=as_an_ordinary_user())
    note("2c DVC remote not writable", f"the push said:\n\n```\n{message}\n```")
    assert str(read_only) in message and "Permission denied" in message
    assert list(read_only.iterdir()) == []


def test_an_unreachable_server_is_reported_without_a_traceback(outage):
    """A user error is one message; Prefect logs the failed register task and flow with their tracebacks."""
    tracebacks = outage.first.stderr.count("Traceback (most recent call last)")
    note("1 MLflow server down, then back", f"tracebacks in run 1's stderr: {tracebacks}")
    assert "Traceback" not in outage.first.stderr
