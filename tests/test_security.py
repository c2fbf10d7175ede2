"""Security defaults: models load without running code from the file, servers stay on this machine."""

from __future__ import annotations

import pytest
import tf_keras as keras
import yaml

from components.config import Params
from components.errors import EdgepipeError
from components.model import load_model
from conftest import PROJECT_ROOT


def test_a_keras_file_with_python_code_is_refused(tmp_path):
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    path = tmp_path / "float.keras"
    model.save(path)
    with pytest.raises(EdgepipeError, match=r"float.keras: refused to load: the file holds Python code"):
        load_model(path)


def test_servers_bind_to_this_machine_by_default():
    project = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert Params().serve.host == "127.0.0.1"
    assert project["serve"]["host"] == "127.0.0.1"
