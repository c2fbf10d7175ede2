"""export_onnx: tf2onnx from the pruned float model, static NHWC input of batch 1, opset from params.

Labels, input shape and normalisation go into the ONNX `metadata_props`.
"""

from __future__ import annotations

import json
import logging
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


def to_onnx(model: tf.keras.Model, input_shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    signature = (tf.TensorSpec((1, *input_shape), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
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
