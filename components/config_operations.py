"""The params.yaml sections about running the pipeline rather than what it computes: the benchmark, MLflow
tracking, the release, `edgepipe serve` and the orchestration of the flow."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from components.config_section import Section


class BenchmarkConfig(Section):
    """bench/benchmark.py: batch-1 latency of every artifact in every runtime that must run it."""

    threads: int = Field(2, ge=1, le=256)
    warmup: int = Field(20, ge=0, le=10_000, description="untimed runs per artifact and runtime")
    rounds: int = Field(10, ge=1, le=10_000, description="interleaved rounds over all cells")
    runs_per_round: int = Field(20, ge=1, le=10_000)


class MlflowConfig(Section):
    """Where runs go is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), never a credential in this file."""

    experiment: str = Field("edgepipe", min_length=1)
    register_model: bool = Field(
        True, description="register the int8 .tflite as a model version if gates pass"
    )
    retries: int = Field(2, ge=0, le=20, description="Prefect retries of the registration task")
    retry_delay_seconds: float = Field(10, ge=0, le=3600)


class ReleaseConfig(Section):
    """What a gate-passing run becomes: outputs pushed to the DVC remote, a git commit of dvc.lock (and
    params.yaml, the data's .dvc file, the metrics) tagged `<tag>`, and the MLflow model version tagged
    with that git tag, the commit, the DVC md5 and the sha256."""

    git_tag: bool = Field(True, description="commit dvc.lock and tag the release in git")
    tag_format: str = Field(
        "{model}@v{version}", description="{model}: model.name, {version}: MLflow version"
    )
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")

    @field_validator("tag_format")
    @classmethod
    def _tag_has_both_fields(cls, value: str) -> str:
        if "{model}" not in value or "{version}" not in value:
            raise ValueError("must contain {model} and {version}, e.g. '{model}@v{version}'")
        if any(c in value for c in " ~^:?*[\\"):
            raise ValueError("git tag names cannot contain spaces or any of ~^:?*[\\")
        return value


class ServeConfig(Section):
    """`edgepipe serve`: servers on this machine, the deployment's schedule and the new-data watcher."""

    cron: str | None = Field("0 3 * * *", description="pipeline schedule (cron, in `timezone`); null: none")
    timezone: str = "UTC"
    watch_seconds: float = Field(10.0, ge=0.5, le=86_400, description="how often the data folder is checked")
    host: str = Field("127.0.0.1", description="bind address of both servers; keep it local")
    prefect_port: int = Field(4200, ge=1, le=65_535)
    mlflow_port: int = Field(5000, ge=1, le=65_535)
    work_pool: str = Field("edgepipe", min_length=1, description="`edgepipe deploy --pool` default")
    stop_timeout_seconds: float = Field(
        30.0, ge=1, le=600, description="Ctrl-C/SIGTERM: everything stopped within this, else killed"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        from cronsim import CronSim, CronSimError

        try:
            if value is not None:
                CronSim(value, datetime.now())
        except CronSimError as exc:
            raise ValueError(f"not a cron expression ({exc}); e.g. '0 3 * * *' = daily at 03:00") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value


class OrchestrationConfig(Section):
    """How the flow spreads work: per-format validation runs on Prefect's task runner."""

    task_runner: Literal["thread", "dask"] = "thread"  # dask: needs `pip install prefect-dask`
    max_workers: int = Field(2, ge=1, le=256)
    dask_address: str | None = Field(None, description="an existing Dask scheduler; unset: a local cluster")
    lock_timeout_seconds: float = Field(
        3600, gt=0, description="how long a run waits for another run of the same project to finish"
    )
