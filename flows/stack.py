"""The team stack without Docker: `prefect server` and `mlflow server` on PostgreSQL, MLflow's artifacts in
one shared folder, and process workers on the `edgepipe` work pool. The environment each process gets is
defined here once; docker/compose.yaml sets the same variables (tests/test_stack.py checks they agree).

Database URLs (with their passwords) reach the servers only through the environment: never a command line,
params.yaml, a log line or an MLflow param."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from components.errors import EdgepipeError
from flows.postgres import DatabaseRole, LocalPostgres
from flows.servers import Server, _executable, _start, start_mlflow_server, start_prefect_server, stop_servers

POOL = "edgepipe"
PREFECT_DATABASE_VAR = "PREFECT_SERVER_DATABASE_CONNECTION_URL"  # Prefect 3's name for the server's database
MLFLOW_DATABASE_VAR = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s variable
# one run per worker at a time: a run trains with TensorFlow on every core
WORKER_ARGS = ("worker", "start", "--pool", POOL, "--type", "process", "--limit", "1", "--with-healthcheck")
ROLES = {"prefect": "edgepipe_prefect", "mlflow": "edgepipe_mlflow"}  # database -> the role owning it


def prefect_server_env(database_url: str, ui_api_url: str) -> dict[str, str]:
    return {
        PREFECT_DATABASE_VAR: database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": ui_api_url,  # the URL the browser's UI calls
    }


def mlflow_server_env(database_url: str) -> dict[str, str]:
    return {MLFLOW_DATABASE_VAR: database_url}


def worker_env(api_url: str, tracking_uri: str) -> dict[str, str]:
    return {"PREFECT_API_URL": api_url, "MLFLOW_TRACKING_URI": tracking_uri}


def check_database_url(var: str, url: str, scheme: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != scheme or not parts.path.strip("/"):
        raise EdgepipeError(
            f"{var} must be a {scheme}://USER:PASSWORD@HOST:PORT/DATABASE URL (it is {parts.scheme or 'not'} "
            f"one); set it in the environment, never in params.yaml"
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    prefect: Server
    mlflow: Server
    workers: list[Server] = field(default_factory=list)
    postgres: LocalPostgres | None = None
    artifacts_dir: Path | None = None

    @property
    def servers(self) -> list[Server]:
        return [*self.workers, self.prefect, self.mlflow]

    def client_env(self) -> dict[str, str]:
        """What a client of this stack sets (the CLI, `edgepipe deploy`, a test)."""
        return worker_env(self.prefect.url, self.mlflow.url)

    def stop(self, timeout: float = 30.0) -> None:
        stop_servers(self.workers, timeout)
        stop_servers([self.prefect, self.mlflow], timeout)
        if self.postgres is not None:
            self.postgres.remove()


def start_worker(index: int, api_url: str, tracking_uri: str, project: Path, log_dir: Path) -> Server:
    """`prefect worker start` on the pool, running flow runs as subprocesses in `project`; its health
    server on a port of its own (two workers on one machine)."""
    port = free_port()
    env = {
        **os.environ,
        **worker_env(api_url, tracking_uri),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }
    base = f"http://127.0.0.1:{port}"
    return _start(
        f"prefect worker {index}",
        [_executable("prefect"), *WORKER_ARGS, "--name", f"edgepipe-worker-{index}"],
        env,
        log_dir / f"worker-{index}.log",
        base,
        f"{base}/health",
        port,
        cwd=project,
    )


def start_local_postgres(host: str = "127.0.0.1") -> tuple[LocalPostgres, dict[str, str]]:
    """A fresh cluster with the two databases, each owned by its own role; returns it and the URLs."""
    postgres = LocalPostgres(free_port(host), host)
    postgres.init()
    postgres.start()
    roles = [DatabaseRole(role, database) for database, role in ROLES.items()]
    postgres.create_databases(roles)
    urls = {
        PREFECT_DATABASE_VAR: roles[0].url(host, postgres.port, "postgresql+asyncpg"),
        MLFLOW_DATABASE_VAR: roles[1].url(host, postgres.port),
    }
    return postgres, urls


def start_stack(
    project: Path,
    state_dir: Path,
    database_urls: dict[str, str],
    artifacts_dir: Path,
    workers: int = 2,
    host: str = "127.0.0.1",
) -> Stack:
    """Both servers on PostgreSQL, then `workers` workers; each waits until it answers its health URL."""
    check_database_url(PREFECT_DATABASE_VAR, database_urls[PREFECT_DATABASE_VAR], "postgresql+asyncpg")
    check_database_url(MLFLOW_DATABASE_VAR, database_urls[MLFLOW_DATABASE_VAR], "postgresql")
    prefect = start_prefect_server(host, free_port(host), state_dir, database_urls[PREFECT_DATABASE_VAR])
    mlflow = start_mlflow_server(
        host, free_port(host), project, state_dir / "logs", database_urls[MLFLOW_DATABASE_VAR], artifacts_dir
    )
    stack = Stack(prefect, mlflow, artifacts_dir=artifacts_dir)
    try:
        prefect.wait_ready()
        mlflow.wait_ready()
        for index in range(1, workers + 1):
            worker = start_worker(index, prefect.url, mlflow.url, project, state_dir / "logs")
            stack.workers.append(worker)
            worker.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack
