"""Typed results: the validation report (its artifacts, cells and gate verdict) and what a pipeline run
returns. Plain pydantic, no TensorFlow: the flow, the CLI, the registry and the benchmark read them without
loading a runtime. `validation.json` is a report's JSON form (a measure a cell does not have is left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from components.atomic import read_json, write_json

if TYPE_CHECKING:  # components.registry imports MLflow; the report is read without it
    from components.registry import Registration  # not a stage dependency


class Artifact(BaseModel):
    """One exported file of the format registry."""

    model_config = ConfigDict(extra="forbid")

    file: str  # its name in models/export/
    container: str  # tflite or onnx
    precision: str  # float32, float16 or int8
    source: str  # the Keras model it was made from: float, pruned or qat
    bytes: int  # file size: what flash holds
    gzip_bytes: int  # gzip -9 size: what a download or an app package costs (pruned zeros compress)
    bytes_per_parameter: float  # bytes over the float model's parameter count
    sha256: str  # of the file: the MLflow version and the git tag name the release file by it
    # int8 .tflite: the most distinct weight values in one output channel of a conv/dense kernel
    # (components/weight_stats.py): at most prune.clusters when clustered, up to 256 when not
    values_per_channel: int | None = None


# what `accuracy` measures, by report task ("fomo": a detector with model.head fomo)
SCORE_NAMES = {"classification": "top-1 accuracy", "detection": "mAP@0.5", "fomo": "centroid F1"}
# the model version tag that holds the release file's score (the champion rule compares it)
SCORE_TAGS = {"classification": "test_accuracy", "detection": "test_map_50", "fomo": "test_centroid_f1"}

# the per-epoch validation score of a training history, by task, and the history column that copies it
# (components.model.write_history) so that dvc.yaml's plots have one y whatever the task
VAL_SCORE_KEYS = {"classification": "val_accuracy", "detection": "val_map_50", "fomo": "val_f1"}
VAL_SCORE_COLUMN = "val_score"
VAL_SCORE_TITLE = "validation score (accuracy; detection mAP@0.5; FOMO centroid F1)"

CellStatus = Literal["pass", "fail", "known failure"]


class Cell(BaseModel):
    """One artifact in one runtime target. `loaded` False: `error` holds the runtime's own words and no
    measure is set."""

    model_config = ConfigDict(extra="forbid")

    format: str  # the format registry's name (`edgepipe formats`)
    runtime: str  # the runtime target: litert, tflm, onnxruntime, opencv_dnn:classic, opencv_dnn:new
    layout: str  # the input layout the runtime was fed: NHWC or NCHW
    required: bool  # gated; false: reported only (known to fail on some models)
    file: str  # the artifact's file name
    precision: str  # the artifact's precision
    note: str | None = None  # the registry's note on a cell known to fail
    loaded: bool = False  # the runtime loaded the file and ran the test split
    error: str | None = None  # when it did not: the runtime's own error text
    accuracy: float | None = None  # the task's score on the test split: top-1, or COCO mAP@0.5 (detection)
    map_50_95: float | None = None  # detection: COCO mAP@0.5:0.95
    agreement: float | None = None  # top-1 agreement with the Keras model the file was made from
    float_agreement: float | None = None  # ... with the float Keras model
    max_abs_diff: float | None = None  # largest logit difference from that Keras model
    logit_error: float | None = None  # max_abs_diff over that model's logit range
    arena_bytes: int | None = None  # TFLite-Micro's measured tensor arena
    reference_runtime: str | None = None  # the row's first runtime that ran the same file
    runtime_agreement: float | None = None  # top-1 agreement with it
    status: CellStatus | None = None  # the gates' verdict: a required cell that misses a gate fails

    @property
    def key(self) -> str:
        """`<format>.<runtime>` with MLflow's allowed characters: the prefix of its metric names."""
        return f"{self.format}.{self.runtime.replace(':', '_')}"


class GateVerdict(BaseModel):
    """Whether the release gates passed, each failure naming its gate and the measured value, and the gate
    settings that were in force (GatesConfig's fields)."""

    model_config = ConfigDict(extra="allow")

    passed: bool  # every required cell and artifact met every gate
    failures: list[str]  # each names the gate (`gates.<key>`) and the measured value


class ValidationReport(BaseModel):
    """What `validate` measured, written to metrics/validation.json."""

    model_config = ConfigDict(extra="forbid")

    task: str = "classification"  # params.yaml `task`: what `accuracy` means (SCORE_NAMES)
    float_accuracy: float  # the float Keras model's score on the test split (top-1 or mAP@0.5): the reference
    float_map_50_95: float | None = None  # detection: the float Keras model's COCO mAP@0.5:0.95
    test_images: int  # size of the test split
    parameters: int  # the float model's parameter count
    artifacts: dict[str, Artifact]  # by format name, in registry order
    cells: list[Cell]  # every format in every runtime its row names, in registry order
    gates: GateVerdict  # the release gates' verdict
    # class -> precision/recall/f1/support, for the float Keras model and the release file in LiteRT
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    confusion: dict[str, list[list[int]]] = {}  # same models, rows: actual, columns: predicted
    # detection: precision at recall 0, 0.01, ... 1 per class at IoU 0.5 (COCO's), same models
    precision_recall: dict[str, dict[str, list[float | None]]] = {}
    # detection: the first test images' confident detections (boxes, classes, scores; FOMO: centroids) of
    # the same models, for the report's side-by-side picture
    examples: dict[str, list[dict[str, list]]] = {}

    @classmethod
    def load(cls, path: Path) -> ValidationReport:
        return cls.model_validate(read_json(path))

    def save(self, path: Path) -> None:
        data = self.model_dump(mode="json")
        data["cells"] = [cell.model_dump(mode="json", exclude_none=True) for cell in self.cells]
        write_json(path, data)

    @property
    def passed(self) -> bool:
        return self.gates.passed

    @property
    def score_name(self) -> str:
        """What `float_accuracy` and each cell's `accuracy` measure."""
        return SCORE_NAMES[self.task]

    def cell(self, format_name: str, runtime: str) -> Cell | None:
        return next((c for c in self.cells if (c.format, c.runtime) == (format_name, runtime)), None)

    def accuracy(self, format_name: str, runtime: str) -> float | None:
        """Top-1 test accuracy of one file in one runtime; None when that runtime could not run it."""
        cell = self.cell(format_name, runtime)
        return cell.accuracy if cell is not None and cell.loaded else None


@dataclass(frozen=True)
class RunResult:
    """What `edgepipe run` (the flow, or the unchanged-release shortcut) ends with."""

    report: ValidationReport
    registration: Registration
    pushed: int | None  # files sent to the DVC remote; None: not asked to push
    report_file: str
    data: dict  # the prepare step's description of the data (metrics/prepare.json)
    latency: str | None = None  # the flow's timing of the target's main file; None: the release was current
