"""export_tflite: every TFLite row of the format registry: float32 and float16 from the pruned model,
full-int8 PTQ from the unpruned float model (the baseline), full-int8 from the pruning-preserving QAT model.

Labels, input shape and normalisation are embedded in each file as TFLite metadata named "edgepipe"
(read them back with `components.tflite_metadata.read_tflite_metadata`).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from components.atomic import atomic_path, write_json
from components.config import ExportConfig, Params
from components.dataset import load_split, read_dataset_info
from components.formats import ExportFormat, by_container
from components.model import load_model
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.tflite_metadata import METADATA_NAME

log = logging.getLogger(__name__)


def convert(
    model: tf.keras.Model,
    options: dict | str,
    representative: np.ndarray | None = None,
    function: tf.types.experimental.ConcreteFunction | None = None,
) -> bytes:
    """Convert with a format's converter options (components.formats), or those of the registry's first
    TFLite format of a precision ("float32", "float16", "int8"). `representative`: the calibration images
    that `representative_dataset` asks for. `function`: what to convert, if not the model's inference call
    (a detector's, with its post-processing op fused: components.tasks.detection.export)."""
    if isinstance(options, str):
        options = next(fmt.converter for fmt in by_container("tflite") if fmt.precision == options)
    function = function or _inference_function(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], _Weights(model))
    for key, value in options.items():
        _set_option(converter, key, value, representative)
    with warnings.catch_warnings():
        # int8 input with a representative dataset: the converter derives the input scale itself
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def _inference_function(model: tf.keras.Model):
    """The model's inference call as one concrete function, its input and output named as the Keras model
    names them: the .tflite signature reads e.g. `image` -> `logits`, as `from_keras_model` wrote it."""
    name = model.inputs[0].name.split(":")[0]
    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype, name=name)
    infer = tf.function(lambda x: {model.output_names[0]: model(x, training=False)})
    return infer.get_concrete_function(spec)


class _Weights(tf.Module):
    """The converter writes a SavedModel of the function and its variables, then converts that.
    `from_keras_model` saves the Keras model itself, and Keras' SavedModel serialization traces every
    layer's call again (for MobileNetV2's QAT model, 74 of the conversion's 79 s); a module that holds
    only the variables gives the converter the same graph and weights (the same file but for the
    conversion-metadata byte naming the source kind: concrete function, not Keras model)."""

    def __init__(self, model: tf.keras.Model):
        super().__init__()
        self.weights = list(model.variables)


def _set_option(converter: tf.lite.TFLiteConverter, key: str, value: str, representative) -> None:
    """One registry option as the TFLiteConverter attribute of that name (values are enum and dtype names)."""
    if key == "optimizations":
        converter.optimizations = [tf.lite.Optimize[value]]
    elif key == "supported_types":
        converter.target_spec.supported_types = [tf.as_dtype(value)]
    elif key == "supported_ops":
        converter.target_spec.supported_ops = [tf.lite.OpsSet[value]]
    elif key in ("inference_input_type", "inference_output_type"):
        setattr(converter, key, tf.as_dtype(value))
    elif key == "allow_custom_ops":  # a fused op LiteRT and TFLite-Micro implement (detection)
        converter.allow_custom_ops = bool(value)
    elif key == "representative_dataset":  # the value names the data; the images are `representative`
        if representative is None:
            raise ValueError(f"representative_dataset ({value}) needs representative data")
        converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
    else:
        raise ValueError(f"unknown TFLite converter option {key!r} in the format registry")


def embed_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def representative_samples(prepared_dir: Path, count: int) -> np.ndarray:
    x_train, _ = load_split(prepared_dir, "train")
    order = np.random.default_rng(0).permutation(len(x_train))[:count]
    return x_train[order]


def export_tflite(
    config: ExportConfig,
    prepared_dir: Path,
    float_model: Path,
    pruned_model: Path,
    qat_weights: Path,
    export_dir: Path,
    clustered: bool = False,
) -> dict[str, int]:
    """Write every TFLite format of the registry; returns {format name: file bytes}. `clustered`: the QAT
    model is the PCQAT wrapping (prune.clusters set)."""
    info = read_dataset_info(prepared_dir)
    sources = {
        "float": load_model(float_model),
        "pruned": load_model(pruned_model),
        "qat": load_qat_model(pruned_model, qat_weights, clustered),
    }
    representative = representative_samples(prepared_dir, config.representative_samples)
    sizes = {}
    for fmt in by_container("tflite"):
        sizes[fmt.name] = write_format(fmt, sources[fmt.source], representative, info.metadata(), export_dir)
    return sizes


def write_format(
    fmt: ExportFormat, model: tf.keras.Model, representative: np.ndarray, meta: dict, export_dir: Path
) -> int:
    data = embed_metadata(convert(model, fmt.converter, representative), {**meta, "format": fmt.name})
    with atomic_path(fmt.path(export_dir)) as tmp:
        tmp.write_bytes(data)
    log.info("wrote %s (%d bytes)", fmt.path(export_dir), len(data))
    return len(data)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `export_tflite` stage: every .tflite format of the registry; bytes to metrics."""
    sizes = export_tflite(
        params.export,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.qat_weights,
        paths.export_dir,
        clustered=params.prune.clusters is not None,
    )
    write_json(paths.metrics_file("export_tflite"), {"bytes": sizes})
    return sizes
