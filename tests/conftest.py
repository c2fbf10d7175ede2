"""Shared fixtures: tiny image folders the tests create, tiny params, an isolated Prefect home.

Everything here is real: real PNG files, real TensorFlow training (a few seconds on tiny data), a real
Prefect test server, real git + DVC repositories in temporary folders.
"""

from __future__ import annotations

import atexit
import csv
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Before Prefect, MLflow or TensorFlow are imported by any test module: an isolated Prefect home,
# no server from the developer's profile, and the project's environment defaults.
_PREFECT_HOME = tempfile.mkdtemp(prefix="edgepipe-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("DVC_SITE_CACHE_DIR", tempfile.mkdtemp(prefix="edgepipe-dvc-site-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

import components  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS etc. before TensorFlow)

# isort: split
# Prefect configures logging on import with dictConfig, which closes every existing handler. If TensorFlow
# came first, absl's handler is among them and closing it closes pytest's captured stderr, which silently
# ends the test session after collection. So Prefect is imported before any test module imports TensorFlow.
import prefect.main  # noqa: E402,F401  (prefect itself imports lazily; prefect.main sets up logging)

from components.config import Params  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]  # the venv's DVC, whether or not .venv/bin is on PATH
GIT = ["git", "-c", "user.name=edgepipe-tests", "-c", "user.email=tests@edgepipe.invalid"]

# Small settings so a whole pipeline trains in seconds on 2 cores. Images 16x16 grayscale, no augmentation
# (tests/test_recipe.py covers the default recipe on colour folders). The release gates are the shipped
# ones (the tiny model scores 1.0 in every required cell, agreement 1.0); the section is written out
# because dvc.yaml names it as a stage parameter, and DVC requires it in params.yaml.
TINY_PARAMS = {
    "task": "classification",
    "target": "auto",
    "data": {
        "raw_dir": "data/raw",
        "bundled_if_empty": "none",
        "image": {"height": 16, "width": 16, "channels": 1},
        "split": {"val_fraction": 0.2, "test_fraction": 0.25, "seed": 1},
    },
    "model": {"name": "tiny-patterns", "width_multiplier": 0.5},
    "train": {"epochs": 12, "batch_size": 16, "learning_rate": 0.01, "augment": "none", "seed": 0},
    # 12 pruning steps, not the shipped 100 (34 epochs on this folder): 6 cuts reach 50 % and the tiny
    # model keeps 1.0 in every cell
    "prune": {
        "target_sparsity": 0.5,
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 0.001,
        "frequency": 2,
        "min_steps": 12,
        "clusters": None,  # written out: a sweep's `-S prune.clusters=null` then leaves the section as it is
    },
    "qat": {"epochs": 2, "batch_size": 16, "learning_rate": 0.0001},
    "export": {"onnx_opset": 13, "representative_samples": 32},
    "gates": {"max_accuracy_drop": 0.05, "min_agreement": 0.9},
    "mlflow": {"experiment": "edgepipe-tests", "register_model": True},
    "detection": {"resize": "stretch"},  # read by the detection steps only; dvc.yaml names it
}


def pattern_image(label: int, rng: np.random.Generator, size: tuple[int, int] = (20, 20)) -> np.ndarray:
    """A grayscale image whose class is easy to learn: horizontal bars, vertical bars or a diagonal."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.integers(0, 4)
    if label == 0:
        base = ((yy + phase) // 2) % 2
    elif label == 1:
        base = ((xx + phase) // 2) % 2
    else:
        base = (np.abs(yy - xx - phase + 2) < 3).astype(int)
    noise = rng.normal(0, 25, size)
    return np.clip(base * 200 + 30 + noise, 0, 255).astype(np.uint8)


def write_image_folder(
    root: Path, per_class: int = 24, classes=("bars", "stripes", "diagonal"), seed=0
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern_image(label % 3, rng)).save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "raw")


@pytest.fixture
def tiny_params() -> Params:
    return Params.model_validate(TINY_PARAMS)


def write_params(path: Path, overrides: dict | None = None) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# Ports for the servers tests start, below Linux's ephemeral range (32768+), so the kernel never hands one
# to an outgoing connection; each pytest-xdist worker counts through its own block, so no two tests (nor two
# workers) are given the same port between choosing it and the server binding it.
_PORT_BLOCK = 1000
_next_port = itertools.count(20000 + _PORT_BLOCK * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]))


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on, never returned twice in a session."""
    for port in _next_port:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")  # unreachable: the counter is endless


