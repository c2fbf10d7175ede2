"""mcu: package the release full-int8 .tflite for microcontrollers.

One folder holds both ways onto a device: `model_data.h`/`model_data.cc` (the model as a C array plus the
constants a TensorFlow Lite Micro firmware needs) and `openmv/` (model, labels and a `main.py` for the
OpenMV firmware's `ml` module, 4.5+). The tensor-arena size is the smallest that TFLite-Micro allocates
and runs the model in (components.runtimes.tflm_arena_bytes).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from components.atomic import atomic_path, write_json
from components.config import Params
from components.errors import EdgepipeError
from components.export_tflite import read_tflite_metadata
from components.formats import RELEASE_FORMAT, get_format
from components.paths import ProjectPaths
from components.runtimes import ARENA_ALIGNMENT, tflm_arena_bytes, tflm_reported_arena_bytes

ARRAY_NAME = "g_model_data"
ARENA_ALIGN = ARENA_ALIGNMENT
BYTES_PER_LINE = 12  # as `xxd -i` writes them

_OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_INT_TYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8}


def package_for_mcu(tflite_path: Path, metadata: dict, out_dir: Path) -> dict:
    """Write `out_dir` (replacing it atomically) from a full-integer .tflite and its embedded metadata;
    returns the measured sizes, the operators and the files written (relative to `out_dir`)."""
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    data = tflite_path.read_bytes()
    model = _read_model(tflite_path, data)
    graph = model.subgraphs[0]
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if inp.type not in _INT_TYPES:
        raise EdgepipeError(
            f"{tflite_path}: the input tensor is {_type_name(inp.type)}, not int8/uint8. Microcontrollers "
            "need the full-integer model: use the int8 export (format tflite_int8)."
        )
    _, height, width, channels = (int(d) for d in inp.shape)
    if channels not in (1, 3):
        raise EdgepipeError(
            f"{tflite_path}: {channels} input channels; cameras give 1 (grayscale) or 3 (RGB)."
        )
    labels = [str(label) for label in metadata["labels"]]
    _check_metadata(tflite_path, metadata, labels, [1, height, width, channels], int(np.prod(out.shape)))

    try:
        arena_reported = tflm_reported_arena_bytes(tflite_path)
        arena = tflm_arena_bytes(tflite_path)
    except RuntimeError as exc:
        raise EdgepipeError(
            f"{tflite_path}: TensorFlow Lite Micro cannot run this model ({exc}). Its messages above name "
            "the operator it failed on; change that layer in the model to one TFLite-Micro supports."
        ) from None

    mean, std = float(metadata["normalization"]["mean"]), float(metadata["normalization"]["std"])
    in_q, out_q = _quantization(inp), _quantization(out)
    facts = {
        "source": tflite_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "arena": arena,
        "arena_reported": arena_reported,
        "shape": (height, width, channels),
        "dtypes": (_type_name(inp.type), _type_name(out.type)),
        "labels": labels,
        "ops": _operator_names(model),
        "mean": mean,
        "std": std,
        "input_q": in_q,
        "output_q": out_q,
        "openmv_error": _openmv_input_error(_INT_TYPES[inp.type], *in_q, mean, std),
    }
    files = {
        "model_data.h": _header(facts),
        "model_data.cc": _source(facts, data),
        "openmv/labels.txt": "".join(f"{label}\n" for label in labels),
        "openmv/main.py": _openmv_main(facts),
        "README.txt": _readme(facts),
    }
    with atomic_path(out_dir) as tmp:
        (tmp / "openmv").mkdir(parents=True)
        shutil.copyfile(tflite_path, tmp / "openmv" / "trained.tflite")
        for name, text in files.items():
            (tmp / name).write_text(text)
    return {
        "arena_bytes": arena,
        "arena_reported_by_allocator": arena_reported,
        "flash_bytes": len(data),
        "c_array_bytes": len(data),
        "ops": facts["ops"],
        "files": sorted([*files, "openmv/trained.tflite"]),
        "openmv_input_error_steps": facts["openmv_error"],
    }


def _read_model(path: Path, data: bytes) -> schema.ModelT:
    if data[4:8] != b"TFL3":
        raise EdgepipeError(f"{path}: not a TensorFlow Lite flatbuffer. Pass the int8 .tflite export.")
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))


def _type_name(code: int) -> str:
    names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    return names.get(code, str(code)).lower()


def _check_metadata(path: Path, metadata: dict, labels: list[str], shape: list[int], classes: int) -> None:
    if [int(d) for d in metadata["input_shape"]] != shape:
        raise EdgepipeError(
            f"{path}: metadata input_shape {metadata['input_shape']} does not match the model's input "
            f"{shape}. Re-export the model so its embedded metadata is current."
        )
    if len(labels) != classes:
        raise EdgepipeError(
            f"{path}: {len(labels)} labels in the metadata for {classes} model outputs. Re-export the model."
        )
    if any(not label or "\n" in label or "\r" in label for label in labels):
        raise EdgepipeError(
            f"{path}: labels must be non-empty single lines; got {labels!r}. Rename the classes."
        )


def _operator_names(model: schema.ModelT) -> list[str]:
    names = set()
    for code in model.operatorCodes:
        builtin = runtime.get_builtin_code_from_operator_code(code)
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}")
        else:
            names.add(_OP_NAMES.get(builtin, str(builtin)))
    return sorted(names)


def _quantization(tensor: schema.TensorT) -> tuple[float, int]:
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        return 1.0, 0  # a float tensor: the identity mapping
    return float(q.scale[0]), int(q.zeroPoint[0])


def _openmv_input_error(dtype: type, scale: float, zero_point: int, mean: float, std: float) -> int:
    """How far (in input quantisation steps) OpenMV's int8/uint8 input is from the training normalisation.

    For integer inputs the firmware ignores Normalization's scale/mean/stdev and writes the pixel bytes
    (shifted by -128 for int8); only the model's own input quantisation maps them to (pixel/255 - mean)/std.
    """
    pixels = np.arange(256)
    fed = pixels - 128 if dtype == np.int8 else pixels
    info = np.iinfo(dtype)
    wanted = np.clip(np.round((pixels / 255 - mean) / std / scale) + zero_point, info.min, info.max)
    return int(np.abs(fed - wanted).max())


def _c_float(value: float) -> str:
    text = repr(float(value))
    return f"{text}f" if any(ch in text for ch in ".e") else f"{text}.0f"


def _c_string(text: str) -> str:
    out = []
    for byte in text.encode():
        if byte in b'"\\?':  # "?" too, so no "??x" trigraph can form under older C compilers
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _generated_by(facts: dict, comment: str) -> str:
    return (
        f"{comment} Generated by edgepipe from {facts['source']} (sha256 {facts['sha256']}).\n"
        f"{comment} Do not edit: re-run the mcu stage.\n"
    )


def _header(facts: dict) -> str:
    height, width, channels = facts["shape"]
    (in_scale, in_zero), (out_scale, out_zero) = facts["input_q"], facts["output_q"]
    in_type, out_type = facts["dtypes"]
    return f"""{_generated_by(facts, "//")}
