"""The team stack without Docker: `prefect server` and `mlflow server` on PostgreSQL, MLflow's artifacts in
one shared folder, and process workers on the `edgepipe` work pool. The environment each process gets is
defined once, in flows/servers.py; docker/compose.yaml sets the same variables (tests/test_stack.py checks
they agree).

Database URLs (with their passwords) reach the servers only through the environment: never a command line,
params.yaml, a log line or an MLflow param."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from components.errors import EdgepipeError
from flows.postgres import DatabaseRole, LocalPostgres
from flows.servers import (
    MLFLOW_DATABASE_VAR,
    PREFECT_DATABASE_VAR,
    Server,
    start_mlflow_server,
    start_prefect_server,
    start_worker,
    stop_servers,
)

ROLES = {"prefect": "edgepipe_prefect", "mlflow": "edgepipe_mlflow"}  # database -> the role owning it


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
    postgres: LocalPostgres | None = None  # a cluster this process made (stopped and removed with the stack)

    @property
    def servers(self) -> list[Server]:
        return [*self.workers, self.prefect, self.mlflow]

    def stop(self, timeout: float = 30.0) -> None:
        stop_servers(self.workers, timeout)
        stop_servers([self.prefect, self.mlflow], timeout)
        if self.postgres is not None:
            self.postgres.remove()


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
    stack = Stack(prefect, mlflow)
    try:
        prefect.wait_ready()
        mlflow.wait_ready()
        for index in range(1, workers + 1):
            worker = start_worker(index, prefect.url, mlflow.url, project, state_dir / "logs", free_port())
            stack.workers.append(worker)
            worker.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack
