"""Run an exported artifact in the runtime that will run it on the device, one image at a time (batch 1,
as on a device). Every runner takes normalised float32 NHWC images and returns float logits; int8 models
are fed and read through the quantisation parameters stored in the file itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def litert(path: Path, threads: int = 2) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            interpreter.set_tensor(inp["index"], quantize(image[None], inp))
            interpreter.invoke()
            logits.append(dequantize(interpreter.get_tensor(out["index"]), out)[0])
        return np.stack(logits)

    return run


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def onnxruntime(path: Path, threads: int = 2) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {input_name: image[None]})[0] for image in images])

    return run


def opencv_dnn(path: Path, threads: int = 2) -> Runner:
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(str(path))

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            net.setInput(np.ascontiguousarray(image[None], dtype=np.float32))  # graph input is NHWC
            logits.append(np.asarray(net.forward()).reshape(-1))
        return np.stack(logits)

    return run


RUNTIMES: dict[str, Callable[..., Runner]] = {
    "litert": litert,
    "onnxruntime": onnxruntime,
    "opencv_dnn": opencv_dnn,
}
