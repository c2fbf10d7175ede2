"""Run an exported artifact in the runtime that will run it on the device, one image at a time (batch 1,
as on a device). Every runner takes normalised float32 NHWC images and returns float logits; int8
tensors are fed and read through the quantisation parameters stored in the file itself.

`open_runner(target, path, threads)` is the single entry point (validation and the benchmark use it).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.formats import RuntimeTarget

Runner = Callable[[np.ndarray], np.ndarray]

# TFLite-Micro needs its tensor arena sized up front; this only bounds the measurement run.
TFLM_MEASURE_ARENA = 64 * 1024 * 1024


def quantize(x: np.ndarray, dtype: type, scale: float, zero_point: int) -> np.ndarray:
    if dtype in (np.int8, np.uint8) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if y.dtype in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def litert_interpreter(path: Path | str, threads: int = 2):
    """A LiteRT interpreter of the file, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def litert(path: Path, threads: int = 2) -> Runner:
    interpreter = litert_interpreter(path, threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            interpreter.set_tensor(inp["index"], quantize(image[None], inp["dtype"], *inp["quantization"]))
            interpreter.invoke()
            logits.append(dequantize(interpreter.get_tensor(out["index"]), *out["quantization"])[0])
        return np.stack(logits)

    return run


def tflm(path: Path, threads: int = 1, arena_size: int | None = None) -> Runner:
    """The TensorFlow Lite for Microcontrollers interpreter (the same kernels as on the MCU, built for the
    host), with the tensor arena the model measurably needs unless told otherwise (as on a device).
    Single-threaded by design; `threads` is accepted for a uniform signature."""
    from tflite_micro.python.tflite_micro import runtime

    if arena_size is None:
        arena_size = tflm_arena_bytes(path)
    interpreter = runtime.Interpreter.from_file(str(path), arena_size=arena_size)
    inp, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    in_scale, in_zero = tflm_quantization(inp)
    out_scale, out_zero = tflm_quantization(out)

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            interpreter.set_input(quantize(image[None], inp["dtype"], in_scale, in_zero), 0)
            interpreter.invoke()
            logits.append(dequantize(interpreter.get_output(0), out_scale, out_zero)[0])
        return np.stack(logits)

    run.interpreter = interpreter  # type: ignore[attr-defined]  (arena measurement reads it)
    return run


def tflm_quantization(details: dict) -> tuple[float, int]:
    """(scale, zero point) of a TFLite-Micro tensor's details; (0.0, 0) for a float tensor."""
    q = details["quantization_parameters"]
    scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
    zero = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
    return scale, zero


def tflm_reported_arena_bytes(path: Path) -> int:
    """What TFLite-Micro's RecordingMicroAllocator reports after one inference ("Arena allocation total").
    A lower bound, not the answer: MobileNetV2 needed 624 bytes more (planner scratch during allocation)."""
    return _tflm_reported_arena_bytes(*_file_key(path))


def _file_key(path: Path) -> tuple[str, int]:
    """Cache key for a measurement of a file: its resolved path and modification time."""
    return str(Path(path).resolve()), Path(path).stat().st_mtime_ns


@functools.lru_cache(maxsize=32)
def _tflm_reported_arena_bytes(path: str, _mtime_ns: int) -> int:
    run = tflm(Path(path), arena_size=TFLM_MEASURE_ARENA)
    info = run.interpreter.get_input_details(0)  # type: ignore[attr-defined]
    run(np.zeros((1, *info["shape"][1:]), dtype=np.float32))
    printed = _c_output_of(run.interpreter.print_allocations)  # type: ignore[attr-defined]
    match = re.search(r"Arena allocation total (\d+) bytes", printed)
    if not match:
        raise RuntimeError(f"TFLite-Micro did not report its arena use for {path}: {printed[:300]!r}")
    return int(match.group(1))


ARENA_ALIGNMENT = 16  # firmware declares the arena alignas(16); sizes are searched in these steps

# Allocate and run once in `argv[2]` bytes. In a child process because too small an arena can crash
# TFLite-Micro instead of raising (a failed allocation's null pointer is used: tflite-micro issue #2037).
_ARENA_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
try:
    interpreter = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
    detail = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(detail["shape"], dtype=detail["dtype"]), 0)
    interpreter.invoke()
except RuntimeError:
    sys.exit(3)
