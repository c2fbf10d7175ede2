"""Coalescing a burst of triggers: a run that starts cancels the queued runs it covers.

The rule. The deployment runs one flow run at a time (concurrency limit 1; later runs queue). When a run of
the deployment starts, every run of the same deployment with the same parameters that is queued and was
created before that moment is cancelled, with a message naming the run that covers it: the starting run
reads the data folder after their triggers fired, so it trains on everything those events announced. Runs
created after that moment stay queued and are coalesced the same way by the next run to start. A run
scheduled for later (the cron schedule's next runs) is not due, so it is left alone.

So a burst of N new-data events while a run is in flight ends as: the run in flight COMPLETED, one run
COMPLETED on all of the burst's data, N-1 runs CANCELLED, each naming that run. No event is lost: every
event has its flow run, and every cancelled run names the run that trained on its data.
"""

from __future__ import annotations

from datetime import datetime


def covered_message(name: str, run_id) -> str:
    return (
        f"covered by flow run {name} ({run_id}), which started after this run was queued and reads the "
        "same data folder"
    )


def cancel_covered_runs(started: datetime) -> list:
    """In a deployment's flow run: cancel the queued runs it covers (the module's rule); returns them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run
    from prefect.states import Cancelled

    from flows.served_deployment import open_runs

    cancelled = []
    with get_client(sync_client=True) as client:
        # this run as the server holds it: its deployment, and its parameters serialised as the queued runs'
        this = client.read_flow_run(flow_run.id)
        for run in open_runs(this.deployment_id):
            covered = (
                run.state_type == StateType.SCHEDULED
                and run.expected_start_time <= started  # due: the schedule's later runs are not
                and run.created <= started
                and run.id != this.id
                and run.parameters == this.parameters
            )
            if not covered:
                continue
            # not forced: a run a worker picked up meanwhile is no longer Scheduled, and the server refuses
            result = client.set_flow_run_state(run.id, Cancelled(message=covered_message(this.name, this.id)))
            if result.state is not None and result.state.type == StateType.CANCELLED:
                cancelled.append(run)
    return cancelled
