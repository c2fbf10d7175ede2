"""The one registry of export formats. It drives export, validation, the results table and the docs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str
    container: Literal["tflite", "onnx"]
    precision: Literal["float32", "float16", "int8"]
    source: Literal["pruned", "qat"]  # which Keras model it is converted from
    runtimes: tuple[str, ...]  # every runtime that must load and agree (components.runtimes)
    description: str

    def path(self, export_dir: Path) -> Path:
        return Path(export_dir) / self.filename


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        "tflite_float32",
        "model_float32.tflite",
        "tflite",
        "float32",
        "pruned",
        ("litert",),
        "float reference for phones and embedded Linux",
    ),
    ExportFormat(
        "tflite_float16",
        "model_float16.tflite",
        "tflite",
        "float16",
        "pruned",
        ("litert",),
        "float16 weights (half the size), float compute; for GPU delegates",
    ),
    ExportFormat(
        "tflite_int8",
        "model_int8.tflite",
        "tflite",
        "int8",
        "qat",
        ("litert",),
        "full-integer from the pruning-preserving QAT model, int8 input/output; microcontrollers, NPUs",
    ),
    ExportFormat(
        "onnx_float32",
        "model_float32.onnx",
        "onnx",
        "float32",
        "pruned",
        ("onnxruntime", "opencv_dnn"),
        "ONNX (tf2onnx, static NHWC input) for OpenCV dnn and onnxruntime",
    ),
)

# The artifact registered as an MLflow model version when the gates pass.
RELEASE_FORMAT = "tflite_int8"


def by_container(container: str) -> tuple[ExportFormat, ...]:
    return tuple(fmt for fmt in FORMATS if fmt.container == container)


def get_format(name: str) -> ExportFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)
