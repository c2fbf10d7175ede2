"""The one registry of export formats. Each row says what the file is made from and how, and every
runtime that must run it (and how it is fed). It drives export, validation, the gates, the results
table, the benchmark and the docs (`edgepipe formats`).

A runtime target with `required=False` is one the file is known to fail in, on every model or on some
(measured, see the note): it is still tried and its result, error or disagreement is reported, but it
does not block a release.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

Runtime = Literal["litert", "onnxruntime", "opencv_dnn", "tflm"]


@dataclass(frozen=True)
class RuntimeTarget:
    runtime: Runtime
    engine: Literal["classic", "new"] | None = None  # OpenCV 5 DNN engine
    layout: Literal["NHWC", "NCHW"] = "NHWC"  # how the image is fed (OpenCV's TFLite importer wants NCHW)
    required: bool = True
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.runtime}:{self.engine}" if self.engine else self.runtime


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str
    container: Literal["tflite", "onnx"]
    precision: Literal["float32", "float16", "int8"]
    source: Literal["float", "pruned", "qat"]  # which Keras model it is made from
    # What the exporter sets, and only that (components.export_tflite / export_onnx read it): TFLiteConverter
    # attributes for .tflite, quantize_static keywords for a derived .onnx. "converter", "calibration",
    # "input" and "representative_dataset" name the tool and the data, shown by `edgepipe formats`.
    converter: dict = field(hash=False)
    runtimes: tuple[RuntimeTarget, ...]
    description: str
    derived_from: str | None = None  # another format this one is converted from (its source model's file)

    def path(self, export_dir: Path) -> Path:
        return Path(export_dir) / self.filename


_OPENCV_INT8_TFLITE = (
    "OpenCV's TFLite importer has no int8 kernels for this graph "
    "(RELU lookup table, ReduceInt8, GemmInt8); use the int8 ONNX with OpenCV"
)
_OPENCV_NEW_INT8 = "OpenCV 5.0's new engine fails on or silently mis-computes int8 ONNX; use ENGINE_CLASSIC"
_OPENCV_NEW_TFLITE = (
    "OpenCV 5.0's new engine imports small CNNs but fails on MobileNetV2 .tflite "
    "(DNN/Gemm: invalid dimensions); use ENGINE_CLASSIC or the ONNX file"
)


# Full-integer TFLite: calibrated on the train split, int8 kernels only, int8 input and output tensors.
_TFLITE_FULL_INT8 = {
    "optimizations": "DEFAULT",
    "representative_dataset": "train split",
    "supported_ops": "TFLITE_BUILTINS_INT8",
    "inference_input_type": "int8",
    "inference_output_type": "int8",
}


def _opencv(layout: str = "NHWC", required: bool = True, note: str = "", new_note: str = ""):
    return (
        RuntimeTarget("opencv_dnn", "classic", layout, required, note),
        RuntimeTarget("opencv_dnn", "new", layout, required and not new_note, new_note or note),
    )


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        "tflite_float32",
        "model_float32.tflite",
        "tflite",
        "float32",
        "pruned",
        {},
        (RuntimeTarget("litert"), *_opencv(layout="NCHW", new_note=_OPENCV_NEW_TFLITE)),
        "float reference for phones and embedded Linux",
    ),
    ExportFormat(
        "tflite_float16",
        "model_float16.tflite",
        "tflite",
        "float16",
        "pruned",
        {"optimizations": "DEFAULT", "supported_types": "float16"},
        (RuntimeTarget("litert"), *_opencv(layout="NCHW", new_note=_OPENCV_NEW_TFLITE)),
        "float16 weights (half the size), float compute; for GPU delegates",
    ),
    ExportFormat(
        "tflite_int8_ptq",
        "model_int8_ptq.tflite",
        "tflite",
        "int8",
        "float",
        _TFLITE_FULL_INT8,
        (
            RuntimeTarget("litert"),
            RuntimeTarget("tflm"),
            *_opencv(layout="NCHW", required=False, note=_OPENCV_INT8_TFLITE),
        ),
        "full-int8 post-training quantisation of the unpruned float model: the no-pruning, no-QAT baseline",
    ),
    ExportFormat(
        "tflite_int8",
        "model_int8.tflite",
        "tflite",
        "int8",
        "qat",
        _TFLITE_FULL_INT8,
        (
            RuntimeTarget("litert"),
            RuntimeTarget("tflm"),
            *_opencv(layout="NCHW", required=False, note=_OPENCV_INT8_TFLITE),
        ),
        "full-int8 from the pruning-preserving QAT model, int8 input/output; microcontrollers, NPUs",
    ),
    ExportFormat(
        "onnx_float32",
        "model_float32.onnx",
        "onnx",
        "float32",
        "pruned",
        {"converter": "tf2onnx", "input": "static NHWC, batch 1"},
        (RuntimeTarget("onnxruntime"), *_opencv()),
        "ONNX for OpenCV dnn and onnxruntime",
    ),
    ExportFormat(
        "onnx_int8",
        "model_int8.onnx",
        "onnx",
        "int8",
        "pruned",
        {
            "converter": "onnxruntime quantize_static after quant_pre_process",
            "quant_format": "QDQ",
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "per_channel": True,
            # 7-bit weights: onnxruntime's U8S8 kernels on x86 without VNNI (AVX2) add pairs of u8 x s8
            # products in int16 and saturate; on the digits model that made onnxruntime disagree with the
            # float model on 10 of 270 test images (OpenCV: 0). ORT's quantization guide gives
            # reduce_range as the fix; measured: agreement 1.0 in both runtimes.
            "reduce_range": True,
            "calibration": "train split",
        },
        (RuntimeTarget("onnxruntime"), *_opencv(new_note=_OPENCV_NEW_INT8)),
        "int8 ONNX (QDQ, U8S8) from the float ONNX: onnxruntime on x86/ARM, OpenCV dnn (classic engine)",
        derived_from="onnx_float32",
    ),
)

# Detection (task: detection): the same six files, made by components/tasks/detection. Every .tflite holds
# the fused TFLite_Detection_PostProcess op and its four standard outputs (boxes, classes, scores, count),
# which OpenCV's TFLite importer does not run, so OpenCV runs the ONNX files: they hold the raw outputs
# (box encodings, class scores) that the shared decoding (components/tasks/detection/decode.py) turns into
# the same detections. The int8 files keep float outputs: the op writes float boxes and scores.
_DETECTION_INT8 = {
    "allow_custom_ops": True,
    "optimizations": "DEFAULT",
    "representative_dataset": "train split",
    "supported_ops": "TFLITE_BUILTINS_INT8",
    "inference_input_type": "int8",
}
_DETECTION_ROWS = {
    "tflite_float32": ({"allow_custom_ops": True}, (RuntimeTarget("litert"),)),
    "tflite_float16": (
        {"allow_custom_ops": True, "optimizations": "DEFAULT", "supported_types": "float16"},
        (RuntimeTarget("litert"),),
    ),
    "tflite_int8_ptq": (_DETECTION_INT8, (RuntimeTarget("litert"), RuntimeTarget("tflm"))),
    "tflite_int8": (_DETECTION_INT8, (RuntimeTarget("litert"), RuntimeTarget("tflm"))),
}
DETECTION_FORMATS: tuple[ExportFormat, ...] = tuple(
    replace(fmt, converter=_DETECTION_ROWS[fmt.name][0], runtimes=_DETECTION_ROWS[fmt.name][1])
    if fmt.name in _DETECTION_ROWS
    else replace(fmt, converter={**fmt.converter, "outputs": "box encodings, class scores (raw)"})
    for fmt in FORMATS
)


# A FOMO detector (model.head: fomo) is a plain convolutional network with a heatmap output: full-int8 like
# the classifier, decoded to centres by components/tasks/detection/fomo.py in every runtime. OpenCV runs
# its ONNX files (its TFLite importer wants NCHW, which the heatmap's layout does not survive).
FOMO_FORMATS: tuple[ExportFormat, ...] = tuple(
    replace(fmt, runtimes=tuple(t for t in fmt.runtimes if t.runtime != "opencv_dnn"))
    if fmt.container == "tflite"
    else fmt
    for fmt in FORMATS
)


def formats_for(task: str, head: str = "ssd") -> tuple[ExportFormat, ...]:
    """The registry's rows for a task (params.yaml `task`, `model.head`): the same names and files."""
    if task != "detection":
        return FORMATS
    return FOMO_FORMATS if head == "fomo" else DETECTION_FORMATS


