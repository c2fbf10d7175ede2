"""A quiet console: the start-up lines native libraries write straight to file descriptor 2 are dropped.

TensorFlow's and XLA's C++ code prints "All log messages before absl::InitializeLog()" and CUDA probes on a
machine with no GPU before any log level applies (TF_CPP_MIN_LOG_LEVEL does not reach them), LiteRT
announces its CPU delegate and the TFLite converter prints its quantisation settings. None of it is about
the user's run. `filter_native_stderr()` (the CLI's first step) puts a pipe on fd 2 and copies every
other line through unchanged, so real errors and warnings still show.
"""

from __future__ import annotations

import os
import re
import sys
import threading

# Each pattern: a whole line a native library prints on every run, whatever the data.
NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (?:cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|node_def_util)"
    r"\.cc:\d+\] .*"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"
    r")$"
)


def filter_native_stderr() -> None:
    """From now on, drop NOISE lines written to fd 2 by native code. Python's own sys.stderr goes straight
    to the original stderr (so its last lines before exit are never lost); fd 2, which native libraries and
    child processes write to, becomes a pipe read by a thread that copies every other line there."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(original, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    threading.Thread(target=_copy_lines, args=(read_end, original), daemon=True, name="native-stderr").start()


def _copy_lines(read_end: int, out: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            if not NOISE.match(raw.decode(errors="replace").rstrip("\r\n")):
                os.write(out, raw)
