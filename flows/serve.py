"""`edgepipe serve`'s lifecycle: start the servers, serve the deployment, and stop everything in a bounded
time on Ctrl-C, SIGTERM or SIGHUP.

Why not `prefect.serve()`: it catches the KeyboardInterrupt itself and then leaves its runner through the
exit path that waits for every in-flight flow run to finish (the run's process is joined in a thread that
cancellation cannot interrupt), so a Ctrl-C during a run waited for the whole run, while the data watcher
went on emitting events. Here the runner runs in a thread of its own and is stopped with `Runner.astop()`,
Prefect's own stop: it cancels in-flight runs (their state: Cancelled, with the reason) before it returns
(that thread and the Prefect API calls of the shutdown: flows.served_deployment).

Shutdown order (each step bounded; the whole within `serve.stop_timeout_seconds`): watcher stopped ->
deployment paused and its trigger automation removed (no new runs) -> runner stopped (in-flight runs
cancelled) -> queued runs cancelled -> both servers stopped at once. A second signal, or the bound running
out, kills every process group at once and says which steps did not finish.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from components.config import Params
from components.paths import ProjectPaths
from flows.served_deployment import (
    RunnerThread,
    cancel_unfinished_runs,
    drain_prefect_workers,
    open_runs,
    pause_and_remove_trigger,
    short_api_calls,
)
from flows.servers import (
    Server,
    check_port_free,
    clear_stale_servers,
    forget_servers,
    record_servers,
    start_mlflow_server,
    start_prefect_server,
    stop_servers,
)
from flows.supervisor import terminate_then_kill

log = logging.getLogger("edgepipe.serve")


class Shutdown:
    """Signal handling and the hard stop. First signal: while starting, KeyboardInterrupt; while serving,
    `requested` is set. A further signal, or the deadline once stopping began, is the hard stop."""

    def __init__(self, bound: float, say: Callable[[str], None]):
        self.bound, self.say = bound, say
        self.requested = threading.Event()
        self.serving = False
        self.stopping = False
        self.pending: list[str] = []  # cleanup steps not yet done, named for the user
        self.servers: list[Server] = []
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            self.hard_stop(f"second {signal.Signals(signum).name}", 130)
        if self.serving:
            self.begin()
            self.requested.set()
        else:
            self.begin()
            raise KeyboardInterrupt

    def begin(self) -> None:
        """Stopping starts now; the bound runs from here."""
        if not self.stopping:
            self.stopping = True
            self._timer = threading.Timer(
                self.bound, self.hard_stop, (f"the {self.bound:g} s shutdown bound ran out", 1)
            )
            self._timer.daemon = True
            self._timer.start()

    def step_done(self, step: str) -> None:
        if step in self.pending:
            self.pending.remove(step)

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def hard_stop(self, why: str, code: int) -> None:
        """Kill every process serve started, at once, and exit."""
        for server in self.servers:
            server.kill()
        kill_descendants()
        left = "; ".join(self.pending) or "nothing"
        self.say(f"edgepipe serve: {why}: killed all its processes. Not cleaned up: {left}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def kill_descendants(except_pids: set[int] = frozenset(), grace: float = 0.0) -> int:
    """Flow-run processes (and what they spawned) still below this process; not the trees of the children
    in `except_pids` (the servers' supervisors)."""
    procs = []
    for child in psutil.Process().children():
        if child.pid not in except_pids:
            try:
                procs += [child, *child.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return len(terminate_then_kill(procs, grace))


def serve(config: Params, root: Path, params_path: str, prefect_port: int, mlflow_port: int, say) -> int:
    """Serve until a signal; returns the exit code (0 after a clean stop)."""
    started_stopping = 0.0
    shutdown = Shutdown(config.serve.stop_timeout_seconds, say)
    shutdown.install()
    state_dir = ProjectPaths(root).state_dir
    host = config.serve.host
    watcher = runner = None
    deployment_id = None
    watch = None
    try:
        for what in clear_stale_servers(state_dir):
            say(f"Stopped a stale {what} left by an earlier edgepipe serve of this project")
        check_port_free(host, prefect_port, "--prefect-port")
        check_port_free(host, mlflow_port, "--mlflow-port")
        shutdown.pending.append("stop the servers")
        shutdown.servers.append(start_prefect_server(host, prefect_port, state_dir))
        shutdown.servers.append(start_mlflow_server(host, mlflow_port, root, state_dir / "logs"))
        record_servers(state_dir, shutdown.servers)
        for server in shutdown.servers:
            server.wait_ready()
        prefect_server, mlflow_server = shutdown.servers
        # Prefect reads its settings when first imported: point it at the server before that.
        assert "prefect" not in sys.modules, "prefect imported before PREFECT_API_URL was set"
        os.environ["PREFECT_API_URL"] = prefect_server.url
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url

        from components.datawatch import project_data_watch
        from flows.deployment import Watcher, build_deployment

        watch = project_data_watch(ProjectPaths(root), config.data)
        if watch.check().previous is None:  # first start: today's data is the baseline, not news
            watch.mark_announced(watch.check())
        logging.getLogger("edgepipe.serve").setLevel(logging.INFO)
        runner = RunnerThread(build_deployment(config, root, params_path))
        shutdown.pending.append("pause the deployment and remove its trigger automation")
        runner.start()
        runner.ready.wait()
        if runner.error is not None:
            raise runner.error
        deployment_id = runner.deployment_id
        watcher = Watcher(watch, config.serve.watch_seconds)
        shutdown.pending.append("stop the data watcher")
        watcher.start()
        say(f"Prefect UI: {prefect_server.url.removesuffix('/api')}   MLflow UI: {mlflow_server.url}")
        say(
            f"Schedule: {config.serve.cron or 'none'} ({config.serve.timezone}); new data: {watch.raw_dir} "
            f"checked every {config.serve.watch_seconds:g} s (or `edgepipe data add/check`)"
        )
        say(f"Server logs and state: {state_dir}. Ctrl-C stops the servers.")
        shutdown.serving = True
        while not shutdown.requested.wait(1.0):
            if not runner.is_alive():
                say(f"the Prefect runner stopped: {runner.error!r}")
                break
    except KeyboardInterrupt:
        pass
    finally:
        shutdown.serving = False
        shutdown.begin()
        started_stopping = time.monotonic()
        if watcher is not None:
            watcher.stopped.set()
            watcher.join(5)
            shutdown.step_done("stop the data watcher")
        if deployment_id is not None:
            with short_api_calls():
                try:
                    removed = pause_and_remove_trigger(deployment_id)
                    say(f"Paused the deployment. Removed {removed} automation(s) of the served deployment")
                    shutdown.step_done("pause the deployment and remove its trigger automation")
                except Exception as exc:  # the servers still have to stop
                    say(f"could not pause the deployment or remove its automations: {exc}")
                shutdown.pending.append("cancel in-flight and queued runs")
                try:
                    unfinished = {flow_run.id for flow_run in open_runs(deployment_id)}
                except Exception:
                    unfinished = {None}  # unknown: assume a run was cut short
                try:
                    runner.stop(timeout=max(1.0, shutdown.bound / 2))
                except Exception as exc:
                    say(f"the Prefect runner did not stop cleanly: {type(exc).__name__}: {exc}")
                killed = kill_descendants({s.process.pid for s in shutdown.servers}, grace=3)
                if killed:
                    say(f"Killed {killed} flow-run process(es) that outlived the runner")
                try:
                    unfinished |= cancel_unfinished_runs(deployment_id)
                    shutdown.step_done("cancel in-flight and queued runs")
                except Exception as exc:
                    say(f"could not cancel the queued runs: {exc}")
                drain_prefect_workers()
            in_flight = len(unfinished - {None}) or len(unfinished)
            if in_flight and watch is not None:
                # Those runs never released the data they were triggered for: announce it again next start.
                watch.forget_announcement()
                say(
                    f"Cancelled {in_flight} unfinished run(s); the next `edgepipe serve` runs the pipeline "
                    "on the current data"
                )
        killed = stop_servers(shutdown.servers, timeout=max(1.0, shutdown.bound - 5))
        if killed:
            say(f"{' and '.join(killed)} did not stop on SIGTERM: killed")
        forget_servers(state_dir)
        shutdown.step_done("stop the servers")
        shutdown.finish()
        if shutdown.servers:
            say(
                "Stopped "
                + " and ".join(server.name for server in shutdown.servers)
                + f" in {time.monotonic() - started_stopping:.1f} s"
            )
    return 0
