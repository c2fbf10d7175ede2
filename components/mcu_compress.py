"""TFLite-Micro's lookup-table compression of a clustered int8 model: each conv/dense kernel whose channels
hold at most 2^b distinct values is stored as b-bit indices plus a value table (`tflite_micro.compression`),
and TFLite-Micro's DECODE operator expands it at run time. This is what turns clustering into flash saved.

Measured here (tflite-micro 0.dev20261023, a clustered small CNN, every kernel quantized per channel): conv
kernels need one table per output channel (one table per tensor gives 0.10 agreement with the uncompressed
file), and the dense kernel needs one table for the whole tensor (per channel gives 0.38). So conv and
depthwise kernels get per-channel tables, dense kernels one table. A kernel whose indices and tables would
not be smaller than it is left alone (MobileNetV2's 3x3 depthwise kernels: 9 values a channel), and the mcu
step keeps the file only if TFLite-Micro's predictions on the test split are the uncompressed file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tflite_micro.tensorflow.lite.micro import compression
from tflite_micro.tensorflow.lite.micro.compression import spec

from components.weight_stats import channel_values, int8_kernels

MIN_BYTES = 512
MAX_INDEX_BITS = 7  # the compressor's limit


def saves(size: int, bits: int, tables: int) -> bool:
    """Whether b-bit indices plus `tables` value tables of 2^b bytes are smaller than the int8 kernel: a 3x3
    depthwise kernel (9 values a channel) is not (measured: 864 B became 1,312 B)."""
    return size * bits / 8 + tables * 2**bits < size


def lut_compress(path: Path) -> tuple[bytes, dict[str, int]]:
    """The file with every eligible kernel LUT-compressed, and {kernels compressed, largest index bits}."""
    builder, kernels, bits_used = compression.SpecBuilder(), 0, 0
    for op_name, tensor, weights in int8_kernels(path):
        quant = tensor["quantization_parameters"]
        per_channel = len(quant["scales"]) > 1 and op_name != "FULLY_CONNECTED"
        values = channel_values(tensor, weights) if per_channel else len(np.unique(weights))
        bits = max(1, int(np.ceil(np.log2(values))))
        tables = weights.shape[quant["quantized_dimension"]] if per_channel else 1
        if bits > MAX_INDEX_BITS or weights.size < MIN_BYTES or not saves(weights.size, bits, tables):
            continue
        mode = spec.PerChannel(quant["quantized_dimension"]) if per_channel else spec.PerTensor()
        builder.add_tensor(0, tensor["index"]).with_lut(index_bitwidth=bits, mode=mode)
        kernels, bits_used = kernels + 1, max(bits_used, bits)
    if kernels == 0:
        return Path(path).read_bytes(), {"kernels": 0, "index_bits": 0}
    compressed = bytes(compression.compress(Path(path).read_bytes(), builder.build()))
    return compressed, {"kernels": kernels, "index_bits": bits_used}
