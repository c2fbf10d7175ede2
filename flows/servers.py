"""Local Prefect and MLflow servers for `edgepipe serve`: real `prefect server start` and `mlflow server`
processes on 127.0.0.1, with SQLite state under the project's .edgepipe/ folder, logs beside it, and
stopped (with everything they spawned) when serve stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from components.atomic import read_json, write_json
from components.errors import EdgepipeError
from flows.supervisor import terminate_then_kill

SERVERS_FILE = "servers.json"  # in .edgepipe/: what the running `edgepipe serve` started

# The environment of each server process, defined once: `edgepipe serve`, the team stack (flows/stack.py)
# and docker/compose.yaml use these names (tests/test_stack.py checks the compose file).
POOL = "edgepipe"
PREFECT_DATABASE_VAR = "PREFECT_SERVER_DATABASE_CONNECTION_URL"  # Prefect 3's name for the server's database
MLFLOW_DATABASE_VAR = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s variable
# one run per worker at a time: a run trains with TensorFlow on every core
WORKER_ARGS = ("worker", "start", "--pool", POOL, "--type", "process", "--limit", "1", "--with-healthcheck")


def prefect_server_env(database_url: str, ui_api_url: str) -> dict[str, str]:
    return {
        PREFECT_DATABASE_VAR: database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": ui_api_url,  # the URL the browser's UI calls
    }


def mlflow_server_env(database_url: str) -> dict[str, str]:
    return {MLFLOW_DATABASE_VAR: database_url}


HEARTBEAT_SECONDS = 30  # a worker's flow runs send one heartbeat this often (Prefect's minimum)


def worker_env(api_url: str, tracking_uri: str) -> dict[str, str]:
    # heartbeats: a run whose worker dies is marked Crashed (flows.deployment.ensure_crash_detection)
    return {
        "PREFECT_API_URL": api_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    }


@dataclass
class Server:
    name: str
    url: str  # what clients use: PREFECT_API_URL / MLFLOW_TRACKING_URI
    health_url: str
    process: subprocess.Popen  # the supervisor (flows.supervisor); its process group holds the server
    log_file: Path
    port: int = 0

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
        stop_servers([self], timeout=20)
        raise EdgepipeError(
            f"{self.name} did not answer {self.health_url} within {timeout:.0f} s; see {self.log_file}"
        )

    def kill(self) -> None:
        """SIGKILL to the supervisor's whole process group and every process below it, at once."""
        for proc in _tree(self.process.pid):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        stop_servers([self], timeout)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_servers(servers: list[Server], timeout: float = 20.0) -> list[str]:
    """Stop all servers at once: SIGTERM to each supervisor (it stops its server's tree, SIGKILL after its
    grace), then SIGKILL to whatever still runs after `timeout`. Returns the names that had to be killed."""
    running = [s for s in servers if s.process.poll() is None]
    for server in running:
        try:
            server.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    killed = []
    for server in running:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(server.name)
        server.kill()  # also catches anything of its group that outlived the supervisor
    return killed


def record_servers(state_dir: Path, servers: list[Server]) -> None:
    """Write .edgepipe/servers.json: the next `edgepipe serve` clears what a dead one left behind."""
    me = psutil.Process()
    entries = []
    for server in servers:
        try:
            started = psutil.Process(server.process.pid).create_time()
        except psutil.NoSuchProcess:
            continue
        entries.append(
            {"name": server.name, "port": server.port, "pgid": server.process.pid, "started": started}
        )
    write_json(
        state_dir / SERVERS_FILE, {"serve_pid": me.pid, "serve_started": me.create_time(), "servers": entries}
    )


def forget_servers(state_dir: Path) -> None:
    (state_dir / SERVERS_FILE).unlink(missing_ok=True)


