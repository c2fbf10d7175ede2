"""register's guard against a missing tracking server: one quick probe, a message that names the URI and
the fix, and MLflow's own retry settings left as they were."""

from __future__ import annotations

import os
import socket

import pytest

from components.errors import EdgepipeError
from components.registry import check_reachable, redacted


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


def test_champion_moves_only_to_a_version_that_is_not_worse(tmp_path):
    """Real SQLite registry: versions with the `test_accuracy` tag a release carries."""
    from mlflow.tracking import MlflowClient

    from components.registry import next_version, promote_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert next_version(uri, "m") == 1
    client.create_registered_model("m")
    decisions = []
    for accuracy in (0.90, 0.85, 0.95, 0.95):
        version = client.create_model_version(
            "m", source=str(tmp_path), tags={"test_accuracy": f"{accuracy:.6f}"}
        ).version
        decisions.append(promote_champion(uri, "m", str(version), "champion"))
    assert next_version(uri, "m") == 5
    assert decisions[0] == "champion -> version 1: test accuracy 0.9000"
    assert decisions[1] == "champion stays on version 1: version 2 scored 0.8500 < 0.9000"
    assert decisions[2] == "champion -> version 3: test accuracy 0.9500 (was version 1, 0.9000)"
    assert decisions[3] == "champion -> version 4: test accuracy 0.9500 (was version 3, 0.9500)"  # not worse
    assert str(client.get_model_version_by_alias("m", "champion").version) == "4"
    assert client.get_model_version("m", "2").tags["champion_decision"] == decisions[1]
    assert promote_champion(uri, "m", "4", "champion") == "champion is already version 4"
