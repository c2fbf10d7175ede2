"""export_onnx: tf2onnx from the pruned float model, static NHWC input of batch 1, opset from params.

Labels, input shape and normalisation go into the ONNX `metadata_props`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import onnx
import tensorflow as tf
import tf2onnx

from components.atomic import atomic_path
from components.config import ExportConfig
from components.dataset import read_dataset_info
from components.formats import by_container
from components.model import load_model

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


def export_onnx(
    config: ExportConfig, prepared_dir: Path, pruned_model: Path, export_dir: Path
) -> dict[str, int]:
    info = read_dataset_info(prepared_dir)
    model = load_model(pruned_model)
    sizes = {}
    for fmt in by_container("onnx"):
        proto = to_onnx(model, info.input_shape, config.onnx_opset)
        for key, value in {**info.metadata(), "format": fmt.name}.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.checker.check_model(proto)
        with atomic_path(fmt.path(export_dir)) as tmp:
            onnx.save(proto, tmp)
        sizes[fmt.name] = fmt.path(export_dir).stat().st_size
        log.info("wrote %s (%d bytes)", fmt.path(export_dir), sizes[fmt.name])
    return sizes
