"""The microcontroller package of a detector: the int8 .tflite (TFLite_Detection_PostProcess fused) as a
16-byte aligned C array with a header of the constants a TensorFlow Lite Micro firmware needs, its tensor
arena measured in TFLite-Micro, and for OpenMV cameras the model, labels and a `main.py` that draws the
detections. The classifier's package is components/mcu.py; the C array writer is shared."""

from __future__ import annotations

from pathlib import Path

from components.errors import EdgepipeError
from components.mcu import (
    INT_TYPES,
    file_facts,
    operator_names,
    quantization,
    read_model,
    type_name,
    write_package,
)
from components.mcu_files import (
    ARRAY_NAME,
    OPENMV_FIRMWARE,
    c_float,
    c_source,
    generated_by,
    openmv_camera,
)
from components.tasks.detection.export import POSTPROCESS_OP


def package_detector_for_mcu(
    tflite_path: Path, metadata: dict, out_dir: Path, min_score: float = 0.5
) -> dict:
    """Write `out_dir` (replaced atomically) for a full-integer detector .tflite; returns the measured sizes,
    operators and files. `metadata`: labels, input_shape and normalization, as the export embeds them."""
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    data = tflite_path.read_bytes()
    model = read_model(tflite_path, data)
    graph = model.subgraphs[0]
    inp = graph.tensors[graph.inputs[0]]
    ops = operator_names(model)
    if inp.type not in INT_TYPES or f"CUSTOM:{POSTPROCESS_OP}" not in ops or len(graph.outputs) != 4:
        raise EdgepipeError(
            f"{tflite_path}: not a full-integer detector with {POSTPROCESS_OP} fused (input "
            f"{type_name(inp.type)}, operators {', '.join(ops)}). Use the int8 detection export."
        )
    _, height, width, channels = (int(d) for d in inp.shape)
    max_detections = int(graph.tensors[graph.outputs[0]].shape[1])
    labels = [str(label) for label in metadata["labels"]]
    facts = {
        **file_facts(tflite_path, data),
        "shape": (height, width, channels),
        "input_type": type_name(inp.type),
        "input_q": quantization(inp),
        "mean": float(metadata["normalization"]["mean"]),
        "std": float(metadata["normalization"]["std"]),
        "labels": labels,
        "ops": ops,
        "max_detections": max_detections,
        "min_score": min_score,
    }
    files = {
        "model_data.h": detector_header(facts),
        "model_data.cc": c_source(facts, data),
        "openmv/labels.txt": "".join(f"{label}\n" for label in labels),
        "openmv/main.py": openmv_detector_main(facts),
    }
    write_package(out_dir, tflite_path, files)
    return {
        "arena_bytes": facts["arena"],
        "flash_bytes": len(data),
        "ops": ops,
        "max_detections": max_detections,
        "files": sorted([*files, "openmv/trained.tflite"]),
    }


def detector_header(facts: dict) -> str:
    height, width, channels = facts["shape"]
    in_scale, in_zero = facts["input_q"]
    return f"""{generated_by(facts, "//")}
#ifndef EDGEPIPE_MODEL_DATA_H_
#define EDGEPIPE_MODEL_DATA_H_

extern const unsigned char {ARRAY_NAME}[];
extern const unsigned int {ARRAY_NAME}_len;

// Tensor arena: {facts["arena"]} bytes, the smallest multiple of 16 in which TFLite-Micro's reference kernels
// allocated and ran the model on the build host (the allocator reported {facts["arena_reported"]}).
constexpr int kTensorArenaSize = {facts["arena"]};

// Input: 1 x kInputHeight x kInputWidth x kInputChannels, NHWC, {facts["input_type"]}. Per pixel (0..255):
//   x = (pixel / 255.0f - kNormMean) / kNormStd;  q = round(x / kInputScale) + kInputZeroPoint
constexpr int kInputHeight = {height};
constexpr int kInputWidth = {width};
constexpr int kInputChannels = {channels};
constexpr float kNormMean = {c_float(facts["mean"])};
constexpr float kNormStd = {c_float(facts["std"])};
constexpr float kInputScale = {c_float(in_scale)};
constexpr int kInputZeroPoint = {in_zero};

// Outputs, float32, written by {POSTPROCESS_OP} (as TF Object Detection API models):
//   0 boxes   [1][kMaxDetections][4]: ymin, xmin, ymax, xmax, 0..1 of the input
//   1 classes [1][kMaxDetections]: index into kLabels (as a float)
//   2 scores  [1][kMaxDetections]: best first
//   3 count   [1]: how many of the kMaxDetections are filled
constexpr int kMaxDetections = {facts["max_detections"]};
constexpr int kNumClasses = {len(facts["labels"])};
extern const char* const kLabels[kNumClasses];

// Operators to register in a tflite::MicroMutableOpResolver<kNumOperators>: {", ".join(facts["ops"])}
// ({POSTPROCESS_OP}: resolver.AddDetectionPostprocess()).
constexpr int kNumOperators = {len(facts["ops"])};

#endif  // EDGEPIPE_MODEL_DATA_H_
"""


def openmv_detector_main(facts: dict) -> str:
    height, width, channels = facts["shape"]
    mean, std = facts["mean"], facts["std"]
    return (
        generated_by(facts, "#")
        + f"""# Detects objects in camera frames with trained.tflite and draws them; prints count and FPS.
# For {OPENMV_FIRMWARE}. Copy trained.tflite, labels.txt and this file to the camera.
# The model's outputs are TFLite_Detection_PostProcess's: boxes (ymin, xmin, ymax, xmax, 0..1), classes,
# scores, count. Not run on a camera by edgepipe's tests (they run the file in TFLite-Micro on the host).
import time

import csi
import ml
from ml.preprocessing import Normalization

MIN_SCORE = {facts["min_score"]!r}

{openmv_camera(height, width, channels)}
model = ml.Model("trained.tflite")
labels = [line.rstrip("\\n") for line in open("labels.txt")]
# model input {width}x{height}; training normalisation (pixel / 255 - {mean!r}) / {std!r}
norm = Normalization(scale=(0.0, 1.0), mean=({mean!r},) * 3, stdev=({std!r},) * 3)

clock = time.clock()
while True:
    clock.tick()
    img = csi0.snapshot()
    boxes, classes, scores, count = model.predict([norm(img)])
    found = 0
    for i in range(int(count.flatten()[0])):
        score = float(scores.flatten()[i])
        if score < MIN_SCORE:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in boxes[0][i])
        x, y = int(xmin * img.width()), int(ymin * img.height())
        w, h = int((xmax - xmin) * img.width()), int((ymax - ymin) * img.height())
        label = labels[int(classes.flatten()[i])]
        img.draw_rectangle(x, y, w, h, color=(255, 0, 0))
        img.draw_string(x, max(0, y - 10), "%s %.2f" % (label, score), color=(255, 0, 0))
        found += 1
    print("%d object(s)  %.1f fps" % (found, clock.fps()))
"""
    )
