"""The served deployment's Prefect side, for `edgepipe serve` (flows.serve): Prefect's Runner on a thread of
its own, and the API calls that stop serving it: pause the deployment and remove its trigger automation,
cancel the runs still open.

Prefect is imported inside the functions: `edgepipe serve` sets PREFECT_API_URL once its server is up, and
Prefect reads its settings when first imported.
"""

from __future__ import annotations

import asyncio
import threading

CANCEL_REASON = "edgepipe serve was stopped"


class RunnerThread(threading.Thread):
    """Prefect's Runner with the served deployment, on an event loop of its own."""

    def __init__(self, deployment):
        super().__init__(name="edgepipe-runner", daemon=True)
        from prefect.runner import Runner

        self.deployment = deployment
        self.runner = Runner(name="edgepipe-serve", pause_on_shutdown=False)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        async def main():
            self.loop = asyncio.get_running_loop()
            self.deployment_id = await self.runner.aadd_deployment(self.deployment)
            self.ready.set()
            await self.runner.start()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def stop(self, timeout: float) -> bool:
        """Runner.astop(): in-flight runs cancelled (process killed, state Cancelled), loops ended."""
        if self.loop is not None and self.is_alive():
            future = asyncio.run_coroutine_threadsafe(self.runner.astop(), self.loop)
            future.result(timeout=timeout)
        self.join(timeout)
        return not self.is_alive()


def short_api_calls():
    """Prefect client calls during shutdown: no retries, short timeouts (the default retries for minutes)."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # Two retries: the SQLite-backed server answers 503 now and then while a cancelled run writes its state.
    return temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 2, PREFECT_API_REQUEST_TIMEOUT: 5})


def drain_prefect_workers() -> None:
    """Send the logs and events still queued while the server is up (else they fail loudly at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=3)
        except Exception:  # noqa: BLE001  (best effort: the servers stop next either way)
            pass


def pause_and_remove_trigger(deployment_id) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)
        owned = client.read_resource_related_automations(f"prefect.deployment.{deployment_id}")
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    return len(owned)


def open_runs(deployment_id) -> list:
    """The deployment's runs that are queued (waiting for the concurrency slot), pending or running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    open_states = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_states))
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        )


def cancel_unfinished_runs(deployment_id) -> set:
    """What is still open once the runner stopped: Cancelled with the reason, none left Late or Running."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    runs = open_runs(deployment_id)
    with get_client(sync_client=True) as client:
        for flow_run in runs:
            message = f"{CANCEL_REASON} before this run {'ended' if flow_run.start_time else 'started'}"
            client.set_flow_run_state(flow_run.id, Cancelled(message=message), force=True)
    return {flow_run.id for flow_run in runs}
