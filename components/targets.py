"""Device profiles: what a released model must fit and where it must run, chosen with `target: NAME` in
params.yaml. One table, each budget with the source of its figure: the device's memory from its vendor's
datasheet, and the share of it edgepipe leaves to the model (the rest is firmware, stack and frames).

A profile sets the size and latency gates (`gates.max_bytes` of the release format, `gates.max_arena_bytes`,
`gates.max_latency_ms`) where params.yaml leaves them `auto`; an explicit number in `gates:` overrides it.
Its `deploys` cells become required in the validation matrix. `edgepipe targets` prints the table; the
README's table is `edgepipe targets --markdown` (a test checks they agree). `target` is a DVC param of the
validate step, and validate imports this table, so an edit of it re-validates.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.formats import get_format

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    device: str
    flash_bytes: int | None  # the release file's budget (None: no limit, e.g. an SD card)
    arena_bytes: int | None  # TFLite-Micro tensor arena of the int8 file (None: not a microcontroller)
    # the (format, runtime) cells of the validation matrix the device runs: each must pass the gates (even
    # one the registry only reports), and the first is the device's main file (its precision, its latency)
    deploys: tuple[tuple[str, str], ...]
    source: str  # the datasheet figures and how the budgets follow from them
    # median batch-1 milliseconds of the main file on the build machine (components/latency.py), a stated
    # proxy: a device is slower, so passing here is necessary, not sufficient. None: no budget
    latency_ms: float | None = None

    @property
    def latency_cell(self) -> tuple[str, str]:
        """What `latency_ms` times: the main file in its runtime, or in LiteRT when that runtime is
        TFLite-Micro (its host build is an emulator: no proxy for a Cortex-M's speed)."""
        fmt, runtime = self.deploys[0]
        return (fmt, "litert") if runtime == "tflm" else (fmt, runtime)

    @property
    def precision(self) -> str:
        return get_format(self.deploys[0][0]).precision


_MCU = (("tflite_int8", "tflm"),)  # the int8 .tflite in TFLite-Micro

PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        "openmv_h7",
        "OpenMV Cam H7 (STM32H743, Cortex-M7 480 MHz)",
        256 * KIB,
        256 * KIB,
        _MCU,
        "STM32H743VI: 2 MB flash, 1 MB SRAM (ST datasheet DS12110). The firmware takes most of the flash "
        "and the frame buffers most of the SRAM; the model gets 256 KiB of each (edgepipe's size gates "
        "before device profiles)",
    ),
    DeviceProfile(
        "openmv_h7_plus",
        "OpenMV Cam H7 Plus / RT1062 (32 MB SDRAM)",
        512 * KIB,
        256 * KIB,
        _MCU,
        "OpenMV Cam H7 Plus: STM32H743 plus 32 MB SDRAM and 32 MB flash (openmv.io product page). The model "
        "file goes to SDRAM, up to 512 KiB here so frames keep the rest; the arena stays in the 1 MB SRAM, "
        "256 KiB of it",
    ),
    DeviceProfile(
        "cortex_m4_256k",
        "Cortex-M4 board, 256 KiB RAM / 1 MiB flash (nRF52840: Arduino Nano 33 BLE Sense)",
        768 * KIB,
        160 * KIB,
        _MCU,
        "nRF52840: 1 MB flash, 256 KB RAM (Nordic nRF52840 Product Specification v1.7). 256 KiB of flash "
        "for the application, TFLite-Micro and the BLE stack leave 768 KiB for the model; stack, heap, "
        "the BLE stack's RAM and a 96x96x3 frame (27 KiB) leave 160 KiB of RAM for the arena",
    ),
    DeviceProfile(
        "esp32_s3_psram",
        "ESP32-S3 with 8 MB PSRAM (ESP32-S3-WROOM-1-N8R8)",
        3 * MIB,
        2 * MIB,
        _MCU,
        "ESP32-S3-WROOM-1-N8R8: 8 MB flash, 8 MB octal PSRAM, 512 KB SRAM (Espressif ESP32-S3-WROOM-1 "
        "datasheet). A 3 MB app partition (the Arduino core's 'Huge APP' scheme) holds firmware and "
        "model; the arena goes to PSRAM, 2 MiB of it, the rest for camera frames",
    ),
    DeviceProfile(
        "raspberry_pi_4",
        "Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 1.5 GHz, 1-8 GB)",
        None,
        None,
        (
            ("tflite_int8", "litert"),
            ("onnx_float32", "opencv_dnn:classic"),
            ("onnx_int8", "opencv_dnn:classic"),
        ),
        "Raspberry Pi 4 Model B product brief: BCM2711, 1, 2, 4 or 8 GB LPDDR4, storage on microSD: "
        "no size budget; the int8 .tflite runs in LiteRT and the ONNX files in OpenCV dnn. Latency: 5 ms "
        "for the int8 .tflite in LiteRT with 2 threads, measured on the build machine as a proxy",
        5.0,
    ),
    DeviceProfile(
        "desktop_opencv",
        "x86-64 desktop CPU with OpenCV dnn",
        None,
        None,
        (("onnx_float32", "opencv_dnn:classic"), ("onnx_int8", "opencv_dnn:classic")),
        "A desktop or server CPU (gigabytes of RAM, disk storage): no size budget; the ONNX files run in "
        "OpenCV's dnn module. Latency: 5 ms for the float ONNX in OpenCV dnn with 2 threads",
        5.0,
    ),
)
DEFAULT_TARGETS = {"classification": "openmv_h7", "detection": "openmv_h7_plus"}


def get_profile(name: str) -> DeviceProfile:
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise KeyError(name)


def profile_names() -> list[str]:
    return [profile.name for profile in PROFILES]


def _size(value: int | None) -> str:
    if value is None:
        return "no limit"
    return f"{value // MIB} MiB" if value % MIB == 0 else f"{value // KIB} KiB"


def deploys_text(profile: DeviceProfile) -> str:
    """`tflite_int8 in tflm`, the first (main) file with its precision."""
    cells = [f"{fmt} in {runtime}" for fmt, runtime in profile.deploys]
    return f"{cells[0]} ({profile.precision})" + "".join(f", {cell}" for cell in cells[1:])


def latency_text(profile: DeviceProfile) -> str:
    if profile.latency_ms is None:
        return "no limit"
    fmt, runtime = profile.latency_cell
    return f"{profile.latency_ms:g} ms ({fmt}, {runtime})"


def targets_markdown() -> str:
    """The profile table as the README shows it."""
    rows = [
        "| target | device | model flash | TFLite-Micro arena | latency (build machine) "
        "| deploys (must pass its gates) | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PROFILES:
        rows.append(
            f"| `{p.name}` | {p.device} | {_size(p.flash_bytes)} | {_size(p.arena_bytes)} "
            f"| {latency_text(p)} | "
            f"{deploys_text(p)} | {p.source} |"
        )
    return "\n".join(rows) + "\n"
