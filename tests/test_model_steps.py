"""train -> prune -> qat -> export -> validate on tiny data, through the same stage table the flow and
`dvc repro` use (tests/conftest.py `trained` runs it once per session). Every exported file is reloaded
and run in each runtime its format names."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from components.atomic import read_json
from components.config import GatesConfig, Params
from components.dataset import load_split, read_dataset_info
from components.export_onnx import to_onnx
from components.formats import FORMATS, RELEASE_FORMAT, get_format
from components.gates import gate_failures, grouped_failures
from components.model import load_model, save_model, sparsity
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.results import Artifact, Cell, ValidationReport
from components.runtimes import open_runner
from components.tflite_metadata import read_tflite_metadata
from conftest import TINY_PARAMS, assert_histories_have_the_plotted_column

pytestmark = pytest.mark.slow

# Stated tolerances, logits compared with the Keras model each artifact was converted from.
FLOAT32_MAX_ABS_DIFF = 1e-4  # same graph, float32 kernels: only operation-order differences
FLOAT16_MAX_REL_DIFF = 0.02  # float16 weights: ~3 significant digits, relative to the logit range
INT8_MAX_REL_DIFF = 0.15  # int8 weights and activations, relative to the logit range
INT8_MIN_AGREEMENT = 0.9  # top-1 agreement of the int8 file with its QAT model


@pytest.fixture(scope="module")
def project(trained, tmp_path_factory) -> tuple[Params, ProjectPaths, dict]:
    """A copy of the session's trained project (every step run once, in-process, through the stage table)."""
    root = trained.copy(trained.unreleased, tmp_path_factory.mktemp("steps"))
    return trained.params, ProjectPaths(root), trained.results


@pytest.fixture(scope="module")
def test_split(project):
    _, paths, _ = project
    return load_split(paths.prepared_dir, "test")


def source_logits(paths: ProjectPaths, source: str, x: np.ndarray) -> np.ndarray:
    if source == "qat":
        return load_qat_model(paths.pruned_model, paths.qat_weights).predict(x, verbose=0)
    return load_model(paths.float_model if source == "float" else paths.pruned_model).predict(x, verbose=0)


REQUIRED = [(f.name, t) for f in FORMATS for t in f.runtimes if t.required]
KNOWN_FAILURES = [(f.name, t) for f in FORMATS for t in f.runtimes if not t.required]


def test_float_model_learns_the_tiny_task(project, test_split):
    _, paths, results = project
    x, y = test_split
    accuracy = np.mean(load_model(paths.float_model).predict(x, verbose=0).argmax(1) == y)
    assert accuracy >= 0.8
    assert results["train"]["parameters"] > 0


def test_train_keeps_the_best_epoch(project):
    """The saved float model is the epoch with the lowest val loss, whose val accuracy train.json reports."""
    _, paths, results = project
    x_val, y_val = load_split(paths.prepared_dir, "val")
    accuracy = np.mean(load_model(paths.float_model).predict(x_val, verbose=0).argmax(1) == y_val)
    assert accuracy == pytest.approx(results["train"]["val_accuracy"], abs=1e-6)
    train = results["train"]
    assert 1 <= train["best_epoch"] <= train["epochs_run"] <= TINY_PARAMS["train"]["epochs"]


def test_saving_the_same_model_twice_gives_the_same_bytes(project, tmp_path):
    _, paths, _ = project
    model = load_model(paths.float_model)
    save_model(model, tmp_path / "a.keras")
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    reloaded = load_model(tmp_path / "a.keras")
    x, _ = load_split(paths.prepared_dir, "test")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_prune_reaches_target_sparsity(project):
    params, paths, results = project
    assert results["prune"]["sparsity"] == pytest.approx(params.prune.target_sparsity, abs=0.02)
    assert sparsity(load_model(paths.pruned_model)) == pytest.approx(results["prune"]["sparsity"])


