"""The `gates` section of params.yaml: the release gates `validate` checks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from components.config_section import Section, Threshold


class GatesConfig(Section):
    """Release gates checked by `validate`: a failing one blocks registration and the DVC push.

    Per-format and per-runtime maps take a "default" entry for the rest; a bare number means
    {"default": number}. Size gates are absent (no limit) unless set.
    """

    max_accuracy_drop: dict[str, Threshold] = {"default": 0.05}  # per format, vs the float Keras model
    # per runtime, top-1 agreement with the Keras model the file was made from (pruned or QAT)
    min_agreement: dict[str, Threshold] = {"default": 0.9}
    # per precision: largest logit difference from the Keras model the file was made from, as a fraction of
    # that model's logit range. Catches a runtime that computes a different function (wrong padding, ...).
    max_logit_error: dict[Literal["float32", "float16", "int8"], Threshold] = {
        "float32": 0.001,
        "float16": 0.02,
        "int8": 0.25,
    }
    # top-1 agreement of each runtime with the first runtime of the format's row, on the same file: two
    # runtimes running one int8 file may round differently, but should not answer differently. 0.97, not
    # 0.98: on a 90-image test split two borderline images flipping between onnxruntime and OpenCV's int8
    # rounding is 0.9778 (measured, `produce` folder); OpenCV's broken int8 MobileNetV2 (0.9481) still fails.
    min_runtime_agreement: Threshold = 0.97
    max_bytes: dict[str, Annotated[int, Field(ge=1)]] = {}  # per format, file size
    max_arena_bytes: int | None = Field(None, ge=1, description="TFLite-Micro tensor arena, int8 .tflite")
    # median batch-1 ms of the target's main file on this machine, checked by the flow before a release
    max_latency_ms: float | None = Field(None, gt=0)

    @field_validator("max_accuracy_drop", "min_agreement", mode="before")
    @classmethod
    def _number_is_default(cls, value: object) -> object:
        return {"default": value} if isinstance(value, int | float) else value

    @field_validator("max_accuracy_drop", "min_agreement")
    @classmethod
    def _has_default(cls, value: dict, info: ValidationInfo) -> dict:
        if "default" not in value:
            raise ValueError(f"{info.field_name} needs a 'default' entry (the bar for every other key)")
        return value

    @field_validator("max_accuracy_drop", "max_bytes")
    @classmethod
    def _known_formats(cls, value: dict, info: ValidationInfo) -> dict:
        from components.formats import FORMATS  # not a stage dependency

        return _known_keys(value, info.field_name, [fmt.name for fmt in FORMATS])

    @field_validator("min_agreement")
    @classmethod
    def _known_runtimes(cls, value: dict, info: ValidationInfo) -> dict:
        from components.formats import FORMATS, RUNTIME_NAMES  # not a stage dependency

        targets = {target.name for fmt in FORMATS for target in fmt.runtimes}
        return _known_keys(value, info.field_name, [*RUNTIME_NAMES, *sorted(targets - set(RUNTIME_NAMES))])

    def accuracy_drop_for(self, format_name: str) -> float:
        return self.max_accuracy_drop.get(format_name, self.max_accuracy_drop["default"])

    def bytes_for(self, format_name: str) -> int | None:
        return self.max_bytes.get(format_name, self.max_bytes.get("default"))

    def agreement_for(self, target_name: str) -> float:
        """The most specific entry: "opencv_dnn:classic", then "opencv_dnn", then "default"."""
        for key in (target_name, target_name.split(":")[0]):
            if key in self.min_agreement:
                return self.min_agreement[key]
        return self.min_agreement["default"]


def _known_keys(value: dict, field: str, known: list[str]) -> dict:
    unknown = sorted(set(value) - {"default", *known})
    if unknown:
        raise ValueError(f"unknown {field} key(s) {unknown}; use one of: default, {', '.join(known)}")
    return value
