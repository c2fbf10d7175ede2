"""flows.orchestration on real parts: the per-format fan-out runs as Prefect task runs on a real Prefect
server (thread pool and a real local Dask cluster), results come back in item order, and the project lock
makes a second process wait."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import get_run_context

from components.config import OrchestrationConfig
from components.errors import EdgepipeError
from components.locking import Timeout, project_lock
from flows.orchestration import make_task_runner, task_runner_map

FORMATS = [SimpleNamespace(name=name) for name in ("tflite_float32", "tflite_float16", "tflite_int8", "onnx")]


def square_later(item: SimpleNamespace) -> str:
    """Module level, so Dask can pickle it into its worker processes. Later items finish first."""
    time.sleep(0.05 * (len(FORMATS) - [f.name for f in FORMATS].index(item.name)))
    return item.name.upper()


def task_run_names(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(run.name for run in runs)


def run_fan_out(config: OrchestrationConfig, fn=square_later) -> tuple[list, object]:
    @flow(name="fan-out-test")
    def fan_out() -> tuple[list, object]:
        results = task_runner_map(config, "validate")(fn, FORMATS)
        return results, get_run_context().flow_run.id

    return fan_out()


def test_thread_runner_fans_out_in_parallel_and_keeps_item_order(prefect_api):
    # Two items meet at a barrier: it only opens when both run at the same time (max_workers 2).
    barrier = threading.Barrier(2, timeout=30)

    def meet(item: SimpleNamespace) -> str:
        if item.name in ("tflite_float32", "tflite_float16"):
            barrier.wait()
        return square_later(item)

    results, flow_run_id = run_fan_out(OrchestrationConfig(task_runner="thread", max_workers=2), meet)
    assert results == [f.name.upper() for f in FORMATS]
    names = task_run_names(flow_run_id)
    assert len(names) == len(FORMATS)
    for name, item in zip(names, sorted(f.name for f in FORMATS), strict=True):
        assert name.startswith(f"validate-{item}-"), names


def test_dask_runner_runs_the_same_fan_out_on_a_local_cluster(prefect_api):
    from prefect_dask import DaskTaskRunner

    config = OrchestrationConfig(task_runner="dask", max_workers=2)
    assert isinstance(make_task_runner(config), DaskTaskRunner)
    results, flow_run_id = run_fan_out(config)
    assert results == [f.name.upper() for f in FORMATS]
    names = [name.rsplit("-", 1)[0] for name in task_run_names(flow_run_id)]
    assert names == sorted(f"validate-{f.name}" for f in FORMATS)


def test_dask_address_points_the_runner_at_an_existing_scheduler():
    runner = make_task_runner(OrchestrationConfig(task_runner="dask", dask_address="tcp://127.0.0.1:8786"))
    assert runner.address == "tcp://127.0.0.1:8786"


def test_dask_without_prefect_dask_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import prefect_dask now raises ImportError
    expected = r"prefect-dask is not installed.*edgepipe\[dask\].*task_runner: thread"
    with pytest.raises(EdgepipeError, match=expected):
        make_task_runner(OrchestrationConfig(task_runner="dask"))


def hold_lock_in_another_process(root: Path) -> subprocess.Popen:
    """A process that takes the project lock, says "held", and keeps it until a line arrives on stdin."""
    code = textwrap.dedent(f"""
        import sys
        from components.config import OrchestrationConfig
        from components.locking import project_lock
        with project_lock({str(root)!r}, OrchestrationConfig()):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def lock_is_free(root: Path) -> bool:
    try:
        with project_lock(root, OrchestrationConfig(lock_timeout_seconds=5)):
            return True
    except Timeout:
        return False


def test_project_lock_makes_a_second_process_wait_until_the_first_finishes(tmp_path: Path):
    holder = hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(Timeout):
            project_lock(tmp_path, OrchestrationConfig(lock_timeout_seconds=0.5)).acquire()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
        assert lock_is_free(tmp_path)
        assert (tmp_path / ".dvc" / "tmp" / "edgepipe-run.lock").exists()  # DVC keeps .dvc/tmp out of git
    finally:
        holder.kill()


def test_project_lock_is_released_when_its_process_is_killed(tmp_path: Path):
    holder = hold_lock_in_another_process(tmp_path)
    holder.kill()  # SIGKILL: no cleanup code runs; the OS drops the lock
    holder.wait(timeout=60)
    assert lock_is_free(tmp_path)