def test_prune_keeps_sparsity_after_qat(project):
    _, paths, results = project
    qat_model = load_qat_model(paths.pruned_model, paths.qat_weights)
    assert results["qat"]["sparsity_before"] == pytest.approx(results["prune"]["sparsity"])
    assert sparsity(qat_model) >= results["prune"]["sparsity"] - 0.005
    assert results["qat"]["sparsity"] == pytest.approx(sparsity(qat_model))


def test_the_qat_model_is_kept_for_the_same_files_and_rebuilt_when_a_file_changes(project, tmp_path):
    """export_tflite and validate share one QAT model per process (components.qat): kept by the files'
    content, so weights written again are read again."""
    from components.qat import quantization_aware

    _, paths, _ = project
    kept = load_qat_model(paths.pruned_model, paths.qat_weights)
    assert load_qat_model(paths.pruned_model, paths.qat_weights) is kept
    other = quantization_aware(load_model(paths.pruned_model))
    other.load_weights(paths.qat_weights)
    index, layer = next((i, layer) for i, layer in enumerate(other.layers) if layer.get_weights())
    layer.set_weights([w + 1.0 for w in layer.get_weights()])
    other.save_weights(tmp_path / "qat.weights.h5")
    rebuilt = load_qat_model(paths.pruned_model, tmp_path / "qat.weights.h5")
    assert rebuilt is not kept
    np.testing.assert_array_equal(rebuilt.layers[index].get_weights()[0], layer.get_weights()[0])


def test_int8_file_keeps_the_zeros(project):
    """The pruned zeros survive quantisation: the int8 conv/dense weight tensors are about half zeros."""
    from ai_edge_litert.interpreter import Interpreter

    params, paths, _ = project
    interpreter = Interpreter(model_path=str(get_format(RELEASE_FORMAT).path(paths.export_dir)))
    interpreter.allocate_tensors()
    weights = [
        interpreter.get_tensor(d["index"])
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8
        and len(d["shape"]) in (2, 4)
        and d["quantization_parameters"]["scales"].size > 1
    ]
    zeros = sum(int(np.count_nonzero(w == 0)) for w in weights) / sum(w.size for w in weights)
    assert weights and zeros >= params.prune.target_sparsity - 0.02


@pytest.mark.parametrize(("format_name", "target"), REQUIRED, ids=lambda v: getattr(v, "name", v))
def test_every_export_reloads_and_agrees_with_keras(project, test_split, format_name, target):
    """Every registry row, in every runtime that must run it: reload, run, agree with its Keras model."""
    _, paths, _ = project
    fmt = get_format(format_name)
    x, _ = test_split
    expected = source_logits(paths, fmt.source, x)
    logits = open_runner(target, fmt.path(paths.export_dir))(x)
    assert logits.shape == expected.shape
    diff = float(np.abs(logits - expected).max())
    scale = float(expected.max() - expected.min())
    if fmt.precision == "float32":
        assert diff <= FLOAT32_MAX_ABS_DIFF
    elif fmt.precision == "float16":
        assert diff <= FLOAT16_MAX_REL_DIFF * scale
    else:
        assert diff <= INT8_MAX_REL_DIFF * scale
        assert np.mean(logits.argmax(1) == expected.argmax(1)) >= INT8_MIN_AGREEMENT


def test_known_runtime_failures_are_reported_with_the_runtimes_own_words(project):
    """OpenCV cannot import int8 TFLite; its new engine cannot run int8 ONNX. Tried, reported, not gated."""
    _, paths, results = project
    cells = {(c.format, c.runtime): c for c in results["validate"].cells}
    for format_name, target in KNOWN_FAILURES:
        cell = cells[(format_name, target.name)]
        assert cell.note == target.note
        # A small CNN's float .tflite runs in OpenCV's new engine (MobileNetV2's does not): reported as such.
        assert cell.status == ("pass" if format_name.startswith("tflite_float") else "known failure")
        if not cell.loaded:
            assert "OpenCV(5.0.0)" in cell.error
    tflite_int8 = cells[("tflite_int8", "opencv_dnn:classic")]
    assert not tflite_int8.loaded and "Lookup table for RELU" in tflite_int8.error


