"""register's guard against a missing tracking server: one quick probe, a message that names the URI and
the fix, and MLflow's own retry settings left as they were."""

from __future__ import annotations

import os
import socket

import pytest

from components.errors import EdgepipeError
from components.register import check_reachable, redacted


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_is_a_clear_error_and_env_is_restored():
    uri = f"http://127.0.0.1:{closed_port()}"
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    with pytest.raises(EdgepipeError, match=f"MLflow tracking store {uri} is not reachable") as info:
        check_reachable(uri)
    assert "unset MLFLOW_TRACKING_URI" in str(info.value)
    assert "run again to register" in str(info.value)
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before


def test_a_local_sqlite_store_is_reachable(tmp_path):
    check_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (tmp_path / "mlflow.db").is_file()


def test_credentials_in_the_tracking_uri_never_reach_a_message():
    uri = f"http://alice:s3cret-token@127.0.0.1:{closed_port()}"
    with pytest.raises(EdgepipeError) as info:
        check_reachable(uri)
    assert "s3cret-token" not in str(info.value) and "alice" not in str(info.value)
    assert "http://***@127.0.0.1:" in str(info.value)
    assert redacted("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"


def test_params_yaml_has_no_place_for_a_credential():
    """Secrets come from the environment: no params key may be named like one (pydantic rejects unknown
    keys, so a key that is not in the schema cannot be added either)."""
    from components.config import Params

    def keys(model) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            out.append(name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                out += keys(annotation)
        return out

    every_key = keys(Params)
    assert len(every_key) > 40
    assert not [k for k in every_key if any(w in k.lower() for w in ("password", "secret", "token", "key"))]
