"""The team stack without Docker, on real servers: a PostgreSQL cluster made by the test (as `nobody` when
run as root), `prefect server` and `mlflow server` on it with a shared artifact folder, two process
workers on the `edgepipe` pool; and docker/compose.yaml setting the same variables as flows/servers.py."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import yaml

from flows.servers import (
    MLFLOW_DATABASE_VAR,
    POOL,
    PREFECT_DATABASE_VAR,
    WORKER_ARGS,
    mlflow_server_env,
    prefect_server_env,
    worker_env,
)
from flows.stack import start_local_postgres, start_stack

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("stack")


def test_compose_sets_the_variables_the_stack_sets():
    """One definition (flows/servers.py): the compose services set the same names, the same database
    drivers and the same worker command as the stack `make stack-test` starts."""
    services = yaml.safe_load((PROJECT_ROOT / "docker" / "compose.yaml").read_text())["services"]
    prefect, mlflow = services["prefect-server"]["environment"], services["mlflow-server"]["environment"]
    assert set(prefect) == set(prefect_server_env("db", "ui"))
    assert set(mlflow) == set(mlflow_server_env("db"))
    assert set(services["worker"]["environment"]) == set(worker_env("api", "tracking"))
    assert tuple(services["worker"]["command"]) == WORKER_ARGS
    for url, scheme, database in (
        (prefect[PREFECT_DATABASE_VAR], "postgresql+asyncpg", "prefect"),
        (mlflow[MLFLOW_DATABASE_VAR], "postgresql", "mlflow"),
    ):  # the compose URL holds ${...:?...} interpolations that urlsplit misreads
        assert (url.split("://")[0], url.rsplit("/", 1)[1]) == (scheme, database)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    postgres, urls = start_local_postgres()
    try:
        running = start_stack(base, base / "state", urls, base / "mlartifacts", workers=2)
    except BaseException:
        postgres.remove()
        raise
    running.postgres = postgres
    yield {"stack": running, "urls": urls, "base": base}
    running.stop()


def test_both_servers_keep_their_state_in_postgresql(stack):
    """Prefect's migrations and MLflow's tables are in their own databases, and a run logged through the
    MLflow server lands there with its artifact in the shared folder."""
    from mlflow.tracking import MlflowClient

    running = stack["stack"]
    postgres = running.postgres
    prefect_tables = postgres.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public';", "prefect")
    assert int(prefect_tables) > 20  # flow_run, deployment, work_pool, ...
    client = MlflowClient(running.mlflow.url)
    experiment = client.create_experiment("stack-check")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.5)
    (stack["base"] / "note.txt").write_text("shared")
    client.log_artifact(run.info.run_id, str(stack["base"] / "note.txt"))
    stored = postgres.psql(f"SELECT value FROM metrics WHERE run_uuid = '{run.info.run_id}';", "mlflow")
    assert float(stored) == 0.5
    assert list((stack["base"] / "mlartifacts").rglob("note.txt"))


def test_two_workers_poll_the_pool(stack):
    import json
    import time
    import urllib.request

    running = stack["stack"]

    def registered() -> set[str]:
        request = urllib.request.Request(
            f"{running.prefect.url}/work_pools/{POOL}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return {w["name"] for w in json.loads(response.read())}

    # a worker answers its health URL before its first poll registers it with the pool (slower under load)
    deadline = time.monotonic() + 120
    while (workers := registered()) != {
        "edgepipe-worker-1",
        "edgepipe-worker-2",
    } and time.monotonic() < deadline:
        time.sleep(1)
    assert workers == {"edgepipe-worker-1", "edgepipe-worker-2"}


def test_roles_have_only_their_own_database_and_passwords_stay_in_the_environment(stack):
    running, urls = stack["stack"], stack["urls"]
    roles = running.postgres.psql(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname LIKE 'edgepipe_%' "
        "ORDER BY 1;"
    )
    assert roles.split() == ["edgepipe_mlflow|f|f|f", "edgepipe_prefect|f|f|f"]
    # the MLflow role cannot even connect to Prefect's database
    assert (
        running.postgres.psql(
            "SELECT has_database_privilege('edgepipe_mlflow', 'prefect', 'CONNECT');"
        ).strip()
        == "f"
    )
    passwords = [urlsplit(url).password for url in urls.values()] + [running.postgres.superuser_password]
    for server in running.servers:
        for proc in [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(True)]:
            cmdline = " ".join(proc.cmdline())
            assert not any(p in cmdline for p in passwords), cmdline
        assert not any(p in server.log_file.read_text() for p in passwords)
    # every listening socket of the stack is on the loopback interface
    pids = {
        p.pid
        for s in running.servers
        for p in [psutil.Process(s.process.pid), *psutil.Process(s.process.pid).children(True)]
    }
    pids.add(running.postgres.postmaster_pid())
    listening = [
        c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening and set(listening) == {"127.0.0.1"}, listening


def test_servers_run_without_roots_capabilities_and_the_folder_permissions_bind_them(stack):
    """Started as root (as on CI), the Prefect and MLflow servers keep uid 0 but hold no capability, so a
    read-only artifact folder is read-only for them too; PostgreSQL runs as `nobody`."""
    running = stack["stack"]
    for server in (running.prefect, running.mlflow):
        serving = psutil.Process(server.process.pid).children(recursive=True)
        assert serving, server.name
        for proc in serving:
            status = dict(
                line.split(":\t", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            )
            assert status["CapEff"].strip() == "0000000000000000", (server.name, proc.cmdline())
    assert psutil.Process(running.postgres.postmaster_pid()).username() != "root"
