"""MobileNetV2 (weights=None, alpha and input size from params) through every step: a real edge
architecture (depthwise convs, ReLU6, residual adds, batch norm) goes through prune -> QAT -> every export
-> the validation matrix -> the microcontroller package, at 32x32 RGB with alpha 0.35."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from components.config import Params
from components.dataset import load_split
from components.formats import FORMATS, get_format
from components.model import BATCH_NORM_MOMENTUM, load_model
from components.paths import ProjectPaths
from components.runtimes import open_runner
from components.stages import STAGES
from conftest import TINY_PARAMS, write_image_folder

pytestmark = pytest.mark.slow

MOBILENET = copy.deepcopy(TINY_PARAMS)
MOBILENET["data"]["image"] = {"height": 32, "width": 32, "channels": 3}
MOBILENET["model"] = {"name": "tiny-mobilenet", "architecture": "mobilenet_v2", "width_multiplier": 0.35}
# What this checks is conversion and runtime agreement, which a briefly trained network shows as well as a
# converged one; that the recipe learns is judged on the small CNN (test_recipe.py, test_transfer.py).
# (min_val_accuracy 0: no "did not learn" stop after 2 epochs).
MOBILENET["train"].update(epochs=2, patience=2, batch_size=8, learning_rate=0.003, min_val_accuracy=0.0)
# Two pruning epochs (10 steps, not the 100 a release gets to recover accuracy) reach the target sparsity:
# the schedule ramps over the steps there are. One QAT epoch gives the int8 files their quantization ranges.
MOBILENET["prune"].update(epochs=2, batch_size=8, learning_rate=0.001, min_steps=10)
MOBILENET["qat"].update(epochs=1, batch_size=8)
# Pruning half of a MobileNetV2 trained on 39 images costs accuracy that 2 short epochs do not win back;
# this test is about every file running and agreeing with the model it came from, so the accuracy gates
# are opened (they have their own tests).
MOBILENET["gates"] = {"max_accuracy_drop": 1.0, "min_agreement": 0.0, "min_runtime_agreement": 0.0}


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("mobilenet")
    write_image_folder(root / "data" / "raw", per_class=24)
    params = Params.model_validate(MOBILENET)
    paths = ProjectPaths(root)
    results = {stage.name: stage.run(params, paths) for stage in STAGES}
    return paths, results


def test_it_is_a_real_mobilenet_v2(mobilenet):
    paths, results = mobilenet
    model = load_model(paths.float_model)
    assert model.input_shape == (None, 32, 32, 3)
    layer_types = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Add", "BatchNormalization", "ReLU"} <= layer_types
    # ImageNet's batch-norm momentum would leave the inference statistics at their initial values on a
    # small folder (components.model): every batch-norm layer of the saved model uses edgepipe's.
    norms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(norms) > 30 and {layer.momentum for layer in norms} == {BATCH_NORM_MOMENTUM}
    # Per-tensor rounding of the small depthwise kernels (3x3xC) leaves the total a little under 50 %.
    assert results["qat"]["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_every_required_cell_runs(mobilenet):
    _, results = mobilenet
    report = results["validate"]
    assert [(c.format, c.runtime) for c in report.cells] == [
        (f.name, t.name) for f in FORMATS for t in f.runtimes
    ]
    failed = [c for c in report.cells if c.required and not c.loaded]
    assert not failed, failed


def test_float_files_match_keras_or_fail_the_logit_gate(mobilenet):
    """LiteRT, onnxruntime and OpenCV's new engine compute the float MobileNetV2 exactly. OpenCV's classic
    engine did not when this was written (logits off by ~20 % of their range): whatever it does, a float
    cell that computes a different function must fail its gate, never pass silently."""
    paths, results = mobilenet
    report = results["validate"]
    for cell in report.cells:
        if not (cell.required and cell.precision == "float32"):
            continue
        if cell.runtime == "opencv_dnn:classic" and cell.logit_error > 0.001:
            assert cell.status == "fail"
            assert any(
                f"{cell.format} on opencv_dnn:classic: max logit difference" in failure
                for failure in report.gates.failures
            )
        else:
            assert cell.logit_error <= 0.001 and cell.status == "pass", cell


def test_int8_files_run_in_litert_and_tflite_micro_alike(mobilenet):
    """LiteRT (XNNPack) and TFLite-Micro (reference kernels) on the same int8 files. The PTQ file: within one
    output quantisation step of each other, the same top-1 on every image. The QAT file (pruned, then
    quantization-aware trained for one epoch) differs more between the two: up to 30-38 steps (15-20 % of
    the output range) when this was written, on both splits; bounded here at a quarter of the range, and
    left to investigate (the same ops; the QAT file's pruned channels are the visible difference)."""
    paths, results = mobilenet
    cells = {(c.format, c.runtime): c for c in results["validate"].cells}
    x = np.concatenate([load_split(paths.prepared_dir, split)[0] for split in ("train", "test")])
    for name, max_steps in (("tflite_int8_ptq", 1.0), ("tflite_int8", None)):
        fmt = get_format(name)
        assert all(cells[(name, runtime)].loaded for runtime in ("litert", "tflm"))
        path = fmt.path(paths.export_dir)
        scale = Interpreter(model_path=str(path)).get_output_details()[0]["quantization"][0]
        litert, tflm = (open_runner(t, path)(x) for t in fmt.runtimes[:2])
        steps = np.abs(litert - tflm) / scale
        if max_steps is not None:
            assert steps.max() <= max_steps + 1e-6, (name, steps.max())
            assert np.array_equal(litert.argmax(1), tflm.argmax(1))
        else:
            assert steps.max() <= 0.25 * np.ptp(litert) / scale, (name, steps.max())


def test_mobilenet_gets_a_microcontroller_package(mobilenet):
    paths, results = mobilenet
    mcu = results["mcu"]
    assert (
        mcu["arena_bytes"] > 0
        and mcu["flash_bytes"] == get_format("tflite_int8").path(paths.export_dir).stat().st_size
    )
    assert "DEPTHWISE_CONV_2D" in mcu["ops"] and "ADD" in mcu["ops"]
    assert (paths.mcu_dir / "model_data.cc").is_file()