# The artifact registered as an MLflow model version when the gates pass, and packaged for microcontrollers.
RELEASE_FORMAT = "tflite_int8"

RUNTIME_NAMES: tuple[str, ...] = ("litert", "onnxruntime", "opencv_dnn", "tflm")


def by_container(container: str, task: str = "classification", head: str = "ssd") -> tuple[ExportFormat, ...]:
    return tuple(fmt for fmt in formats_for(task, head) if fmt.container == container)


def get_format(name: str, task: str = "classification", head: str = "ssd") -> ExportFormat:
    for fmt in formats_for(task, head):
        if fmt.name == name:
            return fmt
    raise KeyError(name)


def registry_markdown(task: str = "classification") -> str:
    """The registry as the Markdown table the README shows (a test checks the README holds it)."""
    rows = [
        "| format | file | precision | made from | must run in | also run, not required |",
        "|---|---|---|---|---|---|",
    ]
    for fmt in formats_for(task):
        required = ", ".join(_target_doc(t) for t in fmt.runtimes if t.required)
        tried = ", ".join(t.name for t in fmt.runtimes if not t.required) or "-"
        source = {"float": "float model", "pruned": "pruned model", "qat": "pruned QAT model"}[fmt.source]
        if fmt.derived_from:
            source = f"`{fmt.derived_from}` (of the {source})"
        rows.append(
            f"| `{fmt.name}` | `{fmt.filename}` | {fmt.precision} | {source} | {required} | {tried} |"
        )
    return "\n".join(rows) + "\n"


def _target_doc(target: RuntimeTarget) -> str:
    return f"{target.name} ({target.layout})" if target.layout != "NHWC" else target.name
