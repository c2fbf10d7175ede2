"""register's guard against a missing tracking server: one quick probe, a message that names the URI and
the fix, and MLflow's own retry settings left as they were."""

from __future__ import annotations

import os
import socket

import pytest

from components.errors import EdgepipeError
from components.register import check_reachable


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