#ifndef EDGEPIPE_MODEL_DATA_H_
#define EDGEPIPE_MODEL_DATA_H_

// The .tflite flatbuffer, 16-byte aligned as TFLite-Micro requires.
extern const unsigned char {ARRAY_NAME}[];
extern const unsigned int {ARRAY_NAME}_len;

// Tensor arena: {facts["arena"]} bytes, the smallest multiple of {ARENA_ALIGN} in which TFLite-Micro
// allocated and ran the model on the build host ({ARENA_ALIGN} bytes less failed); the allocator reported
// {facts["arena_reported"]} bytes, which can be short. No margin is added. Declare it as
//   alignas(16) static uint8_t tensor_arena[kTensorArenaSize];
// Measured with TFLite-Micro's reference kernels on a 64-bit host: a 32-bit MCU needs slightly less for the
// allocator's own records, but optimised kernels (CMSIS-NN) may request scratch buffers the reference
// kernels do not; confirm with MicroInterpreter::arena_used_bytes() on the device.
constexpr int kTensorArenaSize = {facts["arena"]};

// Input: 1 x kInputHeight x kInputWidth x kInputChannels, NHWC, {in_type}. For each pixel (0..255):
//   x = (pixel / 255.0f - kNormMean) / kNormStd;  q = round(x / kInputScale) + kInputZeroPoint
constexpr int kInputHeight = {height};
constexpr int kInputWidth = {width};
constexpr int kInputChannels = {channels};
constexpr float kNormMean = {_c_float(facts["mean"])};
constexpr float kNormStd = {_c_float(facts["std"])};
constexpr float kInputScale = {_c_float(in_scale)};
constexpr int kInputZeroPoint = {in_zero};

// Output: kNumClasses {out_type} logits; logit = (q - kOutputZeroPoint) * kOutputScale. Names in kLabels.
constexpr int kNumClasses = {len(facts["labels"])};
constexpr float kOutputScale = {_c_float(out_scale)};
constexpr int kOutputZeroPoint = {out_zero};
extern const char* const kLabels[kNumClasses];

// Operators to register in a tflite::MicroMutableOpResolver<kNumOperators>: {", ".join(facts["ops"])}.
constexpr int kNumOperators = {len(facts["ops"])};

