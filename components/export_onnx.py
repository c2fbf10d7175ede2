"""export_onnx: tf2onnx from the pruned float model (static NHWC input of batch 1, opset from params), and
an int8 QDQ model from it with onnxruntime's static quantisation, set by the format registry's converter
options (U8S8: uint8 activations, int8 per-channel weights, the fast path on x86 onnxruntime and what
OpenCV's classic engine runs).

Labels, input shape and normalisation go into the ONNX `metadata_props`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from components.atomic import atomic_path, write_json
from components.config import ExportConfig, Params
from components.dataset import read_dataset_info
from components.export_tflite import representative_samples
from components.formats import ExportFormat, by_container
from components.model import load_model
from components.paths import ProjectPaths

log = logging.getLogger(__name__)

INPUT_NAME = "image"
_GENERATED_SUFFIX = re.compile(r"__\d+(?=(:\d+)?$)")  # "conv/BiasAdd__7", "conv/BiasAdd__7:0"


def to_onnx(model: tf.keras.Model, input_shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    signature = (tf.TensorSpec((1, *input_shape), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return with_stable_names(proto)


def with_stable_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Renumber the `name__N` suffixes tf2onnx takes from a process-wide counter, in graph order, so the
    same model converts to the same bytes (and DVC md5) however many conversions the process made before."""
    graph = proto.graph
    names: dict[str, str] = {}

    def stable(name: str) -> str:
        if name not in names:
            names[name] = _GENERATED_SUFFIX.sub(f"__{len(names) + 1}", name)
        return names[name]

    for value in (*graph.input, *graph.initializer):
        value.name = stable(value.name)
    for node in graph.node:
        node.name = stable(node.name)
        node.input[:] = [stable(n) for n in node.input]
        node.output[:] = [stable(n) for n in node.output]
    for value in (*graph.output, *graph.value_info):
        value.name = stable(value.name)
    return proto


# Registry keys that describe the conversion (shown by `edgepipe formats`) rather than set a keyword.
_DESCRIPTIVE_KEYS = ("converter", "calibration", "outputs")
_ENUMS = {"quant_format": QuantFormat, "activation_type": QuantType, "weight_type": QuantType}


def quantize_int8(float_model: onnx.ModelProto, calibration: np.ndarray, options: dict) -> onnx.ModelProto:
    """Static int8 quantisation calibrated on `calibration` images (MinMax), with the format's converter
    options (components.formats) as quantize_static's keywords."""
    keywords = {
        key: _ENUMS[key][value] if key in _ENUMS else value
        for key, value in options.items()
        if key not in _DESCRIPTIVE_KEYS
    }
    with tempfile.TemporaryDirectory(prefix="edgepipe-onnx-int8-") as tmp:
        float_path, prepared_path, int8_path = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save(float_model, float_path)
        quant_pre_process(float_path, prepared_path)  # shape inference + graph cleanup, as ORT advises
        quantize_static(prepared_path, int8_path, _Calibration(calibration), **keywords)
        return onnx.load(int8_path)


class _Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self._batches = iter({INPUT_NAME: image[None]} for image in images)

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def export_onnx(
    config: ExportConfig,
    prepared_dir: Path,
    model,
    export_dir: Path,
    formats: tuple[ExportFormat, ...] | None = None,
    metadata: dict | None = None,
) -> dict[str, int]:
    """Write every ONNX format of the registry (`formats`: a task's rows) from the Keras `model`, with
    `metadata` beside the input's; returns {format name: file bytes}."""
    info = read_dataset_info(prepared_dir)
    float_proto = to_onnx(model, info.input_shape, config.onnx_opset)
    protos: dict[str, onnx.ModelProto] = {}
    sizes = {}
    for fmt in formats or by_container("onnx"):
        if fmt.derived_from is None:
            proto = onnx.ModelProto.FromString(float_proto.SerializeToString())
        else:
            calibration = representative_samples(prepared_dir, config.representative_samples)
            proto = quantize_int8(protos[fmt.derived_from], calibration, fmt.converter)
        protos[fmt.name] = proto
        del proto.metadata_props[:]
        for key, value in {**info.metadata(), **(metadata or {}), "format": fmt.name}.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.checker.check_model(proto)
        with atomic_path(fmt.path(export_dir)) as tmp:
            onnx.save(proto, tmp)
        sizes[fmt.name] = fmt.path(export_dir).stat().st_size
        log.info("wrote %s (%d bytes)", fmt.path(export_dir), sizes[fmt.name])
    return sizes


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `export_onnx` stage: every .onnx format of the registry; bytes to metrics."""
    sizes = export_onnx(params.export, paths.prepared_dir, load_model(paths.pruned_model), paths.export_dir)
    write_json(paths.metrics_file("export_onnx"), {"bytes": sizes})
    return sizes