def wait_for(predicate, what: str, log: Path, timeout: float = 300, every: float = 0.5):
    """Poll until `predicate()` is truthy and return its value; on timeout fail with the tail of `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; serve log:\n{log.read_text()[-6000:]}")


def api(url: str, body: dict | None = None, method: str = "POST"):
    """A JSON call to a real server's REST API (Prefect's), retried on the 503 a busy SQLite-backed
    Prefect server answers now and then."""
    data = None if method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    for attempt in range(10):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(1)


def run(cmd: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, **kwargs)


def make_project_repo(dest: Path, per_class: int = 24) -> Path:
    """A copy of this project as a user's clone would hold it (code, dvc.yaml, tiny params, user data),
    as a real git + DVC repository whose default remote is the folder `remote` beside it. Copied from a
    repository made once per session and size: git and DVC record the remote as `../remote`, relative."""
    shutil.copytree(_project_template(per_class), dest, symlinks=True)
    return dest


_TEMPLATES: dict[int, Path] = {}


def _project_template(per_class: int) -> Path:
    if per_class not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="edgepipe-template-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        dest = base / "project"
        dest.mkdir()
        for name in ("components", "flows"):
            shutil.copytree(PROJECT_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
            shutil.copy2(PROJECT_ROOT / name, dest / name)
        write_params(dest / "params.yaml")
        write_image_folder(dest / "data" / "raw", per_class=per_class)
        run(["git", "init", "-q", "-b", "main"], dest)
        run([*DVC, "init", "-q"], dest)
        run([*DVC, "remote", "add", "-d", "local", "../remote"], dest)
        run(["git", "add", "-A"], dest)
        run([*GIT, "commit", "-q", "-m", "project"], dest)
        _TEMPLATES[per_class] = dest
    return _TEMPLATES[per_class]


@dataclass(frozen=True)
class TrainedProject:
    """The tiny project trained once per session (see `trained`): two snapshots of its folder."""

    through_qat: Path  # prepare, train, prune and qat done and recorded in dvc.lock; no export yet
    unreleased: Path  # every step done and recorded; nothing pushed, registered or tagged
    params: Params
    results: dict  # what each step returned: {stage name: result}

    def copy(self, snapshot: Path, base: Path) -> Path:
        """A copy at base/project, its DVC remote the empty folder base/remote (the snapshot's remote is
        relative: ../remote beside the project folder)."""
        root = base / "project"
        shutil.copytree(snapshot, root, symlinks=True)
        (base / "remote").mkdir()
        return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedProject:
    """The tiny project (a real git + DVC repository) trained once for every test that needs a trained one:
    each step run in-process through the stage table and recorded with `dvc commit`, as the flow does it.
    Tests copy a snapshot; the one from-scratch `edgepipe` flow run is tests/test_pipeline_flow.py's."""
    from components import versioning
    from components.paths import ProjectPaths
    from components.stages import STAGES

    base = tmp_path_factory.mktemp("trained")
    root = make_project_repo(base / "work", per_class=30)
    params = Params.model_validate(yaml.safe_load((root / "params.yaml").read_text()))
    paths = ProjectPaths(root)
    snapshots, results = base / "snapshots", {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # as the flow and `dvc repro` run: from the project folder
        versioning.track_data(root, paths.raw_dir(params.data))  # the ingest step
        for stage in STAGES:
            results[stage.name] = stage.run(params, paths)
            versioning.commit_stage(root, stage.name)
            if stage.name == "qat":
                shutil.copytree(root, snapshots / "through-qat", symlinks=True)
    shutil.copytree(root, snapshots / "unreleased", symlinks=True)
    return TrainedProject(snapshots / "through-qat", snapshots / "unreleased", params, results)


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A real temporary Prefect server for the session (Prefect's own test harness): flows run in the test
    process use it, and `edgepipe run` subprocesses given its API URL (returned) use it as a team's server."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


# --- running on several cores (make test: pytest -n auto --dist loadgroup --no-loadscope-reorder) ---------

# The heaviest groups first (seconds on this 2-core machine, from --durations), so the workers finish
# together instead of one starting the MobileNetV2 test as the other runs out of work.
HEAVIEST_FIRST = [
    "trained-project",  # the session's trained project: test_faults.py and test_model_steps.py
    "test_pipeline_flow",
    "test_detection",  # its module fixture releases a detector through the flow
    "test_fomo",  # its module fixture runs the FOMO head through every step
    "test_mobilenet_v2",
    "test_serve_integration",
    "test_serve_shutdown",
    "test_recipe",
    "test_transfer",
    "test_bad_input",
]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Each module runs on one worker (its module fixtures are made once); the modules that copy the
    session's trained project share one worker, so it is trained once. The order is the same in every
    worker's collection, as pytest-xdist requires."""
    shares_trained = {item.module.__name__ for item in items if "trained" in item.fixturenames}

    def group(item) -> str:
        module = item.module.__name__
        return "trained-project" if module in shares_trained else module

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable: file order within a group


def pytest_xdist_node_collection_finished(node, ids):
    """Under `--dist loadgroup` each test id a worker collects carries its group (`...@group`); without it
    pytest-xdist spreads a module's tests over the workers and each trains its own copy, silently."""
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if node.config.getvalue("dist") == "loadgroup" and ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not group {len(ungrouped)} test(s) (first: {ungrouped[0]}): pytest and "
            "pytest-xdist disagree on where a test's id is kept; install requirements.lock's versions"
        )


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """`make stack-test`: the load and fault figures of tests/test_stack_scenarios.py, after the rest."""
    rows = getattr(sys.modules.get("test_stack_scenarios"), "STACK_SUMMARY", [])
    if rows:
        terminalreporter.section("edgepipe stack summary")
        for scenario, figures in rows:
            terminalreporter.write_line(f"{scenario:<34} {figures}")


def assert_histories_have_the_plotted_column(paths, score: str) -> None:
    """Every history CSV that dvc.yaml plots has the column the plot draws, the task's validation score."""
    from components.stages import STAGES

    plotted = {f: props for s in STAGES for f, props in s.plots(paths).items() if "history" in f.name}
    assert len(plotted) == 3  # train, prune, qat
    for file, props in plotted.items():
        rows = list(csv.DictReader(file.open()))
        assert rows and all(row[props["x"]] and row[props["y"]] == row[score] for row in rows), file