"""


def tflm_arena_fits(path: Path, arena_size: int) -> bool:
    """Whether TFLite-Micro allocates and runs the model in `arena_size` bytes (asked in a child process).

    Too small shows as a RuntimeError (exit 3) or as a crash right after TFLite-Micro's own "Failed to
    allocate" line; a child that fails any other way (a bad file, a missing package) is an error, never
    an answer of "too small"."""
    child = subprocess.run(
        [sys.executable, "-c", _ARENA_PROBE, str(path), str(arena_size)], capture_output=True, timeout=300
    )
    if child.returncode == 0:
        return True
    stderr = child.stderr.decode(errors="replace")
    if child.returncode == 3 or (child.returncode < 0 and "Failed to allocate" in stderr):
        return False
    raise RuntimeError(
        f"TFLite-Micro could not run {path} in a {arena_size}-byte arena for another reason than its size "
        f"(exit code {child.returncode}): {stderr.strip()[-500:]}"
    )


def tflm_arena_bytes(path: Path) -> int:
    """The smallest tensor arena, in 16-byte steps, in which TFLite-Micro allocates and runs the model:
    the number a firmware's `kTensorArenaSize` needs. Searched from the allocator's own report upwards
    (it can be short) and downwards, then bisected."""
    return _tflm_arena_bytes(*_file_key(path))


@functools.lru_cache(maxsize=32)
def _tflm_arena_bytes(path: str, _mtime_ns: int) -> int:
    step = ARENA_ALIGNMENT
    reported = -(-tflm_reported_arena_bytes(Path(path)) // step) * step
    fits = functools.partial(tflm_arena_fits, Path(path))
    # Bracket the answer: `low` does not fit, `high` fits.
    if fits(reported):
        high, gap = reported, step
        while reported - gap > step and fits(reported - gap):
            high, gap = reported - gap, gap * 2
        low = max(0, reported - gap)
    else:
        low, gap = reported, 256
        while not fits(reported + gap):
            low, gap = reported + gap, gap * 2
            if gap > 4 * reported + 1_048_576:
                raise RuntimeError(
                    f"TFLite-Micro cannot run {path} in any arena up to {reported + gap} bytes"
                )
        high = reported + gap
    while high - low > step:
        middle = (low + high) // 2 // step * step
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _c_output_of(call: Callable[[], object]) -> str:
    """What `call` prints from C++ to file descriptors 1 and 2 (Python's sys.stdout would not see it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            call()
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        sink.seek(0)
        return sink.read()


def onnx_session(path: Path, threads: int = 2):
    """An onnxruntime CPU session of the file with `threads` intra-op threads, warnings only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime(path: Path, threads: int = 2) -> Runner:
    session = onnx_session(path, threads)
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {input_name: image[None]})[0] for image in images])

    return run


# validate runs the formats' cells on parallel threads. One run (of many) saw OpenCV's classic TFLite
# importer reject the float .tflite ("Unsupported operator type MEAN") that it loads in every other run,
# byte-identical: reading models and setting OpenCV's global thread count are serialised.
_OPENCV_LOAD = threading.Lock()


def opencv_dnn(path: Path, threads: int = 2, engine: str | None = None, layout: str = "NHWC") -> Runner:
    """cv2.dnn with the given engine (OpenCV 5: "classic" or "new"). ONNX graphs take their declared NHWC
    input; OpenCV's TFLite importer wants an NCHW blob although the model declares NHWC."""
    net = opencv_net(path, threads, engine)

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            blob = image.transpose(2, 0, 1) if layout == "NCHW" else image
            net.setInput(np.ascontiguousarray(blob[None], dtype=np.float32))
            logits.append(np.asarray(net.forward(), dtype=np.float32).reshape(-1))
        return np.stack(logits)

    return run


def opencv_net(path: Path, threads: int = 2, engine: str | None = None):
    """cv2.dnn's net of a .tflite or .onnx file, on the given engine (OpenCV 5: "classic" or "new")."""
    import cv2

    read = cv2.dnn.readNetFromTFLite if Path(path).suffix == ".tflite" else cv2.dnn.readNetFromONNX
    with _OPENCV_LOAD:
        cv2.setNumThreads(threads)
        return read(str(path), opencv_engine(engine)) if engine else read(str(path))


def opencv_engine(engine: str) -> int:
    import cv2

    flag = {"classic": "ENGINE_CLASSIC", "new": "ENGINE_NEW"}[engine]
    if not hasattr(cv2.dnn, flag):
        raise RuntimeError(f"OpenCV {cv2.__version__} has no {flag} (engines arrived in OpenCV 5)")
    return getattr(cv2.dnn, flag)


def open_runner(target: RuntimeTarget, path: Path, threads: int = 2) -> Runner:
    """Load `path` in the runtime `target` names; raises the runtime's own error when it cannot."""
    if target.runtime == "opencv_dnn":
        return opencv_dnn(path, threads, target.engine, target.layout)
    return {"litert": litert, "onnxruntime": onnxruntime, "tflm": tflm}[target.runtime](path, threads)
