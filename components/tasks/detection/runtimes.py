"""Run an exported detector in the runtime that will run it, one image at a time (batch 1), and return
Detections. A .tflite carries TFLite's post-processing op, so LiteRT and TFLite-Micro return the four
standard outputs; an .onnx returns the raw outputs (box encodings, class scores), which OpenCV dnn and
onnxruntime run and the shared decoding (components.tasks.detection.decode) turns into detections."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.formats import RuntimeTarget
from components.runtimes import (
    litert_interpreter,
    onnx_session,
    opencv_net,
    quantize,
    tflm_arena_bytes,
    tflm_quantization,
)
from components.tasks.detection.decode import (
    BOX_OUTPUT,
    SCORE_OUTPUT,
    Detections,
    NmsSettings,
    detections_from_raw,
)

DetectionRunner = Callable[[np.ndarray], list[Detections]]


def _from_outputs(boxes, classes, scores, count) -> Detections:
    n = int(np.asarray(count).reshape(-1)[0])
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4)[:n],
        np.asarray(classes).reshape(-1)[:n].astype(np.int64),
        np.asarray(scores, np.float32).reshape(-1)[:n],
    )


def litert_detector(path: Path, threads: int = 2) -> DetectionRunner:
    interpreter = litert_interpreter(path, threads)
    given = interpreter.get_input_details()[0]
    outputs = [d["index"] for d in interpreter.get_output_details()]  # boxes, classes, scores, count

    def run(images: np.ndarray) -> list[Detections]:
        found = []
        for image in images:
            interpreter.set_tensor(
                given["index"], quantize(image[None], given["dtype"], *given["quantization"])
            )
            interpreter.invoke()
            found.append(_from_outputs(*(interpreter.get_tensor(i) for i in outputs)))
        return found

    return run


def tflm_detector(path: Path, arena_size: int | None = None) -> DetectionRunner:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path), arena_size=arena_size or tflm_arena_bytes(path))
    given = interpreter.get_input_details(0)
    scale, zero = tflm_quantization(given)

    def run(images: np.ndarray) -> list[Detections]:
        found = []
        for image in images:
            interpreter.set_input(quantize(image[None], given["dtype"], scale, zero), 0)
            interpreter.invoke()
            found.append(_from_outputs(*(interpreter.get_output(k) for k in range(4))))
        return found

    return run


def onnxruntime_detector(
    path: Path, anchors: np.ndarray, nms: NmsSettings, threads: int = 2
) -> DetectionRunner:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> list[Detections]:
        found = []
        for image in images:
            boxes, scores = session.run(None, {name: image[None]})
            found.append(detections_from_raw(boxes[0], scores[0], anchors, nms))
        return found

    return run


def opencv_detector(
    path: Path, anchors: np.ndarray, nms: NmsSettings, engine: str | None = None, threads: int = 2
) -> DetectionRunner:
    net = opencv_net(path, threads, engine)
    names = (BOX_OUTPUT, SCORE_OUTPUT)  # the ONNX file's output names (model.with_scores)

    def run(images: np.ndarray) -> list[Detections]:
        found = []
        for image in images:
            net.setInput(np.ascontiguousarray(image[None], dtype=np.float32))
            boxes, scores = (np.asarray(v, np.float32) for v in net.forward(names))
            found.append(
                detections_from_raw(boxes.reshape(-1, 4), scores.reshape(len(anchors), -1), anchors, nms)
            )
        return found

    return run


def open_detection_runner(
    target: RuntimeTarget, path: Path, anchors: np.ndarray, nms: NmsSettings, threads: int = 2
) -> DetectionRunner:
    """The runner of one format-registry runtime target (components.formats): what validation and the
    benchmark call, as components.runtimes.open_runner is for the classifier."""
    if target.runtime == "litert":
        return litert_detector(path, threads)
    if target.runtime == "tflm":
        return tflm_detector(path)
    if target.runtime == "onnxruntime":
        return onnxruntime_detector(path, anchors, nms, threads)
    if target.runtime == "opencv_dnn":
        return opencv_detector(path, anchors, nms, target.engine, threads)
    raise ValueError(f"no detection runner for runtime {target.runtime!r}")