def test_int8_onnx_is_quantised_qdq_with_uint8_activations(project):
    _, paths, results = project
    model = onnx.load(str(get_format("onnx_int8").path(paths.export_dir)))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = {init.data_type for init in model.graph.initializer if init.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT8 in zero_points and onnx.TensorProto.INT8 in zero_points
    sizes = results["validate"].artifacts
    assert sizes["onnx_int8"].bytes < sizes["onnx_float32"].bytes


def test_pruned_int8_compresses_smaller_than_unpruned_int8(project):
    """Pruning pays on disk once compressed: the zeros of the pruned QAT int8 file gzip away, the PTQ
    file of the unpruned model has none to lose."""
    _, _, results = project
    artifacts = results["validate"].artifacts
    assert artifacts["tflite_int8"].gzip_bytes < artifacts["tflite_int8_ptq"].gzip_bytes
    for artifact in artifacts.values():
        assert 0 < artifact.gzip_bytes < artifact.bytes
        assert artifact.bytes_per_parameter == pytest.approx(
            artifact.bytes / results["validate"].parameters, abs=1e-4
        )


def test_onnx_export_gives_the_same_bytes_every_time(project):
    """tf2onnx numbers generated names from a process-wide counter; the export renumbers them."""
    params, paths, _ = project
    model = load_model(paths.pruned_model)
    first, second = (to_onnx(model, (16, 16, 1), params.export.onnx_opset) for _ in range(2))
    assert first.SerializeToString() == second.SerializeToString()


def test_every_artifact_carries_labels_shape_and_normalisation(project):
    _, paths, _ = project
    info = read_dataset_info(paths.prepared_dir)
    for fmt in FORMATS:
        path = fmt.path(paths.export_dir)
        if fmt.container == "tflite":
            meta = read_tflite_metadata(path)
        else:
            meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
        assert meta["labels"] == info.classes == ["bars", "diagonal", "stripes"]
        assert meta["input_shape"] == [1, 16, 16, 1]
        assert meta["normalization"]["std"] == 1.0
        assert meta["format"] == fmt.name


def test_int8_tflite_has_int8_input_and_output(project):
    from ai_edge_litert.interpreter import Interpreter

    _, paths, _ = project
    interpreter = Interpreter(model_path=str(get_format("tflite_int8").path(paths.export_dir)))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 16, 16, 1]
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [-1, 16, 16, 1]  # any batch
    # converted from a concrete function, named as the Keras model it came from names its input and output
    qat_model = load_qat_model(paths.pruned_model, paths.qat_weights)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": qat_model.output_names}
    }
    assert qat_model.output_names == ["quant_logits"]  # tfmot's prefix on the logits layer


def test_validate_reports_every_cell_and_passes_the_gates(project):
    _, paths, results = project
    report = read_json(paths.validation_file)
    # validation.json is the typed report's JSON form, and reads back as the same report
    assert ValidationReport.load(paths.validation_file) == results["validate"]
    assert [(c["format"], c["runtime"]) for c in report["cells"]] == [
        (f.name, t.name) for f in FORMATS for t in f.runtimes
    ]
    required = [c for c in report["cells"] if c["required"]]
    assert all(c["loaded"] and c["status"] == "pass" and 0 <= c["accuracy"] <= 1 for c in required)
    assert report["gates"]["passed"], report["gates"]["failures"]
    assert report["test_images"] == len(load_split(paths.prepared_dir, "test")[1])
    # Every runtime after the first of its row answered like the first on the same file.
    assert all(c["runtime_agreement"] >= 0.98 for c in required if "reference_runtime" in c)
    assert {c["reference_runtime"] for c in required if "reference_runtime" in c} == {"litert", "onnxruntime"}
    arenas = [c["arena_bytes"] for c in required if c["runtime"] == "tflm"]
    assert len(arenas) == 2 and all(a > 0 for a in arenas)


