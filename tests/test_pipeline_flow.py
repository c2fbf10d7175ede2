"""The real Prefect flow end to end in a temporary git + DVC repository, with a temporary MLflow SQLite
store and a temporary local DVC remote: registration tags, clean `dvc status`, an unchanged re-run that
skips the heavy steps, and a fresh clone that `dvc pull`s byte-identical artifacts."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from components import versioning
from components.config import load_params
from components.dataset import load_split
from components.formats import FORMATS, RELEASE_FORMAT, get_format
from components.paths import ProjectPaths
from components.prepare import describe_data
from components.up_to_date import unchanged_release
from conftest import DVC, make_project_repo, run
from flows.pipeline import pipeline

pytestmark = pytest.mark.slow

HEAVY_STEPS = ("train", "prune", "qat", "export_tflite", "export_onnx", "mcu", "validate", "report")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp("e2e")
    root = make_project_repo(base / "project")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
        result = state.result()
    return {
        "root": root,
        "base": base,
        "uri": uri,
        "result": result,
        "flow_run_id": state.state_details.flow_run_id,
    }


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_int8_model_version_is_registered_with_its_provenance(first_run):
    root, result = first_run["root"], first_run["result"]
    registration = result.registration
    assert registration.version == "1" and registration.model_name == "tiny-patterns"
    assert registration.new_version
    version = MlflowClient(first_run["uri"]).get_model_version("tiny-patterns", "1")
    release = get_format(RELEASE_FORMAT).path(ProjectPaths(root).export_dir)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    locked = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}
    assert version.tags["sha256"] == sha256(release)
    assert version.tags["dvc_md5"] == locked["models/export/model_int8.tflite"]
    assert version.tags["dvc_md5"] == hashlib.md5(release.read_bytes()).hexdigest()
    assert version.tags["prefect_flow_run_id"] == str(first_run["flow_run_id"])
    assert len(version.tags["params_hash"]) == 16
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert version.tags["git_commit"].startswith(head)


def test_mlflow_run_has_params_metrics_and_artifacts(first_run):
    client = MlflowClient(first_run["uri"])
    mlflow_run = client.get_run(first_run["result"].registration.run_id)
    assert mlflow_run.data.params["prune.target_sparsity"] == "0.5"
    assert mlflow_run.data.params["data.image.height"] == "16"
    metrics = mlflow_run.data.metrics
    for fmt in FORMATS:
        assert (
            metrics[f"{fmt.name}.bytes"]
            == fmt.path(ProjectPaths(first_run["root"]).export_dir).stat().st_size
        )
        for target in (t for t in fmt.runtimes if t.required):
            key = f"{fmt.name}.{target.name.replace(':', '_')}"
            assert metrics[f"{key}.passed"] == 1.0
            assert 0.0 <= metrics[f"{key}.accuracy"] <= 1.0
            assert 0.0 <= metrics[f"{key}.agreement"] <= 1.0
        assert metrics[f"{fmt.name}.gzip_bytes"] < metrics[f"{fmt.name}.bytes"]
    assert metrics["tflite_int8.tflm.arena_bytes"] > 0
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert metrics["gates_passed"] == 1.0
    logged = {
        a.path
        for folder in ("export", "reports", "metrics", "mcu", "mcu/openmv")
        for a in client.list_artifacts(mlflow_run.info.run_id, folder)
    }
    assert {
        "export/model_int8.tflite",
        "export/model_int8.onnx",
        "reports/report.md",
        "reports/confusion_release.png",
        "metrics/validation.json",
        "metrics/release_predictions.csv",
        "mcu/model_data.cc",
        "mcu/openmv/main.py",
    } <= logged


def test_mlflow_run_page_has_curves_dataset_input_and_description(first_run):
    """What the run page shows: per-epoch curves with steps, the data as inputs, the results as its
    description, and the input the model got."""
    client = MlflowClient(first_run["uri"])
    run_id = first_run["result"].registration.run_id
    mlflow_run = client.get_run(run_id)
    for stage in ("train", "prune", "qat"):
        history = ProjectPaths(first_run["root"]).history_file(stage).read_text().splitlines()
        curve = client.get_metric_history(run_id, f"{stage}.val_accuracy")
        assert [m.step for m in curve] == list(range(1, len(history)))  # one point per epoch, no header
    raw_dvc = yaml.safe_load((first_run["root"] / "data" / "raw.dvc").read_text())
    inputs = {d.dataset.name: d for d in mlflow_run.inputs.dataset_inputs}
    assert set(inputs) == {"raw-train", "raw-val", "raw-test"}
    assert {d.dataset.digest for d in inputs.values()} == {raw_dvc["outs"][0]["md5"][:32]}
    tags = {t.key: t.value for t in inputs["raw-train"].tags}
    assert json.loads(tags["class_counts"]) == {"bars": 24, "diagonal": 24, "stripes": 24}
    assert mlflow_run.data.tags["input_shape"] == "16x16x1"
    note = mlflow_run.data.tags["mlflow.note.content"]
    assert note.startswith("Data: 72 images in 3 classes") and "| tflite_int8 | litert |" in note
    metrics = mlflow_run.data.metrics
    for model in ("float", "release"):
        for name in ("bars", "diagonal", "stripes"):
            assert 0.0 <= metrics[f"per_class.{model}.{name}.f1"] <= 1.0
    matrices = mlflow.artifacts.load_dict(f"runs:/{run_id}/confusion_matrices.json")
    assert matrices["classes"] == ["bars", "diagonal", "stripes"]
    assert sum(map(sum, matrices["release"])) == first_run["result"].report.test_images


def test_the_mlflow_run_spans_the_pipeline_run(first_run):
    """Opened when the flow started (before training), closed FINISHED when it ended."""
    mlflow_run = MlflowClient(first_run["uri"]).get_run(first_run["result"].registration.run_id)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(first_run["flow_run_id"])
    assert mlflow_run.info.status == "FINISHED"
    mlflow_start = mlflow_run.info.start_time / 1000
    mlflow_end = mlflow_run.info.end_time / 1000
    trained = (ProjectPaths(first_run["root"]).float_model).stat().st_mtime
    assert flow_run.start_time.timestamp() <= mlflow_start < trained  # before any model existed
    assert 0 <= flow_run.end_time.timestamp() - mlflow_end < 10  # the last thing the flow did


def test_registered_pyfunc_serves_the_tflite_with_litert(first_run):
    root = first_run["root"]
    x, _ = load_split(ProjectPaths(root).prepared_dir, "test")
    mlflow.set_tracking_uri(first_run["uri"])
    model = mlflow.pyfunc.load_model("models:/tiny-patterns/1")
    probabilities = model.predict(x[:5])
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # the signature logged from an input example: one unnamed float32 image tensor in, probabilities out
    (image,) = model.metadata.get_input_schema().inputs
    assert image.name is None and image.type == np.dtype("float32") and image.shape == (-1, *x.shape[1:])
    (output,) = model.metadata.get_output_schema().inputs
    assert output.shape == (-1, 3)
    # its requirements: the installed versions of what it imports, so a serving machine resolves the same
    requirements = Path(mlflow.artifacts.download_artifacts("models:/tiny-patterns/1")) / "requirements.txt"
    assert requirements.read_text().split() == [
        f"{name}=={importlib.metadata.version(name)}" for name in ("mlflow", "numpy", "ai-edge-litert")
    ]


def test_report_is_a_prefect_artifact(first_run):
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["edgepipe-results"]))
        )
    table = [a for a in artifacts if a.flow_run_id == first_run["flow_run_id"]][0].data
    for fmt in FORMATS:
        assert fmt.filename in table
    data_line = describe_data(first_run["result"].data)
    assert table == data_line + "\n\n" + (first_run["root"] / "reports" / "report.md").read_text()


def test_dvc_status_is_clean_and_repro_skips_every_stage(first_run):
    root = first_run["root"]
    assert versioning.pipeline_status(root) == {}
    repro = run([*DVC, "repro"], root).stdout
    for stage in ("prepare", *HEAVY_STEPS):
        assert f"Stage '{stage}' didn't change, skipping" in repro
    assert "Running stage" not in repro
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", *HEAVY_STEPS}


def test_unchanged_rerun_skips_heavy_steps_and_registers_nothing_new(first_run):
    root = first_run["root"]
    outputs = [p for p in (root / "models").rglob("*") if p.is_file()]
    before = {p: (p.stat().st_mtime_ns, sha256(p)) for p in outputs}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", first_run["uri"])
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
    result = state.result()
    assert {p: (p.stat().st_mtime_ns, sha256(p)) for p in outputs} == before
    states = task_states(state.state_details.flow_run_id)
    assert all(states[step] == "Skipped" for step in ("prepare", *HEAVY_STEPS)), states
    assert result.registration.version == "1" and not result.registration.new_version
    client = MlflowClient(first_run["uri"])
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny-patterns'")] == ["1"]
    assert versioning.pipeline_status(root) == {}


def test_an_unchanged_project_is_answered_without_the_flow_and_any_change_is_not(first_run):
    """What `edgepipe run` asks before TensorFlow or Prefect load: the release stands while nothing that
    dvc.lock records has changed; a changed param, data file or stage output sends it through the flow."""
    root = first_run["root"]
    params_file = root / "params.yaml"
    params = load_params(params_file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", first_run["uri"])
        answer = unchanged_release(params, root, push=False)
        assert answer is not None and answer.pushed is None
        assert answer.registration.version == "1" and answer.registration.git_tag == "tiny-patterns@v1"
        assert answer.report.passed and answer.data["classes"] == 3
        original = params_file.read_text()
        try:
            changed = original.replace("learning_rate: 0.0001", "learning_rate: 0.0002")
            assert changed != original
            params_file.write_text(changed)
            assert unchanged_release(load_params(params_file), root, push=False) is None  # qat params
        finally:
            params_file.write_text(original)
        image = next((root / "data" / "raw" / "bars").glob("*.png"))
        kept = image.read_bytes()
        try:
            image.write_bytes(next((root / "data" / "raw" / "stripes").glob("*.png")).read_bytes())
            assert unchanged_release(params, root, push=False) is None  # the data changed
        finally:
            image.write_bytes(kept)
        assert unchanged_release(params, root, push=False) is not None
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first_run['base'] / 'empty.db'}")
        assert unchanged_release(params, root, push=False) is None  # no registry holds the release


def test_a_deleted_output_is_rebuilt_and_recorded_instead_of_served_from_cache(first_run):
    root = first_run["root"]
    onnx_file = get_format("onnx_float32").path(ProjectPaths(root).export_dir)
    expected = sha256(onnx_file)
    onnx_file.unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", first_run["uri"])
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert states["export_onnx"] == "Completed", states  # ran again although its inputs are unchanged
    assert all(states[step] == "Skipped" for step in ("prepare", "train", "prune", "qat", "export_tflite"))
    assert sha256(onnx_file) == expected  # the export is reproducible: the same bytes come back
    assert versioning.pipeline_status(root) == {}
    assert state.result().registration.version == "1"


def test_dvc_repro_runs_a_stage_through_the_cli_and_reproduces_its_bytes(first_run):
    """`dvc repro --force` (no Prefect) runs `edgepipe stage ...` in new processes; seeded, deterministic
    training, conversion and plotting give the same float model, TFLite files, C array and report PNGs,
    so dvc.lock (every output's md5) does not change."""
    root = first_run["root"]
    paths = ProjectPaths(root)
    lock_before = (root / "dvc.lock").read_text()
    files = [paths.float_model, paths.mcu_dir / "model_data.cc", *sorted(paths.reports_dir.glob("*.png"))]
    files += sorted(paths.export_dir.glob("*.tflite"))
    assert len(files) == 2 + 3 + 4
    before = {path: sha256(path) for path in files}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    stages = ("train", "export_tflite", "mcu", "report")
    output = run([*DVC, "repro", "--force", "--single-item", *stages], root, env=env).stdout
    assert all(f"Running stage '{stage}'" in output for stage in stages), output
    assert {path: sha256(path) for path in files} == before
    assert (root / "dvc.lock").read_text() == lock_before
    assert versioning.pipeline_status(root) == {}


def test_release_is_a_tagged_git_commit_of_the_lock_the_version_points_at(first_run):
    root = first_run["root"]
    version = MlflowClient(first_run["uri"]).get_model_version("tiny-patterns", "1")
    assert version.tags["git_tag"] == "tiny-patterns@v1"
    tagged = run(["git", "rev-list", "-n", "1", "tiny-patterns@v1"], root).stdout.strip()
    assert version.tags["git_commit"] == tagged  # the run's commit is the release commit, clean
    committed = run(["git", "show", "--name-only", "--format=%s", tagged], root).stdout.split()
    assert {"dvc.lock", "data/raw.dvc", "metrics/validation.json"} <= set(committed)
    assert (
        run(["git", "status", "--porcelain", "dvc.lock", "params.yaml", "data", "metrics"], root).stdout == ""
    )
    alias = MlflowClient(first_run["uri"]).get_model_version_by_alias("tiny-patterns", "champion")
    assert str(alias.version) == "1" and "champion -> version 1" in alias.tags["champion_decision"]


def test_clone_and_dvc_pull_return_byte_identical_artifacts(first_run):
    root, base = first_run["root"], first_run["base"]
    clone = base / "clone"
    run(["git", "clone", "-q", "--branch", "tiny-patterns@v1", str(root), str(clone)], base)
    assert not (clone / "models").exists()
    run([*DVC, "pull", "-q", "models/export/model_int8.tflite", "models/export/model_float32.onnx"], clone)
    for name in ("model_int8.tflite", "model_float32.onnx"):
        assert (clone / "models/export" / name).read_bytes() == (root / "models/export" / name).read_bytes()
    version = MlflowClient(first_run["uri"]).get_model_version("tiny-patterns", "1")
    assert sha256(clone / "models/export/model_int8.tflite") == version.tags["sha256"]
    run([*DVC, "pull", "-q"], clone)  # and everything else: data, models, prepared splits
    assert run([*DVC, "status"], clone).stdout.strip().endswith("up to date.")
    shutil.rmtree(clone)


def test_a_failing_gate_blocks_registration_and_says_which_gate(first_run, tmp_path):
    """Release gates set below the measured arena and latency (a Raspberry Pi target with a 1 µs budget):
    the run still logs everything to MLflow, names each gate and the measured value, registers nothing
    and pushes nothing."""
    root = tmp_path / "gated"
    shutil.copytree(first_run["root"], root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gates"]["max_arena_bytes"] = 1000
    params["target"] = "raspberry_pi_4"  # its cells (LiteRT, OpenCV's ONNX) pass on this model
    params["gates"]["max_latency_ms"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    client = MlflowClient(first_run["uri"])
    versions_before = client.search_model_versions("name = 'tiny-patterns'")
    remote = first_run["base"] / "remote"  # the first run pushed its release there; the copy pushes there
    run([*DVC, "remote", "add", "--force", "--default", "local", str(remote)], root)
    remote_before = sorted(p.relative_to(remote) for p in remote.rglob("*"))
    assert remote_before  # the first run's outputs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", first_run["uri"])
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "release gates failed, nothing registered or pushed" in message
    assert "tflite_int8 on tflm: tensor arena" in message and "> gates.max_arena_bytes 1000" in message
    assert re.search(r"tflite_int8 on litert: median latency [\d.]+ ms > gates.max_latency_ms 0.001", message)
    assert "The model is too slow for the device (build-machine proxy) (1):" in message
    versions_after = client.search_model_versions("name = 'tiny-patterns'")
    assert [v.version for v in versions_after] == [v.version for v in versions_before]
    # validate and report re-ran (a gate is a param of theirs) and wrote new files: none reached the remote
    assert sorted(p.relative_to(remote) for p in remote.rglob("*")) == remote_before
    runs = client.search_runs(
        [client.get_experiment_by_name("edgepipe-tests").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].info.status == "FAILED"  # the run ended with the flow, with its error
    assert runs[0].data.tags["error"].startswith("release gates failed, nothing registered or pushed.")
    assert runs[0].data.tags["mlflow.note.content"].startswith("**Failed**:\n\n> release gates failed")
    assert runs[0].data.metrics["gates_passed"] == 0.0
    assert "gates.max_arena_bytes 1000" in runs[0].data.tags["gate_failures"]
    assert "gates.max_latency_ms 0.001" in runs[0].data.tags["gate_failures"]
    assert 0 < runs[0].data.metrics["latency_ms"] < 1000
    assert "registered_version" not in runs[0].data.tags
    report = yaml.safe_load((root / "metrics" / "validation.json").read_text())
    assert not report["gates"]["passed"]


def test_a_flow_run_with_a_missing_weights_file_stops_before_anything_changes(first_run, tmp_path):
    """A deployment runs the flow without the CLI's early checks: the flow makes the same one itself."""
    root = tmp_path / "no-weights"
    shutil.copytree(first_run["root"], root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["pretrained"] = "weights/missing.keras"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    lock_before = (root / "dvc.lock").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
    assert state.is_failed()
    assert "weights/missing.keras not found" in str(state.result(raise_on_failure=False))
    assert (root / "dvc.lock").read_text() == lock_before
    task_names = task_states(state.state_details.flow_run_id)
    assert "ingest" not in task_names  # stopped before the first step


def test_an_image_only_decoding_finds_bad_stops_the_flow_at_prepare_and_names_it(first_run, tmp_path):
    """`edgepipe run`'s quick check reads headers; a file whose header is fine but whose data is cut short
    is found by the flow's prepare step, which names it and changes no step's record."""
    root = tmp_path / "truncated"
    shutil.copytree(first_run["root"], root, symlinks=True)
    truncated = root / "data" / "raw" / "bars" / "bars_002.png"
    truncated.write_bytes(truncated.read_bytes()[:120])
    lock_before = (root / "dvc.lock").read_text()
    manifest_before = (root / "data" / "prepared" / "manifest.json").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        state = pipeline(params_path="params.yaml", project_dir=str(root), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "1 problem(s) in the data, nothing changed" in message
    assert f"{truncated}: not a readable image (image file is truncated" in message
    assert (root / "dvc.lock").read_text() == lock_before
    assert (root / "data" / "prepared" / "manifest.json").read_bytes() == manifest_before
    assert task_states(state.state_details.flow_run_id)["prepare"] == "Failed"


def test_a_run_from_a_weights_file_trains_in_two_phases_and_releases(first_run, tmp_path):
    """model.pretrained: the float model of the first run, as a user starts from an earlier run's model."""
    root = tmp_path / "transfer"
    shutil.copytree(first_run["root"], root, symlinks=True)
    shutil.copy2(ProjectPaths(root).float_model, root / "start.keras")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["pretrained"] = "start.keras"
    params["train"]["transfer"] = {"head_epochs": 3}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", first_run["uri"])  # the registry the copied git tags belong to
        result = pipeline(params_path="params.yaml", project_dir=str(root), push=False)
    trained = json.loads((root / "metrics" / "train.json").read_text())
    assert trained["pretrained"]["sha256"] == hashlib.sha256((root / "start.keras").read_bytes()).hexdigest()
    assert trained["pretrained"]["layers_loaded"] == 8 and trained["pretrained"]["layers_new"] == 1
    phases = [row.split(",")[-1] for row in ProjectPaths(root).train_history.read_text().splitlines()[1:]]
    assert phases[:3] == ["1", "1", "1"] and set(phases[3:]) == {"2"}
    assert result.report.passed and result.registration.new_version  # another model
    assert (
        MlflowClient(result.registration.tracking_uri)
        .get_run(result.registration.run_id)
        .data.params["model.pretrained"]
        == "start.keras"
    )
