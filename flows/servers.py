"""Local Prefect and MLflow servers for `edgepipe serve`: real `prefect server start` and `mlflow server`
processes on 127.0.0.1, with SQLite state under the project's .edgepipe/ folder, logs beside it, and
stopped (with everything they spawned) when serve stops."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from components.errors import EdgepipeError


@dataclass
class Server:
    name: str
    url: str  # what clients use: PREFECT_API_URL / MLFLOW_TRACKING_URI
    health_url: str
    process: subprocess.Popen
    log_file: Path

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgepipeError(
                    f"{self.name} exited with code {self.process.returncode} while starting; see "
                    f"{self.log_file} (a port already in use? pick another in params.yaml `serve`)"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise EdgepipeError(
            f"{self.name} did not answer {self.health_url} within {timeout:.0f} s; see {self.log_file}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group (servers spawn workers), then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def _executable(name: str) -> str:
    """The console script next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise EdgepipeError(f"`{name}` not found next to {sys.executable} or on PATH; run `make install`.")
    return found


def _start(name: str, cmd: list[str], env: dict, log_file: Path, url: str, health_url: str) -> Server:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, url, health_url, process, log_file)


def start_prefect_server(host: str, port: int, state_dir: Path) -> Server:
    """`prefect server start` with its SQLite database in `state_dir` (the server's own services run the
    schedules and the automations that turn events into runs)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [_executable("prefect"), "server", "start", "--host", host, "--port", str(port)]
    base = f"http://{host}:{port}"
    log_file = state_dir / "logs" / "prefect-server.log"
    return _start("prefect server", cmd, env, log_file, f"{base}/api", f"{base}/api/health")


def start_mlflow_server(host: str, port: int, root: Path, log_dir: Path) -> Server:
    """`mlflow server` on the project's own store (the sqlite:///mlflow.db `edgepipe run` uses without a
    server), artifacts served by the server from mlartifacts/, one worker."""
    cmd = [
        _executable("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "mlartifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    base = f"http://{host}:{port}"
    log_file = log_dir / "mlflow-server.log"
    return _start("mlflow server", cmd, dict(os.environ), log_file, base, f"{base}/health")
