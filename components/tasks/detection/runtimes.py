"""Run an exported detector in the runtime that will run it, one image at a time (batch 1), and return
Detections. A .tflite carries TFLite's post-processing op, so LiteRT and TFLite-Micro return the four
standard outputs; an .onnx returns the raw outputs (box encodings, class scores), which OpenCV dnn and
onnxruntime run and the shared decoding (components.tasks.detection.decode) turns into detections."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.runtimes import opencv_engine, quantize, tflm_arena_bytes
from components.tasks.detection.decode import Detections, NmsSettings, detections_from_raw
from components.tasks.detection.model import BOX_OUTPUT, SCORE_OUTPUT

DetectionRunner = Callable[[np.ndarray], list[Detections]]


def _from_outputs(boxes, classes, scores, count) -> Detections:
    n = int(np.asarray(count).reshape(-1)[0])
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4)[:n],
        np.asarray(classes).reshape(-1)[:n].astype(np.int64),
        np.asarray(scores, np.float32).reshape(-1)[:n],
    )


def litert_detector(path: Path, threads: int = 2) -> DetectionRunner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
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
    q = given["quantization_parameters"]
    scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
    zero = int(q["zero_points"][0]) if len(q["zero_points"]) else 0

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
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
    import cv2

    cv2.setNumThreads(threads)
    net = (
        cv2.dnn.readNetFromONNX(str(path), opencv_engine(engine))
        if engine
        else cv2.dnn.readNetFromONNX(str(path))
    )
    names = (BOX_OUTPUT, SCORE_OUTPUT)  # the ONNX file's output names (bench/detection.py with_scores)

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
