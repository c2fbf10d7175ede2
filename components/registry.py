"""The MLflow model registry, read and moved without logging a run: where the store is, whether it answers,
which version holds given bytes, the champion alias. Light (MLflow's client only), so an unchanged
`edgepipe run` can ask it before TensorFlow or Prefect are imported.

Tracking store: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db (MLflow's default backend).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch  # patch.dict: set env vars for one call, restore after
from urllib.parse import urlsplit, urlunsplit

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import EdgepipeError
from components.results import SCORE_TAGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str | None
    version: str | None
    new_version: bool  # False when an existing version already held the same bytes
    tracking_uri: str
    git_tag: str | None = None  # the release's git tag (components.release)
    champion: str | None = None  # what happened to the champion alias, in words


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def redacted(uri: str) -> str:
    """A URI fit for messages and logs: user and password (http://user:token@host) replaced by ***."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# MLflow's HTTP client retries a refused connection 7 times with backoff (about 4 minutes). The probe tries
# once with a short timeout; the Prefect task's retries are the retry policy.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def check_reachable(uri: str) -> None:
    """Fail early and clearly when the tracking server is down (Prefect retries the task)."""
    try:
        with patch.dict(os.environ, _PROBE_ENV):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise EdgepipeError(
            f"MLflow tracking store {redacted(uri)} is not reachable ({type(exc).__name__}). Start the "
            "server (see README) or unset MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db; the "
            "artifacts are kept on disk and in DVC, run again to register."
        ) from None


def existing_version(uri: str, model_name: str, sha256: str) -> str | None:
    """The number of the model version whose file has this sha256, so an unchanged re-run registers
    nothing new."""
    version = version_holding(uri, model_name, sha256)
    return None if version is None else str(version.version)


def next_version(uri: str, model_name: str) -> int:
    """The number MLflow will give the next version of this model (callers hold the project lock)."""
    versions = MlflowClient(uri).search_model_versions(f"name = '{model_name}'")
    return max((int(v.version) for v in versions), default=0) + 1


def promote_champion(uri: str, model_name: str, version: str, alias: str) -> str:
    """Move `alias` to `version` unless the current holder scored better (the release file's score in LiteRT:
    its `test_accuracy` tag, top-1, or `test_map_50`, a detector's COCO mAP@0.5). Records the decision
    on the version; returns it in words."""
    client = MlflowClient(uri)
    new = client.get_model_version(model_name, version)
    try:
        current = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:  # no version holds the alias yet
        current = None
    score_tag = next((tag for tag in SCORE_TAGS.values() if tag in new.tags), "test_accuracy")
    score_words = {"test_map_50": "test mAP@0.5", "test_centroid_f1": "test centroid F1"}.get(
        score_tag, "test accuracy"
    )
    new_score = float(new.tags[score_tag])
    if current is not None and str(current.version) == str(new.version):
        return f"{alias} is already version {version}"
    current_score = float(current.tags.get(score_tag, "-inf")) if current is not None else None
    if current_score is None or new_score >= current_score:
        client.set_registered_model_alias(model_name, alias, version)
        was = "" if current is None else f" (was version {current.version}, {current_score:.4f})"
        decision = f"{alias} -> version {version}: {score_words} {new_score:.4f}{was}"
    else:
        decision = (
            f"{alias} stays on version {current.version}: version {version} scored {new_score:.4f} < "
            f"{current_score:.4f}"
        )
    client.set_model_version_tag(model_name, version, "champion_decision", decision)
    log.info(decision)
    return decision


def version_holding(uri: str, model_name: str, sha256: str):
    """The model version (MLflow's object, with its tags) whose file has this sha256, or None."""
    client = MlflowClient(uri)
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get("sha256") == sha256:
            return version
    return None


def alias_holder(uri: str, model_name: str, alias: str) -> str | None:
    """The version number the alias points at, None when no version holds it."""
    try:
        return str(MlflowClient(uri).get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None