def test_report_writes_markdown_and_plots(project):
    _, paths, results = project
    assert results["report"]["files"] == sorted(p.name for p in paths.reports_dir.iterdir())
    text = paths.report_file.read_text()
    assert "Validation matrix" in text and "known failure" in text and "![confusion_release.png]" in text
    for png in paths.reports_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = paths.release_predictions.read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + results["validate"].test_images
    history = paths.train_history.read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 1 + results["train"]["epochs_run"]
    assert_histories_have_the_plotted_column(paths, "val_accuracy")


def test_exports_leave_no_temporary_files(project):
    _, paths, _ = project
    assert sorted(p.name for p in paths.export_dir.iterdir()) == sorted(f.filename for f in FORMATS)


def artifact(format_name: str, size: int) -> Artifact:
    fmt = get_format(format_name)
    return Artifact(
        file=fmt.filename, container=fmt.container, precision=fmt.precision, source=fmt.source, bytes=size,
        gzip_bytes=size, bytes_per_parameter=1.0, sha256="0" * 64,
    )  # fmt: skip


def test_gates_fail_on_drop_disagreement_size_arena_and_load_errors():
    gates = GatesConfig(
        max_accuracy_drop={"default": 0.02, "onnx_int8": 0.1},
        min_agreement={"default": 0.95, "opencv_dnn:new": 0.5},
        max_bytes={"tflite_int8": 1000},
        max_arena_bytes=4096,
    )
    artifacts = {"tflite_int8": artifact("tflite_int8", 1500), "onnx_int8": artifact("onnx_int8", 99999)}

    def cell(fmt, runtime, required=True, loaded=True, **measured):
        precision = "int8" if "int8" in fmt else "float32"
        measured = ({"logit_error": 0.0001} if loaded else {}) | measured
        file = get_format(fmt).filename
        return Cell(
            format=fmt, runtime=runtime, layout="NHWC", required=required, file=file, precision=precision,
            loaded=loaded, **measured,
        )  # fmt: skip

    cells = [
        cell("tflite_int8", "litert", accuracy=0.95, agreement=0.99),
        cell("tflite_int8", "tflm", accuracy=0.95, agreement=0.99, arena_bytes=5000),
        cell("onnx_int8", "onnxruntime", accuracy=0.90, agreement=0.99),  # within its own 0.1 drop
        cell("onnx_float32", "onnxruntime", accuracy=0.90, agreement=0.99),
        cell("onnx_float32", "opencv_dnn:classic", accuracy=0.96, agreement=0.61),
        cell("onnx_float32", "opencv_dnn:new", accuracy=0.96, agreement=0.61),  # its own bar is 0.5
        cell("tflite_float32", "litert", accuracy=0.96, agreement=0.99, logit_error=0.2),
        cell(
            "onnx_int8",
            "opencv_dnn:classic",
            accuracy=0.95,
            agreement=0.99,
            runtime_agreement=0.9481,
            reference_runtime="onnxruntime",
        ),
        cell("tflite_float32", "opencv_dnn:classic", loaded=False, error="cv2.error: cannot load"),
        cell("onnx_int8", "opencv_dnn:new", required=False, accuracy=0.1, agreement=0.1),  # reported only
    ]
    failures = gate_failures(gates, float_accuracy=0.96, artifacts=artifacts, cells=cells)
    assert failures == [
        "tflite_int8: 1500 bytes > gates.max_bytes.tflite_int8 1000",
        "tflite_int8 on tflm: tensor arena 5000 bytes > gates.max_arena_bytes 4096",
        "onnx_float32 on onnxruntime: accuracy drop 0.0600 > gates.max_accuracy_drop 0.02",
        "onnx_float32 on opencv_dnn:classic: agreement 0.6100 < gates.min_agreement 0.95",
        "tflite_float32 on litert: max logit difference 0.2000 of the logit range > gates.max_logit_error."
        "float32 0.001 (it computes a different function from the model it was made from)",
        "onnx_int8 on opencv_dnn:classic: top-1 agreement 0.9481 with onnxruntime on the same file < "
        "gates.min_runtime_agreement 0.97",
        "tflite_float32 on opencv_dnn:classic: could not run (cv2.error: cannot load)",
    ]
    assert grouped_failures(failures).splitlines() == [
        "The model does not fit the device (2):",
        f"  {failures[0]}",
        f"  {failures[1]}",
        "Pruning or quantization lost accuracy (1):",
        f"  {failures[2]}",
        "A runtime or a conversion computes something other than the model it was made from (4):",
        *(f"  {failure}" for failure in failures[3:]),
    ]


