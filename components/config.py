"""The schema of params.yaml, and `load_params`, the one function that reads it.

Every section is a frozen pydantic model that forbids unknown keys, so a typo or a bad value fails at
start-up with the key's dotted path, before any data is touched. Each step receives only its section.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components.errors import EdgepipeError

Threshold = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The input size each architecture is built for when data.image.height/width are "auto". small_cnn: 48 px,
# measured on the generated `produce` folder (600 colour images): val accuracy 0.978 at 48 px and at 64 px,
# at 56 % of the compute; its int8 file and TFLite-Micro arena fit 256 KiB (bench/own_data.py).
# MobileNetV2: 96 px, the smallest ImageNet size of Keras' applications.
ARCHITECTURE_INPUT_SIZE = {"small_cnn": 48, "mobilenet_v2": 96}
# The MobileNetV2 widths and square input sizes Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)


class ImageSpec(_Section):
    """What the model sees. `auto` is decided by `prepare` (channels from the data, size from the model
    architecture) and what it chose is recorded in the manifest and in every artifact's metadata."""

    height: int | str = Field("auto", description="pixels; auto: the architecture's input size")
    width: int | str = Field("auto", description="pixels; auto: the architecture's input size")
    channels: Literal[1, 3, "auto"] = Field("auto", description="auto: 3 if any image has colour, else 1")
    # input = (pixel / 255 - mean) / std, per channel value shared by all channels
    mean: float = 0.0
    std: float = Field(1.0, gt=0)

    @field_validator("height", "width")
    @classmethod
    def _size_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and (isinstance(value, str) or not 8 <= value <= 1024):
            raise ValueError("must be a number of pixels from 8 to 1024, or auto")
        return value


