"""The command line and the committed dvc.yaml: user errors print a message naming the key (exit 2, no
traceback); dvc.yaml is exactly what the stage table generates, so artifact paths live in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from components.formats import FORMATS
from components.paths import ProjectPaths
from components.registry import Registration
from components.results import RunResult, ValidationReport
from components.stages import STAGES, dvc_yaml
from conftest import PROJECT_ROOT, write_params
from flows.cli import print_results, render_dvc_yaml

CLI = [sys.executable, "-m", "flows.cli"]


def edgepipe(*args: str, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_committed_dvc_yaml_is_generated_from_the_stage_table():
    text = render_dvc_yaml(dvc_yaml(ProjectPaths(PROJECT_ROOT)))
    assert (PROJECT_ROOT / "dvc.yaml").read_text() == text


def test_dvc_yaml_lists_every_stage_export_and_params_section():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in STAGES]
    outs = {o for s in stages.values() for o in s.get("outs", [])}
    assert {f"models/export/{f.filename}" for f in FORMATS} <= outs
    for stage in STAGES:
        entry = stages[stage.name]
        assert entry["cmd"] == f"edgepipe stage {stage.name}"
        assert set(entry.get("params", [])) == set(stage.params)
        metrics = ProjectPaths(PROJECT_ROOT).rel(stage.metrics(ProjectPaths(PROJECT_ROOT)))
        assert entry["metrics"] == [{metrics: {"cache": False}}]
    assert "${data.raw_dir}" in stages["prepare"]["deps"]
    assert "models/mcu" in outs and "reports" in outs
    confusion = stages["validate"]["plots"][0]["metrics/release_predictions.csv"]
    assert confusion["template"] == "confusion" and (confusion["x"], confusion["y"]) == (
        "actual",
        "predicted",
    )


def test_dvc_yaml_check_command_passes_on_the_project():
    result = edgepipe("dvc-yaml", "--check")
    assert result.returncode == 0, result.stderr
    assert "dvc.yaml is up to date" in result.stdout


def test_run_with_a_bad_params_file_names_the_key_without_traceback(tmp_path):
    write_params(tmp_path / "params.yaml", {"prune.target_sparsity": 1.5, "train.epoch": 3})
    result = edgepipe("run", "--project-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "prune.target_sparsity: Input should be less than 1" in result.stderr
    assert "train.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_unknown_stage_is_a_clear_error(tmp_path):
    write_params(tmp_path / "params.yaml")
    result = edgepipe("stage", "compile", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown stage 'compile'; see dvc.yaml for the stage names" in result.stderr


def results(version: str | None, new_version: bool, pushed: int | None) -> RunResult:
    cell = {"format": "tflite_int8", "runtime": "litert", "layout": "NHWC", "required": True}
    cell |= {"file": "model_int8.tflite", "loaded": True, "accuracy": 0.9667, "agreement": 0.9407}
    cell |= {"max_abs_diff": 0.2, "status": "pass", "precision": "int8"}
    failed = {"format": "tflite_int8", "runtime": "opencv_dnn:classic", "layout": "NCHW", "required": False}
    failed |= {"file": "model_int8.tflite", "loaded": False, "error": "cv2.error: Lookup table for RELU"}
    failed |= {"status": "known failure", "precision": "int8"}
    artifact = {"file": "model_int8.tflite", "precision": "int8", "source": "qat", "bytes": 31992}
    artifact |= {"gzip_bytes": 19359, "bytes_per_parameter": 1.2, "container": "tflite", "sha256": "0" * 64}
    report = {"float_accuracy": 0.9704, "test_images": 270, "parameters": 26000}
    report |= {"cells": [cell, failed], "artifacts": {"tflite_int8": artifact}}
    report["gates"] = {"passed": True, "failures": []}
    registration = Registration(
        "run-id", "1", "digits" if version else None, version, new_version, "sqlite://"
    )
    return RunResult(
        report=ValidationReport.model_validate(report),
        registration=registration,
        pushed=pushed,
        report_file="reports/report.md",
        data={
            "counts": {"train": 420, "val": 90, "test": 90},
            "classes": 5,
            "skipped": 1,
            "image_height": 64,
            "image_width": 64,
            "image_channels": 3,
            "image_chosen": {"channels": "auto: colour images found"},
        },
    )


@pytest.mark.parametrize(
    ("version", "new_version", "pushed", "expected"),
    [
        ("3", True, 12, ["Registered MLflow model digits version 3", "DVC: pushed 12 file(s)"]),
        ("3", False, 0, ["digits version 3 already holds these bytes", "remote already holds every output"]),
        (
            None,
            False,
            None,
            ["Not registered in MLflow (mlflow.register_model is false", "not pushed (--no-push)"],
        ),
    ],
)
def test_results_summary_says_what_happened_in_mlflow_and_dvc(capsys, version, new_version, pushed, expected):
    print_results(results(version, new_version, pushed))
    out = " ".join(capsys.readouterr().out.split())
    assert "model_int8.tflite" in out and "0.9667" in out and "0.9407" in out and "19359" in out
    assert "known failure" in out and "Lookup table" in out  # the runtime's own words, folded in a cell
    assert (
        "Data: 600 images in 5 classes (train 420, val 90, test 90), 1 skipped; model input 64x64x3 "
        "(channels auto: colour images found)" in out
    )
    for line in expected:
        assert line in out


def test_readme_shows_the_device_profiles_as_edgepipe_targets_prints_them():
    """The README's device table is `edgepipe targets --markdown`, and `edgepipe targets` lists every
    profile with its budgets and the source of its figures."""
    from components.targets import PROFILES, targets_markdown

    assert targets_markdown() in (PROJECT_ROOT / "README.md").read_text()
    out = subprocess.run(
        [*CLI, "targets"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    for profile in PROFILES:
        assert profile.name in out and profile.source.split(":")[0] in out


def test_readme_shows_the_format_registry_as_it_is():
    """The README's format table is `edgepipe formats --markdown`: the docs come from the registry."""
    from components.formats import registry_markdown

    assert registry_markdown() in (PROJECT_ROOT / "README.md").read_text()