def test_the_target_device_makes_its_cells_required_and_gates_its_latency():
    """A profile's `deploys` cells gate the release even where the registry only reports them, a cell it
    deploys that the matrix lacks is a failure, and the latency gate names the file, runtime and budget."""
    from components.gates import latency_failure, verdict
    from components.targets import get_profile

    def cell(fmt, runtime, required):
        return Cell(
            format=fmt, runtime=runtime, layout="NHWC", required=required, file=get_format(fmt).filename,
            precision="int8", loaded=True, logit_error=0.0001, accuracy=0.5, agreement=0.5,
        )  # fmt: skip

    reported_only = [cell("onnx_int8", "opencv_dnn:new", required=False)]
    assert verdict(GatesConfig(), 0.5, {}, reported_only).passed  # no target: reported only
    deployed = (("onnx_int8", "opencv_dnn:new"), ("onnx_float32", "opencv_dnn:classic"))
    gated = verdict(GatesConfig(), 0.5, {}, [cell("onnx_int8", "opencv_dnn:new", False)], deployed=deployed)
    assert gated.failures == [
        "onnx_int8 on opencv_dnn:new: agreement 0.5000 < gates.min_agreement 0.9",
        "onnx_float32 on opencv_dnn:classic: not in the validation matrix, and the target device deploys it "
        "(components/targets.py)",
    ]
    pi = get_profile("raspberry_pi_4")
    assert pi.latency_cell == ("tflite_int8", "litert") and pi.precision == "int8"
    assert get_profile("openmv_h7").latency_cell == ("tflite_int8", "litert")  # TFLite-Micro: timed in LiteRT
    assert get_profile("desktop_opencv").precision == "float32"
    budget = GatesConfig(max_latency_ms=5)
    assert latency_failure(budget, pi.latency_cell, 4.9) is None
    assert latency_failure(GatesConfig(), pi.latency_cell, 500.0) is None  # no budget
    slow = latency_failure(budget, pi.latency_cell, 6.25)
    assert slow == "tflite_int8 on litert: median latency 6.250 ms > gates.max_latency_ms 5"
    assert (
        grouped_failures([slow]).splitlines()[0]
        == "The model is too slow for the device (build-machine proxy) (1):"
    )


def test_a_model_loaded_then_saved_in_a_worker_thread_is_still_a_keras_zip(tmp_path):
    """tf-keras' load_model leaves a thread-local flag that made a later .keras save in the same worker
    thread write HDF5 (a served Prefect run's prune step failed with BadZipFile)."""
    import threading
    import zipfile

    from components.config import ModelConfig
    from components.model import build_model

    save_model(build_model(ModelConfig(), (16, 16, 1), 3), tmp_path / "a.keras")
    worker = threading.Thread(
        target=lambda: save_model(load_model(tmp_path / "a.keras"), tmp_path / "b.keras")
    )
    worker.start()
    worker.join()
    assert zipfile.is_zipfile(tmp_path / "b.keras")
    assert load_model(tmp_path / "b.keras").count_params() == load_model(tmp_path / "a.keras").count_params()
