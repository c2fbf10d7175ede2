"""bench/benchmark.py on a tiny real project: a real Keras model exported to float32 .tflite and .onnx,
measured in every runtime its registry row names, with a real MLflow sqlite store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from components.atomic import write_json
from components.dataset import load_split
from components.formats import get_format
from conftest import pattern_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # spawned workers inherit sys.path
import benchmark  # noqa: E402

CLASSES = ["bars", "stripes", "diagonal"]
FORMATS = ("tflite_float32", "onnx_float32")


def write_params_and_split(root: Path) -> None:
    """params.yaml and a prepared test split of 30 16x16 grayscale pattern images (3 classes)."""
    params = {"benchmark": {"threads": 1, "warmup": 2, "rounds": 2, "runs_per_round": 3}}
    params["mlflow"] = {"experiment": "bench-test"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = np.stack([pattern_image(int(label), rng, (16, 16)) for label in y])[..., None]
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    np.savez_compressed(prepared / "test.npz", x=x, y=y)
    image = {"height": 16, "width": 16, "channels": 1, "mean": 0.0, "std": 1.0}
    write_json(prepared / "manifest.json", {"classes": CLASSES, "image": image})


def export_tiny_model(root: Path) -> float:
    """A tiny CNN fitted to the test images (so accuracy means something), exported to float32 .tflite and
    .onnx; returns the Keras model's test accuracy."""
    import onnx
    import tensorflow as tf

    from components.export_onnx import to_onnx
    from components.export_tflite import convert

    x, y = load_split(root / "data" / "prepared", "test")
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((16, 16, 1)),
            tf.keras.layers.Conv2D(4, 3, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(3),
        ]
    )
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(tf.keras.optimizers.Adam(0.05), loss)
    model.fit(x, y, epochs=40, batch_size=10, verbose=0)
    export = root / "models" / "export"
    export.mkdir(parents=True)
    get_format("tflite_float32").path(export).write_bytes(convert(model, "float32"))
    onnx.save(to_onnx(model, (16, 16, 1), 13), str(get_format("onnx_float32").path(export)))
    logits = model.predict(x, verbose=0)
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 0.1  # no near-ties: float runtimes must agree exactly
    return float(np.mean(logits.argmax(1) == y))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-project")
    write_params_and_split(root)
    keras_accuracy = export_tiny_model(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # MLflow puts a new experiment's artifacts under ./mlruns
        args = ["--project-dir", str(root), "--formats", ",".join(FORMATS)]
        result = CliRunner().invoke(benchmark.app, args)
    assert result.exit_code == 0, result.output
    print(result.output)
    report = json.loads((root / "bench" / "results" / "benchmark.json").read_text())
    return root, uri, result.output, report, keras_accuracy


def test_benchmark_measures_every_runtime_target_of_each_format(measured):
    _, _, output, report, _ = measured
    expected = [(name, target.name) for name in FORMATS for target in get_format(name).runtimes]
    assert [(row["format"], row["runtime"]) for row in report["rows"]] == expected
    for row in report["rows"]:
        assert row["loaded"], row["error"]
        assert row["timed_runs"] == 2 * 3
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["peak_rss_bytes"] > row["baseline_rss_bytes"] > 0
        assert 0 < row["gzip_bytes"] < row["file_bytes"]
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["format"] in output
    assert report["benchmark"] == {"threads": 1, "warmup": 2, "rounds": 2, "runs_per_round": 3}


def test_ratios_are_relative_to_litert_float32(measured):
    _, _, _, report, _ = measured
    rows = {(row["format"], row["runtime"]): row for row in report["rows"]}
    reference = rows[("tflite_float32", "litert")]
    assert reference["latency_ratio"] == 1.0 and reference["size_ratio"] == 1.0
    onnx = rows[("onnx_float32", "onnxruntime")]
    assert onnx["latency_ratio"] == pytest.approx(onnx["median_ms"] / reference["median_ms"])
    assert onnx["size_ratio"] == pytest.approx(onnx["file_bytes"] / reference["file_bytes"])


def test_float_exports_score_like_the_keras_model_in_every_runtime(measured):
    _, _, _, report, keras_accuracy = measured
    assert keras_accuracy >= 0.9
    for row in report["rows"]:
        assert row["accuracy"] == pytest.approx(keras_accuracy), (row["format"], row["runtime"])


def test_reports_and_plots_are_written(measured):
    root, _, _, _, _ = measured
    out = root / "bench" / "results"
    for name in ("accuracy_vs_size.png", "latency_by_runtime.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "benchmark.md").read_text()
    assert "| format | runtime | loaded | median ms |" in table
    assert "| tflite_float32 | litert | yes |" in table


def test_mlflow_run_holds_latency_metrics_and_reports(measured):
    from mlflow.tracking import MlflowClient

    _, uri, _, _, _ = measured
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench-test")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`edgepipe.kind` = 'benchmark'")
    assert run.info.run_name == "benchmark"
    for key in ("tflite_float32.litert", "onnx_float32.onnxruntime", "onnx_float32.opencv_dnn_classic"):
        assert run.data.metrics[f"latency_ms.{key}"] > 0
    assert run.data.params["threads"] == "1" and run.data.params["version.onnxruntime"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "benchmark")}
    assert {f"benchmark/{name}" for name in ("benchmark.json", "benchmark.md")} <= artifacts


def test_a_missing_export_stops_with_exit_code_2_naming_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"benchmark": {"rounds": 1}}))
    args = ["--project-dir", str(tmp_path), "--formats", "tflite_int8", "--no-mlflow"]
    result = CliRunner().invoke(benchmark.app, args)
    assert result.exit_code == 2
    assert "model_int8.tflite" in result.output and "edgepipe run" in result.output


def test_a_model_that_fails_to_load_is_a_row_with_the_error_not_a_crash(tmp_path):
    write_params_and_split(tmp_path)
    path = get_format("tflite_float16").path(tmp_path / "models" / "export")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a flatbuffer " * 64)
    args = ["--project-dir", str(tmp_path), "--formats", "tflite_float16", "--no-mlflow"]
    result = CliRunner().invoke(benchmark.app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench" / "results" / "benchmark.json").read_text())["rows"]
    assert [row["runtime"] for row in rows] == [t.name for t in get_format("tflite_float16").runtimes]
    for row in rows:
        assert not row["loaded"] and row["error"] and row["median_ms"] is None
        assert row["latency_ratio"] is None and row["size_ratio"] is None  # no LiteRT float32 cell this run
    assert "not measured: tflite_float16 on litert (required): ValueError" in result.output