def _same_process(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def clear_stale_servers(state_dir: Path) -> list[str]:
    """Stop the servers an earlier `edgepipe serve` of this project left running (it was killed before it
    could stop them). Fails if that serve is still alive. Returns what was stopped, for the console."""
    record_file = state_dir / SERVERS_FILE
    if not record_file.is_file():
        return []
    try:
        record = read_json(record_file)
    except (OSError, ValueError):
        record_file.unlink(missing_ok=True)
        return []
    if record.get("serve_pid") != os.getpid() and _same_process(
        record.get("serve_pid", -1), record.get("serve_started", 0)
    ):
        raise EdgepipeError(
            f"edgepipe serve is already running for this project (pid {record['serve_pid']}); stop it "
            f"first (Ctrl-C in its terminal, or `kill {record['serve_pid']}`)."
        )
    stopped = []
    for entry in record.get("servers", []):
        members = [p for p in psutil.process_iter() if _pgid(p.pid) == entry["pgid"]]
        if not members:
            continue
        terminate_then_kill(members, grace=10)
        stopped.append(f"{entry['name']} on port {entry['port']} ({len(members)} processes)")
    record_file.unlink(missing_ok=True)
    return stopped


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def check_port_free(host: str, port: int, option: str) -> None:
    """A clear error naming the program that holds the port, instead of a server that dies on start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError:
            pass
    holder = "another program"
    try:
        for conn in psutil.net_connections("inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                holder = f"pid {conn.pid} ({' '.join(proc.cmdline()[:4])})"
                break
    except (psutil.Error, OSError):
        pass
    raise EdgepipeError(
        f"port {port} on {host} is in use by {holder}; stop it, or choose another port "
        f"({option} or serve.{option.removeprefix('--').replace('-', '_')} in params.yaml)."
    )


def executable(name: str) -> str:
    """The console script next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise EdgepipeError(f"`{name}` not found next to {sys.executable} or on PATH; run `make install`.")
    return found


def start_supervised(
    name: str,
    cmd: list[str],
    env: dict,
    log_file: Path,
    url: str,
    health_url: str,
    port: int,
    cwd: Path | None = None,
    unprivileged: bool = False,
) -> Server:
    """The server under a supervisor in a session of its own: a terminal's Ctrl-C reaches serve only, which
    stops the servers in order; the supervisor stops them if serve dies without doing so. `unprivileged`:
    started as root, the server runs without root's capabilities (`without_privileges`)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    supervised = [
        sys.executable,
        "-m",
        "flows.supervisor",
        "--parent",
        str(os.getpid()),
        "--grace",
        "10",
        "--",
    ]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [*supervised, *(without_privileges() if unprivileged else []), *cmd],
            cwd=cwd or Path(__file__).resolve().parents[1],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, url, health_url, process, log_file, port)


def without_privileges() -> list[str]:
    """The command prefix that runs a server started as root without any of root's capabilities (setpriv,
    util-linux): still uid 0, but file permissions bind it as they bind anyone, so it cannot write a folder
    made read-only, bind a port below 1024 or change an owner. (A user account of its own is the stronger
    choice; the Python that runs the servers here lives in root's home, which no other user may enter.)
    Nothing to drop for any other user."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        raise EdgepipeError("as root, a server needs `setpriv` (Debian: util-linux) to drop its capabilities")
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


def start_prefect_server(
    host: str, port: int, state_dir: Path, database_url: str | None = None, unprivileged: bool = False
) -> Server:
    """`prefect server start` with its SQLite database in `state_dir`, or on `database_url` (a
    postgresql+asyncpg:// URL, given in the environment only) (the server's own services run the
    schedules and the automations that turn events into runs)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect-home"),
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        # The UI calls the API at this URL; without it the UI calls :4200 whatever port the server has.
        **prefect_server_env(
            database_url or f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}",
            os.environ.get("PREFECT_UI_API_URL") or f"http://{_public_host(host)}:{port}/api",
        ),
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the older name of the same setting
    env.pop("PREFECT_API_URL", None)
    cmd = [executable("prefect"), "server", "start", "--host", host, "--port", str(port)]
    base = f"http://{host}:{port}"
    log_file = state_dir / "logs" / "prefect-server.log"
    health = f"{base}/api/health"
    return start_supervised(
        "prefect server", cmd, env, log_file, f"{base}/api", health, port, unprivileged=unprivileged
    )


def start_mlflow_server(
    host: str,
    port: int,
    root: Path,
    log_dir: Path,
    backend_uri: str | None = None,
    artifacts_dir: Path | None = None,
    unprivileged: bool = False,
) -> Server:
    """`mlflow server` on the project's own store (the sqlite:///mlflow.db `edgepipe run` uses without a
    server) or on `backend_uri` (a postgresql:// URL, given in the environment only), artifacts served by
    the server from `artifacts_dir` (default: the project's mlartifacts/), one worker. Without MLflow's
    job execution: MLflow 3 otherwise starts seven huey consumer processes (for GenAI evaluation jobs
    edgepipe never submits), each importing MLflow, which took the CPU from pipeline runs on a 2-core
    machine. `unprivileged`: see `start_supervised`."""
    artifacts_dir = Path(artifacts_dir or root / "mlartifacts")
    cmd = [
        executable("mlflow"),
        "server",
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    base = f"http://{host}:{port}"
    log_file = log_dir / "mlflow-server.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # the backend store by its environment variable: a password stays off the command line
        **mlflow_server_env(backend_uri or f"sqlite:///{root / 'mlflow.db'}"),
    }
    return start_supervised(
        "mlflow server", cmd, env, log_file, base, f"{base}/health", port, unprivileged=unprivileged
    )


def _public_host(host: str) -> str:
    """The address a browser uses: the bind address, or this machine's name for a wildcard bind."""
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def start_worker(
    index: int, api_url: str, tracking_uri: str, project: Path, log_dir: Path, port: int
) -> Server:
    """`prefect worker start` on the pool, running flow runs as subprocesses in `project`; its health
    server on a port of its own (two workers on one machine)."""
    env = {
        **os.environ,
        **worker_env(api_url, tracking_uri),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }
    base = f"http://127.0.0.1:{port}"
    return start_supervised(
        f"prefect worker {index}",
        [executable("prefect"), *WORKER_ARGS, "--name", f"edgepipe-worker-{index}"],
        env,
        log_dir / f"worker-{index}.log",
        base,
        f"{base}/health",
        port,
        cwd=project,
    )
