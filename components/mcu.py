"""mcu: package the release full-int8 .tflite for microcontrollers.

One folder holds both ways onto a device: `model_data.h`/`model_data.cc` (the model as a C array plus the
constants a TensorFlow Lite Micro firmware needs) and `openmv/` (model, labels and a `main.py` for the
OpenMV firmware's `ml` module, 4.5+). The tensor-arena size is the smallest that TFLite-Micro allocates
and runs the model in (components.runtimes.tflm_arena_bytes). The text files are written by
components.mcu_files.
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
from components.dataset import load_split
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, get_format
from components.mcu_compress import lut_compress
from components.mcu_files import package_files
from components.paths import ProjectPaths
from components.runtimes import tflm, tflm_arena_bytes, tflm_reported_arena_bytes
from components.tflite_metadata import read_tflite_metadata

_OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
INT_TYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8}


def package_for_mcu(tflite_path: Path, metadata: dict, out_dir: Path) -> dict:
    """Write `out_dir` (replacing it atomically) from a full-integer .tflite and its embedded metadata;
    returns the measured sizes, the operators and the files written (relative to `out_dir`)."""
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    data = tflite_path.read_bytes()
    model = read_model(tflite_path, data)
    graph = model.subgraphs[0]
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if inp.type not in INT_TYPES:
        raise EdgepipeError(
            f"{tflite_path}: the input tensor is {type_name(inp.type)}, not int8/uint8. Microcontrollers "
            "need the full-integer model: use the int8 export (format tflite_int8)."
        )
    _, height, width, channels = (int(d) for d in inp.shape)
    if channels not in (1, 3):
        raise EdgepipeError(
            f"{tflite_path}: {channels} input channels; cameras give 1 (grayscale) or 3 (RGB)."
        )
    labels = [str(label) for label in metadata["labels"]]
    _check_metadata(tflite_path, metadata, labels, [1, height, width, channels], int(np.prod(out.shape)))

    mean, std = float(metadata["normalization"]["mean"]), float(metadata["normalization"]["std"])
    in_q, out_q = quantization(inp), quantization(out)
    facts = {
        **file_facts(tflite_path, data),
        "shape": (height, width, channels),
        "dtypes": (type_name(inp.type), type_name(out.type)),
        "labels": labels,
        "ops": operator_names(model),
        "mean": mean,
        "std": std,
        "input_q": in_q,
        "output_q": out_q,
        "openmv_error": _openmv_input_error(INT_TYPES[inp.type], *in_q, mean, std),
    }
    files = package_files(facts, data)
    write_package(out_dir, tflite_path, files)
    return {
        "arena_bytes": facts["arena"],
        "arena_reported_by_allocator": facts["arena_reported"],
        "flash_bytes": len(data),
        "c_array_bytes": len(data),
        "ops": facts["ops"],
        "files": sorted([*files, "openmv/trained.tflite"]),
        "openmv_input_error_steps": facts["openmv_error"],
    }


def file_facts(tflite_path: Path, data: bytes) -> dict:
    """The model file's name and sha256 and the tensor arena TFLite-Micro measurably needs for it."""
    try:
        arena_reported = tflm_reported_arena_bytes(tflite_path)
        arena = tflm_arena_bytes(tflite_path)
    except RuntimeError as exc:
        raise EdgepipeError(
            f"{tflite_path}: TensorFlow Lite Micro cannot run this model ({exc}). Its messages above name "
            "the operator it failed on; change that layer in the model to one TFLite-Micro supports."
        ) from None
    return {
        "source": tflite_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "arena": arena,
        "arena_reported": arena_reported,
    }


def write_package(out_dir: Path, tflite_path: Path, files: dict[str, str]) -> None:
    """The package folder, replaced atomically: the model as openmv/trained.tflite and the text files."""
    with atomic_path(out_dir) as tmp:
        (tmp / "openmv").mkdir(parents=True)
        shutil.copyfile(tflite_path, tmp / "openmv" / "trained.tflite")
        for name, text in files.items():
            (tmp / name).write_text(text)


def read_model(path: Path, data: bytes) -> schema.ModelT:
    if data[4:8] != b"TFL3":
        raise EdgepipeError(f"{path}: not a TensorFlow Lite flatbuffer. Pass the int8 .tflite export.")
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))


def type_name(code: int) -> str:
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


def operator_names(model: schema.ModelT) -> list[str]:
    names = set()
    for code in model.operatorCodes:
        builtin = runtime.get_builtin_code_from_operator_code(code)
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}")
        else:
            names.add(_OP_NAMES.get(builtin, str(builtin)))
    return sorted(names)


def quantization(tensor: schema.TensorT) -> tuple[float, int]:
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


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `mcu` stage: the release .tflite as a C array, header, OpenMV script and arena size."""
    release = get_format(RELEASE_FORMAT).path(paths.export_dir)
    summary = package_for_mcu(release, read_tflite_metadata(release), paths.mcu_dir)
    if params.prune.clusters is not None:
        summary |= lut_package(release, paths.mcu_dir / LUT_FILE, load_split(paths.prepared_dir, "test")[0])
        if summary["lut_flash_bytes"] is not None:
            summary["files"] = sorted([*summary["files"], LUT_FILE])
    write_json(paths.metrics_file("mcu"), summary)
    return summary


LUT_FILE = "model_int8_lut.tflite"


def lut_package(release: Path, out: Path, images: np.ndarray) -> dict:
    """With clustering: the release file LUT-compressed for TFLite-Micro (components/mcu_compress.py), kept
    only if TFLite-Micro runs it with exactly the uncompressed file's predictions on the test split; its
    flash and arena bytes. A firmware needs TFLite-Micro built with compression (USE_TFLM_COMPRESSION=1)."""
    data, facts = lut_compress(release)
    out.write_bytes(data)
    plain, compressed = tflm(release)(images), tflm(out)(images)
    same = float(np.mean(plain.argmax(axis=1) == compressed.argmax(axis=1)))
    result = {
        "lut_kernels": facts["kernels"],
        "lut_index_bits": facts["index_bits"],
        "lut_test_agreement": same,
        "lut_max_abs_diff": float(np.max(np.abs(plain - compressed))),
    }
    if same < 1.0 or facts["kernels"] == 0:
        out.unlink()
        return result | {"lut_flash_bytes": None}
    return result | {"lut_flash_bytes": len(data), "lut_arena_bytes": tflm_arena_bytes(out)}