class SplitSpec(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42


class DataConfig(_Section):
    raw_dir: Path = Path("data/raw")
    # When raw_dir holds no images: "digits" writes sklearn's bundled load_digits there; "none" is an error.
    bundled_if_empty: Literal["digits", "none"] = "digits"
    image: ImageSpec = ImageSpec()
    split: SplitSpec = SplitSpec()
    # A file that is not a readable image: "error" lists every such file and stops; "skip" leaves them out
    # of training (listed in the prepare report and in MLflow); the data folder itself is never changed.
    on_bad_image: Literal["error", "skip"] = "error"


class ModelConfig(_Section):
    name: str = Field("edgepipe-digits", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Not mobilenet_v3_small: tf-keras builds its hard-swish from TFOpLambda layers, which tfmot cannot
    # prune ("Please initialize `Prune` with a supported layer ... TFOpLambda"), so it cannot reach QAT.
    architecture: Literal["small_cnn", "mobilenet_v2"] = "small_cnn"
    width_multiplier: float = Field(1.0, gt=0, le=2.0, description="filters scale; MobileNetV2 alpha")
    # Starting weights (components/pretrained.py): none | imagenet (mobilenet_v2: Keras' ImageNet weights
    # from the Keras cache ~/.keras/models) | a .keras/.h5 file, relative to the project folder.
    pretrained: str = "none"

    @field_validator("pretrained")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in ("none", "imagenet") and Path(value).suffix not in (".keras", ".h5"):
            raise ValueError("must be none, imagenet, or the path of a .keras or .h5 weights file")
        return value

    @model_validator(mode="after")
    def _imagenet_has_weights(self) -> ModelConfig:
        if self.pretrained == "imagenet":
            if self.architecture != "mobilenet_v2":
                raise ValueError(
                    "pretrained: imagenet weights exist for architecture mobilenet_v2 only; for "
                    f"{self.architecture} use none or a .keras/.h5 file of an earlier run"
                )
            if self.width_multiplier not in IMAGENET_ALPHAS:
                raise ValueError(
                    "pretrained: imagenet needs width_multiplier one of "
                    f"{', '.join(map(str, IMAGENET_ALPHAS))} (got {self.width_multiplier:g}): ImageNet "
                    "weights exist only for these widths"
                )
        return self


class AugmentConfig(_Section):
    """Random changes to training images (Keras preprocessing layers), applied while the float model trains
    and never part of a saved or exported model. `train.augment: none` turns them all off."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    rotation: float = Field(0.05, ge=0, le=0.5, description="fraction of a full turn, either way")
    zoom: float = Field(0.15, ge=0, lt=1, description="fraction of the size, in or out")
    translate: float = Field(0.1, ge=0, lt=1, description="fraction of height and width")
    brightness: float = Field(0.15, ge=0, le=1, description="fraction of the pixel range")
    contrast: float = Field(0.15, ge=0, lt=1)

    @property
    def enabled(self) -> bool:
        return self.flip != "none" or any(
            (self.rotation, self.zoom, self.translate, self.brightness, self.contrast)
        )


AUGMENT_NONE = AugmentConfig(flip="none", rotation=0, zoom=0, translate=0, brightness=0, contrast=0)


class TransferConfig(_Section):
    """Training from model.pretrained weights, in two phases: the layers that got weights frozen while the
    new ones (the classifier head) train, then the top of the pretrained layers fine-tuned too."""

    # Phase 1, at most (early stopping on val loss). A head on a few hundred images gets ~5 steps an
    # epoch: 10 epochs left it at chance on the generated `produce` folder, 30 reached 0.74.
    head_epochs: int = Field(30, ge=0, le=1000, description="phase 1: only the new layers train")
    # Phase 2 trains this fraction of the pretrained layers, counted from the output side, for up to
    # train.epochs (early stopping) at `learning_rate`; 0 keeps them all frozen.
    unfreeze: float = Field(0.5, ge=0, le=1)
    # 1e-3 reached 0.96 val accuracy where 3e-4 reached 0.91 (weights of a 1,500-image `signs` run -> a
    # 150-image `produce` folder, 23 validation images; train() measured directly, not a benchmark).
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="phase 2 peak; lower than train's")


class TrainConfig(_Section):
    epochs: int = Field(60, ge=1, le=1000, description="at most; early stopping usually ends sooner")
    # Stop when val loss has not improved for this many epochs; the best epoch's weights are kept.
    patience: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(3e-3, gt=0, lt=1, description="peak; see schedule")
    schedule: Literal["cosine", "constant"] = "cosine"
    class_weights: Literal["balanced", "none"] = "balanced"
    augment: AugmentConfig = AugmentConfig()
    transfer: TransferConfig = TransferConfig()  # used when model.pretrained is not none
    # The float model must reach this val accuracy, or the run stops before export with a diagnosis.
    # null: a bar derived from the data (the majority class's share + a quarter of the rest).
    min_val_accuracy: Threshold | None = None
    seed: int = 0

    @field_validator("augment", mode="before")
    @classmethod
    def _none_turns_augmentation_off(cls, value: object) -> object:
        return AUGMENT_NONE if value in ("none", None, False) else value


class PruneConfig(_Section):
    target_sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    frequency: int = Field(10, ge=1, description="prune every N steps")


class QatConfig(_Section):
    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0, lt=1)


class ExportConfig(_Section):
    onnx_opset: int = Field(13, ge=13, le=21)
    representative_samples: int = Field(200, ge=1, le=100_000)


class GatesConfig(_Section):
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


class BenchmarkConfig(_Section):
    """bench/benchmark.py: batch-1 latency of every artifact in every runtime that must run it."""

    threads: int = Field(2, ge=1, le=256)
    warmup: int = Field(20, ge=0, le=10_000, description="untimed runs per artifact and runtime")
    rounds: int = Field(10, ge=1, le=10_000, description="interleaved rounds over all cells")
    runs_per_round: int = Field(20, ge=1, le=10_000)


class MlflowConfig(_Section):
    """Where runs go is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), never a credential in this file."""

    experiment: str = Field("edgepipe", min_length=1)
    register_model: bool = Field(
        True, description="register the int8 .tflite as a model version if gates pass"
    )
    retries: int = Field(2, ge=0, le=20, description="Prefect retries of the registration task")
    retry_delay_seconds: float = Field(10, ge=0, le=3600)


class ReleaseConfig(_Section):
    """What a gate-passing run becomes: outputs pushed to the DVC remote, a git commit of dvc.lock (and
    params.yaml, the data's .dvc file, the metrics) tagged `<tag>`, and the MLflow model version tagged
    with that git tag, the commit, the DVC md5 and the sha256."""

    git_tag: bool = Field(True, description="commit dvc.lock and tag the release in git")
    tag_format: str = Field(
        "{model}@v{version}", description="{model}: model.name, {version}: MLflow version"
    )
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")

    @field_validator("tag_format")
    @classmethod
    def _tag_has_both_fields(cls, value: str) -> str:
        if "{model}" not in value or "{version}" not in value:
            raise ValueError("must contain {model} and {version}, e.g. '{model}@v{version}'")
        if any(c in value for c in " ~^:?*[\\"):
            raise ValueError("git tag names cannot contain spaces or any of ~^:?*[\\")
        return value


class ServeConfig(_Section):
    """`edgepipe serve`: servers on this machine, the deployment's schedule and the new-data watcher."""

    cron: str | None = Field("0 3 * * *", description="pipeline schedule (cron, in `timezone`); null: none")
    timezone: str = "UTC"
    watch_seconds: float = Field(10.0, ge=0.5, le=86_400, description="how often the data folder is checked")
    host: str = Field("127.0.0.1", description="bind address of both servers; keep it local")
    prefect_port: int = Field(4200, ge=1, le=65_535)
    mlflow_port: int = Field(5000, ge=1, le=65_535)
    work_pool: str = Field("edgepipe", min_length=1, description="`edgepipe deploy --pool` default")
    stop_timeout_seconds: float = Field(
        30.0, ge=1, le=600, description="Ctrl-C/SIGTERM: everything stopped within this, else killed"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        from cronsim import CronSim, CronSimError

        try:
            if value is not None:
                CronSim(value, datetime.now())
        except CronSimError as exc:
            raise ValueError(f"not a cron expression ({exc}); e.g. '0 3 * * *' = daily at 03:00") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value


class OrchestrationConfig(_Section):
    """How the flow spreads work: per-format validation runs on Prefect's task runner."""

    task_runner: Literal["thread", "dask"] = "thread"  # dask: needs `pip install prefect-dask`
    max_workers: int = Field(2, ge=1, le=256)
    dask_address: str | None = Field(None, description="an existing Dask scheduler; unset: a local cluster")
    lock_timeout_seconds: float = Field(
        3600, gt=0, description="how long a run waits for another run of the same project to finish"
    )


class Params(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    qat: QatConfig = QatConfig()
    export: ExportConfig = ExportConfig()
    gates: GatesConfig = GatesConfig()
    mlflow: MlflowConfig = MlflowConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    release: ReleaseConfig = ReleaseConfig()
    serve: ServeConfig = ServeConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> Params:
        split = self.data.split
        if split.val_fraction + split.test_fraction >= 0.8:
            raise ValueError("data.split: val_fraction + test_fraction must leave at least 20% for training")
        image = self.data.image
        sizes = [v for v in (image.height, image.width) if v != "auto"]
        if self.model.architecture.startswith("mobilenet") and sizes and min(sizes) < 32:
            raise ValueError(f"data.image: {self.model.architecture} needs height and width of at least 32")
        if self.model.pretrained == "imagenet" and image.channels == 1:
            raise ValueError("data.image.channels: model.pretrained imagenet needs 3 channels (or auto)")
        return self

    def section_digest(self, *sections: str) -> str:
        """A stable hash of the named sections: part of cache keys and of the MLflow `params_hash` tag."""
        dumped = {name: self.model_dump(mode="json")[name] for name in sections}
        return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml. Errors name the file, the dotted key and the fix."""
    path = Path(path)
    if path.is_dir():
        raise EdgepipeError(f"{path}: is a folder, not a file. Pass --params PATH/TO/params.yaml.")
    if not path.is_file():
        raise EdgepipeError(f"{path}: file not found. Run from the project folder or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EdgepipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise EdgepipeError(f"{path}: the top level must be a mapping of sections (data, model, train, ...).")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise EdgepipeError(describe_validation_error(path, exc)) from None


def describe_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s); fix them and run again:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (misspelt? see the documented keys in params.yaml)")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)
