"""Batch-1 latency of one file in one host runtime: the sweep's latency axis and a device profile's latency
budget. Measured on this machine, one file at a time (never while other work shares the cores), so it is a
proxy for a device: it ranks candidates, and a Raspberry Pi is slower than the build machine.
`bench/benchmark.py` is the full measurement (every cell, peak memory, interleaved rounds)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from components.runtimes import litert_interpreter, onnx_session, opencv_net


def median_latency_ms(runtime: str, path: Path, threads: int = 2, warmup: int = 20, runs: int = 200) -> float:
    """Median milliseconds of one inference on a zero image, `threads` threads; runtime: litert for a
    .tflite, opencv_dnn or onnxruntime for an .onnx."""
    invoke = _invoker(runtime, Path(path), threads)
    for _ in range(warmup):
        invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        invoke()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _invoker(runtime: str, path: Path, threads: int):
    if runtime == "litert":
        interpreter = litert_interpreter(path, threads)
        inp = interpreter.get_input_details()[0]
        interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        return interpreter.invoke
    session = onnx_session(path, threads)
    shape = [dim if isinstance(dim, int) else 1 for dim in session.get_inputs()[0].shape]
    image = np.zeros(shape, np.float32)
    if runtime == "onnxruntime":
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: image})
    if runtime == "opencv_dnn":
        net = opencv_net(path, threads)

        def forward():
            net.setInput(image)
            return net.forward()

        return forward
    raise ValueError(f"no latency measure for runtime {runtime!r} (litert, onnxruntime, opencv_dnn)")
