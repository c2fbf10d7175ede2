"""A stage's code dependencies are derived from imports, and they cover everything its module loads."""

from __future__ import annotations

import json
import subprocess
import sys

from components.code_deps import code_dependencies, imported_modules
from components.stages import STAGES
from conftest import PROJECT_ROOT


def test_the_import_scan_sees_imports_inside_functions_and_skips_the_marked_ones(tmp_path):
    package = tmp_path / "components"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from components import b\n"
        "def late():\n"
        "    from components.c import thing\n"
        "def check():\n"
        "    from components.d import names  # not a stage dependency\n"
    )
    for name in "bcd":
        (package / f"{name}.py").write_text("import os\n")
    imported = imported_modules(package / "a.py")
    assert {"components.b", "components.c"} <= imported and not any(".d" in name for name in imported)
    assert code_dependencies("components.a", tmp_path) == (
        "components/__init__.py",
        "components/a.py",
        "components/b.py",
        "components/c.py",
    )


# Which project module imports which, recorded at run time in one fresh interpreter that imports every
# stage's module (an independent check of the static scan, for the imports that run at import time).
# The large third-party packages are imported before the recorder is installed: they import no project
# module, and each of their own thousands of imports through a Python-level __import__ tripled the time.
IMPORT_EDGES = """
import builtins, importlib, json, sys
import components  # the environment TensorFlow needs, set before it is imported
import cv2, matplotlib.pyplot, mlflow, onnx, tensorflow, tf2onnx
edges = {}
original = builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    module = original(name, globals, locals, fromlist, level)
    importer = (globals or {}).get("__name__", "")
    project = importer.split(".")[0] in ("components", "flows")
    if project and level == 0 and name.split(".")[0] == "components":
        found = edges.setdefault(importer, set())
        found.add(name)
        found.update(f"{name}.{item}" for item in fromlist or () if f"{name}.{item}" in sys.modules)
    return module

builtins.__import__ = recording_import
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({k: sorted(v) for k, v in edges.items()}))
"""


def test_every_project_module_a_stage_module_imports_is_a_dvc_dependency_of_it():
    recorded = subprocess.run(
        [sys.executable, "-c", IMPORT_EDGES, *(stage.module for stage in STAGES)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    edges = json.loads(recorded.stdout.splitlines()[-1])
    assert "components.prepare" in edges and "components.validate" in edges  # the recorder saw imports
    for stage in STAGES:
        reached, pending = set(), [stage.module]
        while pending:
            module = pending.pop()
            if module not in reached:
                reached.add(module)
                pending.extend(edges.get(module, ()))
        files = {name.replace(".", "/") + ".py" for name in reached} | {"components/__init__.py"}
        files = {f for f in files if (PROJECT_ROOT / f).is_file()}
        missing = files - set(stage.code)
        assert not missing, f"stage {stage.name}: imports {sorted(missing)}, which its dvc.yaml deps miss"