#endif  // EDGEPIPE_MODEL_DATA_H_
"""


def _source(facts: dict, data: bytes) -> str:
    rows = (data[i : i + BYTES_PER_LINE] for i in range(0, len(data), BYTES_PER_LINE))
    body = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in row) for row in rows)
    labels = ",\n".join(f"    {_c_string(label)}" for label in facts["labels"])
    # Including the header first gives these const definitions external linkage in C++.
    return f"""{_generated_by(facts, "//")}
#include "model_data.h"

alignas(16) const unsigned char {ARRAY_NAME}[] = {{
{body}
}};
const unsigned int {ARRAY_NAME}_len = {len(data)};

const char* const kLabels[kNumClasses] = {{
{labels},
}};
"""


def _openmv_main(facts: dict) -> str:
    height, width, channels = facts["shape"]
    pixformat = {1: "GRAYSCALE", 3: "RGB565"}[channels]
    dtype = facts["dtypes"][0]
    fed = "pixel - 128" if dtype == "int8" else "the pixel"
    # The largest window of the model's aspect ratio inside QVGA, so the preview shows what the model sees.
    fit = min(320 / width, 240 / height)
    window = (int(width * fit), int(height * fit))
    mean, std = facts["mean"], facts["std"]
    in_scale, in_zero = facts["input_q"]
    return (
        _generated_by(facts, "#")
        + f"""# Classifies camera frames with trained.tflite; prints the top label, its probability and FPS.
# For OpenMV firmware 4.5+ with ml.preprocessing (if that import fails, update the firmware in OpenMV IDE).
# Copy trained.tflite, labels.txt and this file to the camera.
import math
import time

import ml
import sensor
from ml.preprocessing import Normalization

sensor.reset()
sensor.set_pixformat(sensor.{pixformat})  # the model takes {channels} channel(s)
sensor.set_framesize(sensor.QVGA)
sensor.set_windowing({window})  # model input is {width}x{height}; ml resizes the window to it
sensor.skip_frames(time=2000)  # let exposure settle

model = ml.Model("trained.tflite", load_to_fb=True)
labels = [line.rstrip("\\n") for line in open("labels.txt")]

# Training normalisation: (pixel / 255 - {mean!r}) / {std!r}. The firmware applies it for float inputs;
# for this {dtype} model it writes {fed} and the model's input quantisation (scale {in_scale:.6g},
# zero point {in_zero}) maps that to the normalised value to within {facts["openmv_error"]} step(s).
norm = Normalization(scale=(0.0, 1.0), mean=({mean!r},) * 3, stdev=({std!r},) * 3)

clock = time.clock()
while True:
    clock.tick()
    img = sensor.snapshot()
    logits = model.predict([norm(img)])[0].flatten().tolist()
    best = max(range(len(logits)), key=lambda i: logits[i])
    total = sum(math.exp(v - logits[best]) for v in logits)
    print("%s %.3f  %.1f fps" % (labels[best], 1 / total, clock.fps()))
"""
    )


def _readme(facts: dict) -> str:
    height, width, channels = facts["shape"]
    arena, classes, in_type = facts["arena"], len(facts["labels"]), facts["dtypes"][0]
    return f"""Microcontroller package for {facts["source"]} (sha256 {facts["sha256"]}), made by edgepipe.
Input {height}x{width}x{channels} {in_type}, {classes} classes, tensor arena {arena} bytes.

openmv/trained.tflite  the model, byte for byte
openmv/labels.txt      class names, one per line, in output order
openmv/main.py         classifies camera frames (OpenMV firmware 4.5+, `ml` module with ml.preprocessing)
model_data.h           declarations and constants: kTensorArenaSize, input size and quantisation, kLabels
model_data.cc          the model as a 16-byte aligned C array (g_model_data, g_model_data_len) and the labels

OpenMV camera: connect it by USB, copy the three files in openmv/ to the root of the drive it shows
(or of its SD card), then reset the camera; main.py runs at boot. Output appears in OpenMV IDE's terminal.

OpenMV sizes the tensor arena itself (model.ram); kTensorArenaSize is for your own firmware.

Your own TensorFlow Lite Micro firmware: add model_data.cc to the build, #include "model_data.h", and give
tflite::MicroInterpreter tflite::GetModel(g_model_data), a tflite::MicroMutableOpResolver<kNumOperators>
with these operators registered: {", ".join(facts["ops"])},
and an alignas(16) uint8_t tensor_arena[kTensorArenaSize].
"""


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `mcu` stage: the release .tflite as a C array, header, OpenMV script and arena size."""
    release = get_format(RELEASE_FORMAT).path(paths.export_dir)
    summary = package_for_mcu(release, read_tflite_metadata(release), paths.mcu_dir)
    write_json(paths.metrics_file("mcu"), summary)
    return summary
