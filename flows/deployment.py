"""The pipeline as a Prefect deployment: a cron schedule from params.yaml and a trigger on the new-data
event; served from this process (`edgepipe serve`) or registered on a work pool (`edgepipe deploy`).

New data is a Prefect event, `edgepipe.data.updated`, whose resource is the data folder. Anything may
emit it: the watcher in `edgepipe serve`, `edgepipe data add/check` (e.g. from cron or a CI job after a
bucket sync), or any Prefect client. The deployment's trigger turns it into a run; Prefect's
concurrency limit (1 per deployment) and the project lock (flows.orchestration) keep runs one at a time.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.schedules import Cron

from components.config import Params
from components.datawatch import DATA_EVENT, DataChange, DataWatch, dataset_resource_id
from components.errors import EdgepipeError
from flows.servers import HEARTBEAT_SECONDS

log = logging.getLogger("edgepipe.serve")

DEPLOYMENT_NAME = "edgepipe"


def emit_data_updated(change: DataChange) -> None:
    """The new-data event; needs PREFECT_API_URL (a server with the deployment's trigger)."""
    emit_event(
        event=DATA_EVENT,
        resource={
            "prefect.resource.id": dataset_resource_id(change.raw_dir),
            "prefect.resource.name": change.raw_dir.name,
            "edgepipe.dataset.sha256": change.sha256,
            "edgepipe.dataset.files": str(change.files),
        },
        payload={"previous_sha256": change.previous},
    )


def announce_if_changed(watch: DataWatch) -> DataChange:
    """Emit the event when the content hash differs from the last one announced; record it."""
    change = watch.check()
    if change.changed:
        emit_data_updated(change)
        watch.mark_announced(change)
    return change


def deployment_options(params: Params, root: Path, params_path: str = "params.yaml") -> dict:
    """Schedule, new-data trigger, parameters, one run at a time (later ones queue): the same for a
    served deployment and one on a work pool."""
    root = Path(root).resolve()
    parameters = {"params_path": params_path, "project_dir": str(root)}
    trigger = DeploymentEventTrigger(
        name=f"edgepipe: new data in {params.data.raw_dir}",
        expect={DATA_EVENT},
        match={"prefect.resource.id": dataset_resource_id(root / params.data.raw_dir)},
        parameters=parameters,
    )
    schedules = [Cron(params.serve.cron, timezone=params.serve.timezone)] if params.serve.cron else []
    return {
        "name": DEPLOYMENT_NAME,
        "schedules": schedules,
        "triggers": [trigger],
        "parameters": parameters,
        "concurrency_limit": ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        "description": "edgepipe pipeline: on a schedule and whenever new data lands",
        "tags": ["edgepipe"],
    }


def build_deployment(params: Params, root: Path, params_path: str = "params.yaml"):
    """The deployment `edgepipe serve` runs in its own process."""
    from flows.pipeline import pipeline  # here: `edgepipe data add` announces data without loading MLflow

    return pipeline.to_deployment(**deployment_options(params, root, params_path))


class Watcher(threading.Thread):
    """Polls the data folder every `serve.watch_seconds` and emits the event when its content changed."""

    def __init__(self, watch: DataWatch, interval: float):
        super().__init__(name="edgepipe-data-watcher", daemon=True)
        self.watch, self.interval = watch, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                change = announce_if_changed(self.watch)
                if change.changed:
                    log.info(
                        "new data in %s (sha256 %s): emitted %s",
                        change.raw_dir,
                        change.sha256[:12],
                        DATA_EVENT,
                    )
            except EdgepipeError as exc:
                log.warning("data watcher: %s", exc)
            except Exception as exc:  # a flaky server must not kill the watcher; it tries again next time
                log.warning("data watcher: %s: %s", type(exc).__name__, exc)


def ensure_work_pool(pool: str) -> bool:
    """Create a process work pool of that name if there is none (a docker/kubernetes pool is made with
    `prefect work-pool create NAME --type docker` first). True when it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True


CRASH_DETECTION = "edgepipe: mark flow runs that stop sending heartbeats as crashed"
MISSED_HEARTBEATS = 3


def ensure_crash_detection() -> bool:
    """Prefect's zombie-run automation, once per server: a flow run whose worker died (a killed process, a
    lost machine) stops sending heartbeats and is marked Crashed after MISSED_HEARTBEATS of them, instead
    of staying Running for ever. True when it was created."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(CRASH_DETECTION):
            return False
    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    Automation(
        name=CRASH_DETECTION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *final},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_SECONDS * MISSED_HEARTBEATS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {HEARTBEAT_SECONDS * MISSED_HEARTBEATS} s: its worker or "
                "machine stopped; run the deployment again",
            )
        ],
    ).create()
    return True


def deploy_to_pool(
    params: Params, root: Path, pool: str, params_path: str = "params.yaml", name: str = DEPLOYMENT_NAME
):
    """Register the deployment on a work pool (process here; docker/kubernetes pools by configuration):
    a worker started with `prefect worker start --pool <pool>` runs it from the project folder."""
    root = Path(root).resolve()
    source_flow = Flow.from_source(source=str(root), entrypoint="flows/pipeline.py:pipeline")
    options = {**deployment_options(params, root, params_path), "name": name}
    return source_flow.deploy(work_pool_name=pool, build=False, push=False, print_next_steps=False, **options)
