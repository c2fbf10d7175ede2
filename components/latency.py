"""Batch-1 latency of one file in one host runtime: the sweep's latency axis and a device profile's latency
budget. Measured on this machine, one file at a time (never while other work shares the cores), so it is a
proxy for a device: it ranks candidates, and a Raspberry Pi is slower than the build machine.
`bench/benchmark.py` is the full measurement (every cell, peak memory, interleaved rounds)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import Params
from components.formats import ExportFormat, get_format
from components.gates import latency_failure
from components.runtimes import litert_interpreter, onnx_session, opencv_net
from components.targets import get_profile


@dataclass(frozen=True)
class LatencyCheck:
    cell: tuple[str, str]  # (format, runtime) timed: the target's main file
    median_ms: float
    budget_ms: float | None  # gates.max_latency_ms in force; None: no budget
    failure: str | None  # the gate's failure, None: within the budget or no budget

    @property
    def text(self) -> str:
        fmt, runtime = self.cell
        limit = "no budget" if self.budget_ms is None else f"gates.max_latency_ms {self.budget_ms:g}"
        return f"{fmt} on {runtime} {self.median_ms:.3f} ms (median, this machine; {limit})"


def check_latency(params: Params, path_of: Callable[[ExportFormat], Path]) -> LatencyCheck:
    """The target's main file timed alone, against gates.max_latency_ms; `path_of(format)`: where the file
    is (the export folder, or a sweep candidate's output in DVC's cache). Run by the flow after the steps,
    not by `validate`: a time depends on what else shares the cores, which a DVC stage's cached output
    must not (a sweep runs candidates side by side and times them one by one afterwards)."""
    cell = get_profile(params.target).latency_cell
    fmt = get_format(cell[0], params.task, params.model.head)
    ms = median_latency_ms(cell[1], path_of(fmt), params.benchmark.threads)
    return LatencyCheck(cell, ms, params.gates.max_latency_ms, latency_failure(params.gates, cell, ms))


def median_latency_ms(runtime: str, path: Path, threads: int = 2, warmup: int = 20, runs: int = 200) -> float:
    """Median milliseconds of one inference on a zero image, `threads` threads; runtime: litert for a
    .tflite, opencv_dnn (or opencv_dnn:classic / :new, an OpenCV 5 engine) or onnxruntime for an .onnx."""
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
    runtime, _, engine = runtime.partition(":")
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
        net = opencv_net(path, threads, engine or None)

        def forward():
            net.setInput(image)
            return net.forward()

        return forward
    raise ValueError(f"no latency measure for runtime {runtime!r} (litert, onnxruntime, opencv_dnn)")
