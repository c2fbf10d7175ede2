"""The team stack under load and faults (`make stack-test`; CI runs it as its own step): PostgreSQL, the
Prefect and MLflow servers on it, two process workers on the `edgepipe` pool, and a tiny project deployed
there with `edgepipe deploy`, all real processes on this machine.

Load: a burst of new-data events from three processes and manual deployment runs at the same time.
The rule that says how many runs complete is flows.queued_runs' (a starting run cancels the queued runs it
covers). After every scenario the same "nothing lost" checks run (`check_nothing_lost`). The summary of
every scenario is printed last (tests/conftest.py, `pytest_terminal_summary`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import DVC, api, make_project_repo, run, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("stack-scenarios")]

MODEL = "tiny-patterns"  # conftest.TINY_PARAMS
BURST_PROCESSES, BURST_EVENTS, BURST_INTERVAL = 3, 10, 1.0  # 30 events in 10 s
MANUAL_RUNS = 3
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
STACK_SUMMARY: list[tuple[str, str]] = []  # (scenario, figures), printed by conftest at the end


def when(text: str | None) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class TeamStack:
    """The running stack and the REST calls the checks make."""

    def __init__(self, stack, project: Path, base: Path, artifacts: Path, urls: dict[str, str]):
        self.stack, self.project, self.base, self.artifacts = stack, project, base, artifacts
        self.urls = urls
        self.api_url, self.tracking = stack.prefect.url, stack.mlflow.url
        self.env = {**os.environ, "PREFECT_API_URL": self.api_url, "MLFLOW_TRACKING_URI": self.tracking}
        self.deployment_id = api(f"{self.api_url}/deployments/name/edgepipe/edgepipe", method="GET")["id"]

    def events(self, name: str, since: float) -> list[dict]:
        since_iso = datetime.fromtimestamp(since - 1).astimezone().isoformat()
        body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since_iso}}, "limit": 50}
        page = api(f"{self.api_url}/events/filter", body)
        found = list(page["events"])
        while page.get("next_page"):
            page = api(page["next_page"], method="GET")
            found += page["events"]
        return found

    def flow_runs(self) -> list[dict]:
        """The deployment's runs, without the cron schedule's runs that are not due yet."""
        body = {"deployments": {"id": {"any_": [self.deployment_id]}}, "limit": 200}
        runs = api(f"{self.api_url}/flow_runs/filter", body)
        return [r for r in runs if not (r["auto_scheduled"] and when(r["expected_start_time"]) > time.time())]

    def run_deployment(self) -> dict:
        return api(f"{self.api_url}/deployments/{self.deployment_id}/create_flow_run", {})

    def wait_until_final(self, known: int, timeout: float = 900) -> list[dict]:
        """Every run of the deployment in a final state (and at least `known` of them), for 15 s in a row."""
        deadline, settled_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            runs = self.flow_runs()
            final = all(r["state"]["type"] in FINAL for r in runs)
            if final and len(runs) >= known:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 15:
                    return runs
            else:
                settled_since = None
            time.sleep(2)
        states = {r["name"]: r["state"]["name"] for r in self.flow_runs()}
        raise AssertionError(f"runs not final after {timeout:g} s: {states}; logs in {self.base / 'state'}")

    def add_data(self, seed: int) -> float:
        """One new image and its new-data event (one process of the burst, one event); the time before."""
        before = time.time()
        script = Path(__file__).with_name("stack_burst.py")
        cmd = [sys.executable, str(script), str(self.project), "--label", "bars", "--seed", str(seed)]
        done = subprocess.run([*cmd, "--events", "1"], capture_output=True, text=True, env=self.env)
        assert done.returncode == 0 and done.stdout.startswith("{"), done.stdout + done.stderr
        return before

    @property
    def log(self) -> Path:
        """What a timed-out wait shows: the first worker's log (its flow runs' lines included)."""
        return self.base / "state" / "logs" / "worker-1.log"

    def run_created_after(self, since: float, timeout: float = 120) -> dict:
        made = wait_for(
            lambda: [r for r in self.flow_runs() if when(r["created"]) >= since],
            "a flow run of the new data",
            self.log,
            timeout,
            every=1,
        )
        return min(made, key=lambda r: when(r["created"]))

    def flow_run(self, run_id: str) -> dict:
        return api(f"{self.api_url}/flow_runs/{run_id}", method="GET")

    def wait_for_task(self, run_id: str, task: str, timeout: float = 600) -> None:
        """Until the run's task `task` is running (polled 5 times a second: registration is short)."""
        body = {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = api(f"{self.api_url}/task_runs/filter", body)
            states = {t["name"].rsplit("-", 1)[0]: t["state"]["type"] for t in tasks}
            if states.get(task) == "RUNNING":
                return
            assert states.get(task) in (None, "PENDING"), f"missed {task} running: it is {states[task]}"
            assert self.flow_run(run_id)["state"]["type"] in ("PENDING", "RUNNING", "SCHEDULED")
            time.sleep(0.2)
        raise AssertionError(f"{task} did not start within {timeout:g} s")

    def wait_final(self, run_id: str, timeout: float = 600) -> dict:
        def final() -> dict | None:
            try:
                found = self.flow_run(run_id)
            except OSError:  # the server is being restarted
                return None
            return found if found["state"]["type"] in FINAL else None

        return wait_for(final, f"flow run {run_id} to end", self.log, timeout, every=2)

    def rerun(self) -> dict:
        """What an operator does after a fault: run the deployment again; it must complete."""
        done = self.wait_final(self.run_deployment()["id"])
        assert done["state"]["type"] == "COMPLETED", done["state"]
        return done

    def model_versions(self) -> list:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking).search_model_versions(f"name='{MODEL}'")


def check_nothing_lost(team: TeamStack) -> dict:
    """The checks after every scenario: one MLflow version per released sha256, git tags and versions one to
    one, `verify-release` passing for every tag, the DVC workspace and remote in sync with dvc.lock."""
    versions = team.model_versions()
    shas = [v.tags["sha256"] for v in versions]
    assert len(shas) == len(set(shas)), f"duplicate MLflow versions of one file: {shas}"
    tags = run(["git", "tag", "-l", f"{MODEL}@v*"], team.project).stdout.split()
    assert sorted(tags) == sorted(v.tags["git_tag"] for v in versions)
    assert sorted(tags) == sorted(f"{MODEL}@v{v.version}" for v in versions)
    for tag in tags:
        verified = subprocess.run(
            [sys.executable, "-m", "flows.cli", "verify-release", tag, "--project-dir", str(team.project)],
            capture_output=True,
            text=True,
            env=team.env,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    status = run([*DVC, "status"], team.project).stdout
    assert "Data and pipelines are up to date" in status, status
    remote = run([*DVC, "status", "--cloud"], team.project).stdout
    assert "Cache and remote 'local' are in sync" in remote, remote
    return {"versions": len(versions), "tags": len(tags)}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The stack on a fresh PostgreSQL cluster, and the tiny project deployed on its pool."""
    from flows.stack import start_local_postgres, start_stack

    base = tmp_path_factory.mktemp("team")
    project = make_project_repo(base / "project")
    (base / "remote").mkdir()
    artifacts = base / "mlartifacts"
    postgres, urls = start_local_postgres()
    try:
        stack = start_stack(project, base / "state", urls, artifacts, workers=2)
    except BaseException:
        postgres.remove()
        raise
    stack.postgres = postgres
    env = {**os.environ, "PREFECT_API_URL": stack.prefect.url, "MLFLOW_TRACKING_URI": stack.mlflow.url}
    try:
        deployed = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy", "--project-dir", str(project)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield TeamStack(stack, project, base, artifacts, urls)
    finally:
        stack.stop()


def burst(team: TeamStack) -> tuple[list[dict], list[dict]]:
    """BURST_PROCESSES processes each adding an image and emitting the event BURST_EVENTS times, and
    MANUAL_RUNS deployment runs queued at once in the middle of it. Returns the events sent, the runs made."""
    script = Path(__file__).with_name("stack_burst.py")
    labels = ("bars", "stripes", "diagonal")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(team.project), "--label", labels[i % 3], "--seed", str(i)]
            + ["--events", str(BURST_EVENTS), "--interval", str(BURST_INTERVAL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=team.env,
        )
        for i in range(BURST_PROCESSES)
    ]
    time.sleep(BURST_EVENTS * BURST_INTERVAL / 2)
    manual = [team.run_deployment() for _ in range(MANUAL_RUNS)]
    sent = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        sent += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return sent, manual


def test_a_burst_of_new_data_events_and_manual_runs_loses_nothing(team):
    """A first event's run is training when the burst comes: it completes on the data it read, one run
    completes on everything the burst added, and every other run is cancelled naming that one."""
    started = time.time()
    first = team.run_created_after(team.add_data(seed=100))["id"]
    team.wait_for_task(first, "train")
    burst_sent, manual = burst(team)
    assert len(burst_sent) >= BURST_PROCESSES  # every process saw the folder change at least once
    sent = [None, *burst_sent]  # the first event's line is not kept
    runs = team.wait_until_final(known=len(sent) + MANUAL_RUNS)
    seconds = time.time() - started

    # every event sent reached the server and the deployment's trigger made exactly one run of it
    stored = team.events("edgepipe.data.updated", started)
    assert len(stored) == len(sent)
    actions = team.events("prefect.automation.action.executed", started)
    run_of_event = {}
    for action in actions:
        related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in action["related"]}
        if "flow-run" in related and "triggering-event" in related:
            run_of_event[related["triggering-event"].removeprefix("prefect.event.")] = related[
                "flow-run"
            ].removeprefix("prefect.flow-run.")
    assert {e["id"] for e in stored} <= set(run_of_event), "an event made no flow run"
    by_id = {r["id"]: r for r in runs}
    assert len(runs) == len(stored) + MANUAL_RUNS and set(run_of_event.values()) <= set(by_id)
    assert {m["id"] for m in manual} <= set(by_id)

    # the rule (flows.queued_runs): every run completed, or was cancelled naming a completed run that
    # started after it was created; nothing failed or crashed
    completed = [r for r in runs if r["state"]["type"] == "COMPLETED"]
    cancelled = [r for r in runs if r["state"]["type"] == "CANCELLED"]
    assert len(completed) + len(cancelled) == len(runs), {r["name"]: r["state"]["name"] for r in runs}
    coverer = {}
    for r in cancelled:
        message = r["state"]["message"] or ""
        assert message.startswith("covered by flow run "), message
        cover = by_id[message.split("(", 1)[1].split(")", 1)[0]]
        assert cover["state"]["type"] == "COMPLETED" and when(cover["start_time"]) >= when(r["created"])
        coverer[r["id"]] = cover
    # and no more completed than the rule allows: a run that completed after another was created after
    # that other one started (else the other would have covered it)
    order = sorted(completed, key=lambda r: when(r["start_time"]))
    for earlier, later in zip(order, order[1:], strict=False):
        assert when(later["created"]) > when(earlier["start_time"]), (earlier["name"], later["name"])
    # the last run to start read the folder after the last event: it trained on all of the burst's data
    assert when(order[-1]["start_time"]) > max(when(e["occurred"]) for e in stored)

    # trigger-to-start: from an event to the start of the run that trained on its data
    latencies = []
    for event in stored:
        own = by_id[run_of_event[event["id"]]]
        start = (coverer.get(own["id"]) or own)["start_time"]
        latencies.append(when(start) - when(event["occurred"]))
    made = [when(by_id[run_of_event[e["id"]]]["created"]) - when(e["occurred"]) for e in stored]
    released = check_nothing_lost(team)
    figures = {
        "events sent": len(sent),
        "manual runs": MANUAL_RUNS,
        "flow runs": len(runs),
        "completed": len(completed),
        "cancelled (covered)": len(cancelled),
        "versions": released["versions"],
        "duplicates": 0,
        "losses": 0,
        "event->run created p50/p90 s": f"{np.percentile(made, 50):.1f}/{np.percentile(made, 90):.1f}",
        "trigger->start p50/p90 s": f"{np.percentile(latencies, 50):.1f}/{np.percentile(latencies, 90):.1f}",
        "seconds": f"{seconds:.0f}",
    }
    STACK_SUMMARY.append(("load", "  ".join(f"{k}: {v}" for k, v in figures.items())))


def record_fault(name: str, started: float, faulted: dict, rerun: dict | None, team: TeamStack) -> None:
    released = check_nothing_lost(team)
    figures = {
        "faulted run": faulted["state"]["type"],
        **({"register attempts": faulted["register attempts"]} if "register attempts" in faulted else {}),
        "re-run": rerun["state"]["type"] if rerun else "-",
        "versions": released["versions"],
        "duplicates": 0,
        "losses": 0,
        "seconds": f"{time.time() - started:.0f}",
    }
    STACK_SUMMARY.append((f"fault: {name}", "  ".join(f"{k}: {v}" for k, v in figures.items())))


def test_prefect_server_killed_mid_run_and_restarted(team):
    """kill -9 of the Prefect server (its whole process tree) while a run trains, then a restart on the same
    port and database: the run ends in a final state, and a re-run completes the work."""
    from flows.servers import PREFECT_DATABASE_VAR, start_prefect_server

    started = time.time()
    run_id = team.run_created_after(team.add_data(seed=101))["id"]
    team.wait_for_task(run_id, "train")
    server = team.stack.prefect
    server.kill()
    time.sleep(3)
    restarted = start_prefect_server(
        "127.0.0.1", server.port, team.base / "state", team.urls[PREFECT_DATABASE_VAR], unprivileged=True
    )
    team.stack.prefect = restarted
    restarted.wait_ready()
    faulted = team.wait_final(run_id)
    rerun = team.rerun()
    record_fault("prefect server kill -9", started, faulted, rerun, team)


def test_postgresql_restarted_mid_registration(team):
    """PostgreSQL (both servers' database) restarted while the register task runs: no half-registered
    version; the registration's retry (or a re-run) registers the file once."""
    started = time.time()
    before = {v.version for v in team.model_versions()}
    run_id = team.run_created_after(team.add_data(seed=102))["id"]
    team.wait_for_task(run_id, "register")
    team.stack.postgres.restart()
    faulted = team.wait_final(run_id)
    body = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "register"}}}
    (register,) = api(f"{team.api_url}/task_runs/filter", body)
    faulted["register attempts"] = register["run_count"]
    rerun = None if faulted["state"]["type"] == "COMPLETED" else team.rerun()
    after = team.model_versions()
    assert len(after) == len(before) + 1, [v.version for v in after]  # the new data's release, once
    record_fault("postgresql restart in register", started, faulted, rerun, team)


def test_worker_killed_mid_run(team):
    """kill -9 of the worker running a flow run, and of the run's process (a lost machine): the heartbeat
    automation marks the run Crashed; a new worker and a re-run complete the work."""
    from flows.servers import start_worker
    from flows.stack import free_port

    started = time.time()
    run_id = team.run_created_after(team.add_data(seed=103))["id"]
    team.wait_for_task(run_id, "train")
    pid = int(team.flow_run(run_id)["infrastructure_pid"].rsplit(":", 1)[-1])  # "[host:]pid"
    index, worker = next(
        (i, w) for i, w in enumerate(team.stack.workers) if pid in {p.pid for p in process_tree(w)}
    )
    worker.kill()
    faulted = team.wait_final(run_id, timeout=300)
    assert faulted["state"]["type"] == "CRASHED", faulted["state"]
    assert "heartbeat" in faulted["state"]["message"]
    team.stack.workers[index] = start_worker(
        index + 1, team.api_url, team.tracking, team.project, team.base / "state" / "logs", free_port()
    )
    team.stack.workers[index].wait_ready()
    rerun = team.rerun()
    record_fault("worker kill -9 mid-run", started, faulted, rerun, team)


def process_tree(server) -> list:
    import psutil

    return psutil.Process(server.process.pid).children(recursive=True)


def test_read_only_artifact_folder_fails_clearly_and_registers_nothing(team):
    """The shared artifact folder made read-only (the MLflow server runs without root's capabilities, so
    the permissions bind it): the run fails naming the artifact store, no version or tag is added; once
    writable again, a re-run releases."""
    started = time.time()
    before = {v.version for v in team.model_versions()}
    tags_before = run(["git", "tag", "-l"], team.project).stdout.split()
    folders = [team.artifacts, *(p for p in team.artifacts.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        run_id = team.run_created_after(team.add_data(seed=104))["id"]
        faulted = team.wait_final(run_id)
        assert faulted["state"]["type"] == "FAILED", faulted["state"]
        assert {v.version for v in team.model_versions()} == before
        assert run(["git", "tag", "-l"], team.project).stdout.split() == tags_before
        logs = api(f"{team.api_url}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
        assert any("artifact store did not accept a file" in entry["message"] for entry in logs)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    rerun = team.rerun()  # writable again: the same trained files are released now, once
    assert len(team.model_versions()) == len(before) + 1
    record_fault("read-only artifact folder", started, faulted, rerun, team)
