"""mcu (FOMO): the release int8 FOMO file as the microcontroller package: C array, a header with the input
quantisation and the heatmap's grid, the TFLite-Micro arena, and for OpenMV the model, labels and a
`main.py` whose `ml` FOMO post-processing draws the object centres."""

from __future__ import annotations

from components.atomic import write_json
from components.config import Params
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, get_format
from components.mcu import INT_TYPES, file_facts, quantization, read_model, type_name, write_package
from components.mcu_files import ARRAY_NAME, c_float, c_source, generated_by
from components.paths import ProjectPaths
from components.tasks.detection.fomo import openmv_fomo_script
from components.tflite_metadata import read_tflite_metadata


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    release = get_format(RELEASE_FORMAT, "detection", "fomo").path(paths.export_dir)
    data = release.read_bytes()
    graph = read_model(release, data).subgraphs[0]
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if inp.type not in INT_TYPES:
        raise EdgepipeError(f"{release}: input {type_name(inp.type)}, not int8. Use the int8 export.")
    metadata = read_tflite_metadata(release)
    _, height, width, channels = (int(d) for d in inp.shape)
    _, grid_h, grid_w, cells = (int(d) for d in out.shape)
    facts = {
        **file_facts(release, data),
        "shape": (height, width, channels),
        "grid": (grid_h, grid_w, cells),
        "input_type": type_name(inp.type),
        "input_q": quantization(inp),
        "output_q": quantization(out),
        "mean": float(metadata["normalization"]["mean"]),
        "std": float(metadata["normalization"]["std"]),
        "labels": [str(label) for label in metadata["labels"]],
    }
    files = {
        "model_data.h": header(facts),
        "model_data.cc": c_source(facts, data),
        "openmv/labels.txt": "".join(f"{label}\n" for label in facts["labels"]),
        "openmv/main.py": openmv_fomo_script(
            facts["labels"], (height, width), params.detection.fomo.threshold
        ),
    }
    write_package(paths.mcu_dir, release, files)
    summary = {
        "arena_bytes": facts["arena"],
        "flash_bytes": len(data),
        "grid": [grid_h, grid_w, cells],
        "files": sorted([*files, "openmv/trained.tflite"]),
    }
    write_json(paths.metrics_file("mcu"), summary)
    return summary


def header(facts: dict) -> str:
    height, width, channels = facts["shape"]
    grid_h, grid_w, cells = facts["grid"]
    (in_scale, in_zero), (out_scale, out_zero) = facts["input_q"], facts["output_q"]
    return f"""{generated_by(facts, "//")}
#ifndef EDGEPIPE_MODEL_DATA_H_
#define EDGEPIPE_MODEL_DATA_H_

extern const unsigned char {ARRAY_NAME}[];
extern const unsigned int {ARRAY_NAME}_len;

// Tensor arena: {facts["arena"]} bytes (measured in TFLite-Micro on the build host).
constexpr int kTensorArenaSize = {facts["arena"]};

// Input: 1 x {height} x {width} x {channels}, NHWC, {facts["input_type"]}. Per pixel (0..255):
//   x = (pixel / 255.0f - kNormMean) / kNormStd;  q = round(x / kInputScale) + kInputZeroPoint
constexpr float kNormMean = {c_float(facts["mean"])};
constexpr float kNormStd = {c_float(facts["std"])};
constexpr float kInputScale = {c_float(in_scale)};
constexpr int kInputZeroPoint = {in_zero};

// Output: the FOMO heatmap, 1 x kGridHeight x kGridWidth x kGridChannels, int8; channel 0 is background,
// channel c + 1 class c. score = (q - kOutputZeroPoint) * kOutputScale. A cell whose best class scores
// above the threshold is an object cell; each blob of such cells is one object at its centre.
constexpr int kGridHeight = {grid_h};
constexpr int kGridWidth = {grid_w};
constexpr int kGridChannels = {cells};
constexpr float kOutputScale = {c_float(out_scale)};
constexpr int kOutputZeroPoint = {out_zero};
constexpr int kNumClasses = {len(facts["labels"])};
extern const char* const kLabels[kNumClasses];

#endif  // EDGEPIPE_MODEL_DATA_H_
"""
