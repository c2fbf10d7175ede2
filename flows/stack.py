"""The team stack without Docker: `prefect server` and `mlflow server` on PostgreSQL, MLflow's artifacts in
one shared folder, and process workers on the `edgepipe` work pool. The environment each process gets is
defined once, in flows/servers.py; docker/compose.yaml sets the same variables (tests/test_stack.py checks
they agree).

Database URLs (with their passwords) reach the servers only through the environment: never a command line,
params.yaml, a log line or an MLflow param."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from components.config import Params
from components.errors import EdgepipeError
from components.paths import ProjectPaths
from flows.postgres import DatabaseRole, LocalPostgres
from flows.servers import (
    MLFLOW_DATABASE_VAR,
    POOL,
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
    ports: tuple[int, int] | None = None,
) -> Stack:
    """Both servers on PostgreSQL, then `workers` workers; each waits until it answers its health URL. The
    servers run without root's capabilities when started as root (flows.servers.without_privileges)."""
    check_database_url(PREFECT_DATABASE_VAR, database_urls[PREFECT_DATABASE_VAR], "postgresql+asyncpg")
    check_database_url(MLFLOW_DATABASE_VAR, database_urls[MLFLOW_DATABASE_VAR], "postgresql")
    prefect_port, mlflow_port = ports or (free_port(host), free_port(host))
    prefect = start_prefect_server(
        host, prefect_port, state_dir, database_urls[PREFECT_DATABASE_VAR], unprivileged=True
    )
    mlflow = start_mlflow_server(
        host,
        mlflow_port,
        project,
        state_dir / "logs",
        database_urls[MLFLOW_DATABASE_VAR],
        artifacts_dir,
        unprivileged=True,
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


def database_urls_from_environment() -> dict[str, str] | None:
    """The two servers' PostgreSQL URLs when the environment sets both (a team's own database server)."""
    urls = {var: os.environ.get(var, "") for var in (PREFECT_DATABASE_VAR, MLFLOW_DATABASE_VAR)}
    if not any(urls.values()):
        return None
    missing = [var for var, url in urls.items() if not url]
    if missing:
        raise EdgepipeError(f"set {missing[0]} as well (both servers need a database), or neither")
    return urls


def run_stack(config: Params, root: Path, params_path: str, workers: int, say) -> None:
    """`edgepipe stack`: the team stack on this machine, the project deployed on its pool, until Ctrl-C.
    PostgreSQL is the one the environment names, else a throwaway cluster in a temporary folder."""
    urls, postgres = database_urls_from_environment(), None
    if urls is None:
        postgres, urls = start_local_postgres(config.serve.host)
        say(
            f"PostgreSQL: a throwaway cluster in {postgres.base} (removed at exit); set "
            f"{PREFECT_DATABASE_VAR} and {MLFLOW_DATABASE_VAR} to keep the state in your own server"
        )
    state_dir = ProjectPaths(root).state_dir / "stack"
    ports = (config.serve.prefect_port, config.serve.mlflow_port)
    try:
        stack = start_stack(root, state_dir, urls, root / "mlartifacts", workers, config.serve.host, ports)
    except BaseException:
        if postgres is not None:
            postgres.remove()
        raise
    stack.postgres = postgres
    try:
        os.environ["PREFECT_API_URL"] = stack.prefect.url
        from flows.deployment import deploy_to_pool, ensure_crash_detection, ensure_work_pool

        ensure_work_pool(POOL)
        deployment_id = deploy_to_pool(config, root, POOL, params_path)
        ensure_crash_detection()
        say(f"Prefect UI: {stack.prefect.url.removesuffix('/api')}   MLflow UI: {stack.mlflow.url}")
        say(f"Deployment edgepipe/edgepipe ({deployment_id}): {workers} worker(s) on the {POOL!r} pool")
        say(f"Logs: {state_dir / 'logs'}. Ctrl-C stops the stack.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while all(server.process.poll() is None for server in stack.servers):
            time.sleep(1)
        say("a server of the stack stopped: stopping the rest (see the logs)")
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        say("Stopped the stack.")
