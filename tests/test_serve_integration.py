"""`edgepipe serve` end to end, as a user runs it: real `prefect server` and `mlflow server` processes on
free 127.0.0.1 ports, the served deployment, new images added with `edgepipe data add` (which emits the
new-data event), the run that event triggers, the release it makes (MLflow version + alias + tags, git tag,
`dvc pull` of the tag in a fresh clone, equal sha256, `edgepipe verify-release`), one run fired by the
cron schedule, and SIGTERM removing the automation and stopping both servers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import DVC, GIT, api, free_port, make_project_repo, pattern_image, run, wait_for, write_params

pytestmark = pytest.mark.slow

EDGEPIPE = [sys.executable, "-m", "flows.cli"]
TIMEOUT = 900  # seconds for any one wait; a run takes about a minute here
START_ALLOWANCE = 100  # seconds for serve to start: the schedule fires 121-180 s after the fixture begins


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    root = make_project_repo(base / "project")
    # The schedule fires once, in the minute starting 3 minutes from now: after the data event, so the run
    # it starts queues behind the triggered one (one run at a time) and finds every step recorded. Serve
    # gets less than that to start (START_ALLOWANCE), so the schedule is still ahead once it is up.
    fires_at = (datetime.now().astimezone(UTC) + timedelta(minutes=3)).replace(second=0, microsecond=0)
    # The watcher polls hourly: `edgepipe data add` sends this test's event (the watcher's own event is
    # tested in tests/test_serve_shutdown.py), and a poll mid-copy cannot announce a half-copied folder.
    write_params(
        root / "params.yaml",
        {
            "serve.cron": f"{fires_at.minute} * * * *",
            "serve.watch_seconds": 3600,
            "mlflow.retry_delay_seconds": 2,
        },
    )
    run([*GIT, "commit", "-qam", "serve: schedule in 3 minutes"], root)
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(base / "client-home")
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "5"  # default 60: schedules land sooner
    log = base / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*EDGEPIPE, "serve", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        wait_for(lambda: "Ctrl-C stops" in log.read_text(), "serve to start", log, timeout=START_ALLOWANCE)
        wait_for(
            lambda: api(f"{prefect_api}/deployments/filter", {}) or None,
            "the served deployment",
            log,
            timeout=TIMEOUT,
            every=1.0,
        )
        client_env = {
            **env,
            "PREFECT_API_URL": prefect_api,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        }
        yield {
            "root": root,
            "base": base,
            "log": log,
            "process": process,
            "prefect_api": prefect_api,
            "mlflow_uri": client_env["MLFLOW_TRACKING_URI"],
            "ports": (prefect_port, mlflow_port),
            "env": client_env,
            "cron_fires_at": fires_at,
        }
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def new_images(folder: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(99)
    for label, name in enumerate(("bars", "stripes", "diagonal")):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pattern_image(label, rng)).save(folder / name / f"arrived_{i:02d}.png")
    return folder


def flow_runs(prefect_api: str) -> list[dict]:
    return api(f"{prefect_api}/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})


@pytest.fixture(scope="module")
def triggered(served):
    """`edgepipe data add` copies new images into the data folder and emits the event; the deployment's
    trigger starts a run; it completes."""
    root = served["root"]
    arrivals = new_images(served["base"] / "arrivals")
    dropped_at = time.time()
    added = subprocess.run(
        [*EDGEPIPE, "data", "add", str(arrivals)], cwd=root, env=served["env"], capture_output=True, text=True
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert "Added 18 image(s)" in added.stdout and "Emitted edgepipe.data.updated" in added.stdout

    def triggered_run():
        runs = [r for r in flow_runs(served["prefect_api"]) if not r["auto_scheduled"]]
        return runs[0] if runs else None

    run_record = wait_for(
        triggered_run, "the run the event triggers", served["log"], timeout=TIMEOUT, every=1.0
    )
    latency = parse_time(run_record["created"]) - dropped_at

    def finished():
        record = next(r for r in flow_runs(served["prefect_api"]) if r["id"] == run_record["id"])
        return record if record["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    final = wait_for(finished, "the triggered run to finish", served["log"], every=3, timeout=TIMEOUT)
    started = parse_time(final["start_time"]) - dropped_at if final["start_time"] else float("nan")
    print(
        f"\nimages dropped -> triggered flow run created {latency:.1f} s later, "
        f"started {started:.1f} s later; run {final['name']} {final['state_type']}"
    )
    return {"run": final, "latency": latency}


def test_unchanged_data_emits_nothing(served):
    checked = subprocess.run(
        [*EDGEPIPE, "data", "check"], cwd=served["root"], env=served["env"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "unchanged since the last event" in checked.stdout
    assert not [r for r in flow_runs(served["prefect_api"]) if not r["auto_scheduled"]]


def test_new_data_event_triggers_a_run_that_completes(triggered):
    assert triggered["run"]["state_type"] == "COMPLETED"
    assert triggered["latency"] < 60  # bounded: the automation reacts within seconds


def test_the_run_is_a_release_in_mlflow_git_and_dvc(served, triggered):
    root = served["root"]
    client = MlflowClient(served["mlflow_uri"])
    versions = client.search_model_versions("name = 'tiny-patterns'")
    assert [v.version for v in versions] == ["1"] or [str(v.version) for v in versions] == ["1"]
    version = client.get_model_version_by_alias("tiny-patterns", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    assert tags["git_tag"] == "tiny-patterns@v1"
    assert tags["prefect_flow_run_id"] == triggered["run"]["id"]
    tagged = run(["git", "rev-list", "-n", "1", "tiny-patterns@v1"], root).stdout.strip()
    assert tags["git_commit"] == tagged
    release = root / "models/export/model_int8.tflite"
    assert tags["sha256"] == hashlib.sha256(release.read_bytes()).hexdigest()
    assert tags["dvc_md5"] == hashlib.md5(release.read_bytes()).hexdigest()
    # The release includes the new images: the data pointer committed at the tag covers them.
    committed_raw = run(["git", "show", "tiny-patterns@v1:data/raw.dvc"], root).stdout
    assert "nfiles: 90" in committed_raw  # 72 + 18 new

    clone = served["base"] / "clone"
    run(["git", "clone", "-q", "--branch", "tiny-patterns@v1", str(root), str(clone)], served["base"])
    run([*DVC, "pull", "-q", "models/export/model_int8.tflite"], clone)
    pulled = hashlib.sha256((clone / "models/export/model_int8.tflite").read_bytes()).hexdigest()
    assert pulled == tags["sha256"]
    print(
        f"\nrelease tiny-patterns@v1: MLflow v1 sha256 {tags['sha256'][:16]}..., "
        f"dvc pull in a clone: {pulled[:16]}..."
    )

    verified = subprocess.run(
        [*EDGEPIPE, "verify-release", "tiny-patterns@v1"],
        cwd=root,
        env=served["env"],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "git, DVC and MLflow agree" in verified.stdout
    print(verified.stdout)


def test_the_cron_schedule_fires_a_run(served, triggered):
    def scheduled_done():
        runs = [r for r in flow_runs(served["prefect_api"]) if r["auto_scheduled"]]
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
        return done[0] if done else None

    scheduled = wait_for(scheduled_done, "a scheduled run to finish", served["log"], every=3, timeout=TIMEOUT)
    assert parse_time(scheduled["expected_start_time"]) == served["cron_fires_at"].timestamp()
    assert scheduled["state_type"] == "COMPLETED"
    # Same data, same bytes: the scheduled run registers nothing new.
    versions = MlflowClient(served["mlflow_uri"]).search_model_versions("name = 'tiny-patterns'")
    assert len(versions) == 1
    print(
        f"\nscheduled run {scheduled['name']}: {scheduled['state_type']}, "
        f"registered versions: {len(versions)}"
    )


def test_the_same_deployment_runs_on_a_process_work_pool(served, triggered):
    """`edgepipe deploy` registers the deployment on a work pool; a real `prefect worker` runs it."""
    root, env, prefect_api = served["root"], served["env"], served["prefect_api"]
    deployed = subprocess.run(
        [*EDGEPIPE, "deploy", "--pool", "test-pool", "--name", "edgepipe-pool"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "Created process work pool 'test-pool'" in deployed.stdout
    with urllib.request.urlopen(f"{prefect_api}/deployments/name/edgepipe/edgepipe-pool", timeout=30) as r:
        deployment = json.loads(r.read())
    assert deployment["work_pool_name"] == "test-pool"
    # Prefect reports a deployment's limit in one of two fields, depending on how it was set: either way 1
    limit = deployment.get("concurrency_limit")
    if limit is None:
        limit = (deployment.get("global_concurrency_limit") or {}).get("limit")
    assert limit == 1, deployment
    flow_run = api(f"{prefect_api}/deployments/{deployment['id']}/create_flow_run", {})
    worker = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "worker",
            "start",
            "--pool",
            "test-pool",
            "--run-once",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    def finished():
        record = next(r for r in flow_runs(prefect_api) if r["id"] == flow_run["id"])
        return record if record["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    final = wait_for(finished, "the work-pool run to finish", served["log"], every=3, timeout=TIMEOUT)
    assert final["state_type"] == "COMPLETED", worker.stdout[-3000:]
    versions = MlflowClient(served["mlflow_uri"]).search_model_versions("name = 'tiny-patterns'")
    assert len(versions) == 1  # same data, same bytes: nothing new
    print(f"\nwork pool test-pool: run {final['name']} {final['state_type']} (worker --run-once)")


def test_sigterm_stops_both_servers_and_removes_the_automation(served, triggered):
    """SIGTERM (what `docker stop` and systemd send) stops serve as Ctrl-C does (Ctrl-C with runs in flight:
    tests/test_serve_shutdown.py)."""
    with urllib.request.urlopen(
        f"{served['prefect_api']}/deployments/name/edgepipe/edgepipe", timeout=30
    ) as r:
        served_id = json.loads(r.read())["id"]
    process = served["process"]
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    log = served["log"].read_text()
    assert "Paused the deployment. Removed 1 automation(s) of the served deployment" in log, log[-3000:]
    assert "Stopped prefect server and mlflow server" in log
    assert not any(port_open(port) for port in served["ports"])
    db = served["root"] / ".edgepipe" / "prefect.db"
    with sqlite3.connect(db) as connection:
        owned = connection.execute(
            "select count(*) from automation_related_resource where resource_id = ?",
            (f"prefect.deployment.{served_id}",),
        ).fetchone()[0]
        remaining = sorted(row[0] for row in connection.execute("select name from automation"))
        (paused,) = connection.execute("select paused from deployment where id = ?", (served_id,)).fetchone()
    assert paused == 1  # its cron schedule starts no run until the next `edgepipe serve` resumes it
    assert owned == 0
    from flows.deployment import CRASH_DETECTION

    # what `edgepipe deploy` made, not serve: the work-pool deployment's trigger and the crash detection
    assert len(remaining) == 2 and CRASH_DETECTION in remaining, remaining


def test_data_add_copies_images_and_only_new_content_is_announced(served, triggered, tmp_path):
    """After serve stopped (its watcher would announce these): `data add` without a server copies and says
    nothing was sent; back to the released content, `data check` finds nothing new to announce."""
    offline = {k: v for k, v in served["env"].items() if k != "PREFECT_API_URL"}
    source = new_images(tmp_path / "more", per_class=1)
    for class_dir in source.iterdir():  # names that do not clash with the first arrivals
        for image in class_dir.iterdir():
            image.rename(image.with_name(f"later_{image.name}"))
    root = served["root"]
    added = subprocess.run(
        [*EDGEPIPE, "data", "add", str(source)], cwd=root, env=offline, capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    assert (
        "Added 3 image(s)" in added.stdout
        and "PREFECT_API_URL is not set, so no event was sent" in added.stdout
    )
    again = subprocess.run(
        [*EDGEPIPE, "data", "add", str(source)], cwd=root, env=offline, capture_output=True, text=True
    )
    assert again.returncode == 2 and "already exist in the data folder" in again.stderr
    for class_dir in source.iterdir():  # back to the released data: the hash equals the last event's
        for image in class_dir.iterdir():
            (root / "data" / "raw" / class_dir.name / image.name).unlink()
    checked = subprocess.run(
        [*EDGEPIPE, "data", "check"], cwd=root, env=offline, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "unchanged since the last event" in checked.stdout
