"""What clustering leaves in an int8 .tflite: the most distinct values any output channel of a conv, depthwise
or dense weight tensor holds (k clusters give at most k per channel; an unclustered int8 kernel up to 256).
Read with LiteRT from the file itself, so it shows what reached the device, not what Keras held."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from components.runtimes import litert_interpreter

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def int8_kernels(path: Path) -> Iterator[tuple[str, dict, np.ndarray]]:
    """(operator name, LiteRT tensor details, values) of each int8 conv/depthwise/dense kernel of the file."""
    interpreter = litert_interpreter(path, threads=1)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # LiteRT's op list: the weights are input 1 of these ops
        if op["op_name"] not in WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        tensor = details.get(int(op["inputs"][1]))
        if tensor is not None and tensor["dtype"] == np.int8:
            yield op["op_name"], tensor, interpreter.get_tensor(tensor["index"])


def channel_values(tensor: dict, weights: np.ndarray) -> int:
    """The most distinct values in one slice along the kernel's quantized dimension."""
    axis = tensor["quantization_parameters"]["quantized_dimension"]
    slices = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
    return max(len(np.unique(s)) for s in slices)


def values_per_channel(path: Path) -> int | None:
    """The most distinct int8 weight values in one output channel of the file's conv/dense kernels; None:
    no int8 weights (a float file)."""
    counts = [channel_values(tensor, weights) for _, tensor, weights in int8_kernels(path)]
    return max(counts, default=None)
