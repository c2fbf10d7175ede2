"""What clustering leaves in an int8 .tflite: the most distinct values any output channel of a conv, depthwise
or dense weight tensor holds (k clusters give at most k per channel; an unclustered int8 kernel up to 256).
Read with LiteRT from the file itself, so it shows what reached the device, not what Keras held."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.runtimes import litert_interpreter

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def values_per_channel(path: Path) -> int | None:
    """The most distinct int8 weight values in one output channel of the file's conv/dense kernels; None:
    no int8 weights (a float file)."""
    interpreter = litert_interpreter(path, threads=1)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    most = None
    for op in interpreter._get_ops_details():  # LiteRT's op list: the weights are input 1 of these ops
        if op["op_name"] not in WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        tensor = details.get(int(op["inputs"][1]))
        if tensor is None or tensor["dtype"] != np.int8:
            continue
        weights = interpreter.get_tensor(tensor["index"])
        axis = tensor["quantization_parameters"]["quantized_dimension"]
        channels = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
        count = max(len(np.unique(channel)) for channel in channels)
        most = count if most is None else max(most, count)
    return most
