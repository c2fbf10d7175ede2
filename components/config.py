"""The schema of params.yaml, and `load_params`, the one function that reads it.

Every section is a frozen pydantic model that forbids unknown keys, so a typo or a bad value fails at
start-up with the key's dotted path, before any data is touched. Each step receives only its section.
The sections the steps from data to export read are here; `gates` is in components.config_gates, the
ones about running the pipeline (mlflow, release, serve, orchestration, benchmark) in
components.config_operations. Import any of them from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.config_gates import GatesConfig
from components.config_operations import (
    BenchmarkConfig,
    MlflowConfig,
    OrchestrationConfig,
    ReleaseConfig,
    ServeConfig,
)
from components.config_section import Section, Threshold
from components.errors import EdgepipeError

# The input size each architecture is built for when data.image.height/width are "auto". small_cnn: 48 px,
# measured on the generated `produce` folder (600 colour images): val accuracy 0.978 at 48 px and at 64 px,
# at 56 % of the compute; its int8 file and TFLite-Micro arena fit 256 KiB (bench/own_data.py).
# MobileNetV2: 96 px, the smallest ImageNet size of Keras' applications.
ARCHITECTURE_INPUT_SIZE = {"small_cnn": 48, "mobilenet_v2": 96}
# The MobileNetV2 widths and square input sizes Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)


class ImageSpec(Section):
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


class SplitSpec(Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42


class DataConfig(Section):
    raw_dir: Path = Path("data/raw")
    # When raw_dir holds no images, the bundled set written there: "digits" (sklearn's load_digits, for
    # classification), "scenes" (generated annotated scenes, for detection: components/tasks/detection/
    # scenes.py), "auto" (the task's), "none" (an error).
    bundled_if_empty: Literal["auto", "digits", "scenes", "none"] = "auto"
    image: ImageSpec = ImageSpec()
    split: SplitSpec = SplitSpec()
    # A file that is not a readable image: "error" lists every such file and stops; "skip" leaves them out
    # of training (listed in the prepare report and in MLflow); the data folder itself is never changed.
    on_bad_image: Literal["error", "skip"] = "error"


class ModelConfig(Section):
    name: str = Field("edgepipe-digits", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Not mobilenet_v3_small: tf-keras builds its hard-swish from TFOpLambda layers, which tfmot cannot
    # prune ("Please initialize `Prune` with a supported layer ... TFOpLambda"), so it cannot reach QAT.
    architecture: Literal["small_cnn", "mobilenet_v2"] = "small_cnn"
    width_multiplier: float = Field(1.0, gt=0, le=2.0, description="filters scale; MobileNetV2 alpha")
    # task detection: ssd (boxes: TFLite_Detection_PostProcess fused) | fomo (object centres on a stride-8
    # grid: Edge Impulse's FOMO, for cameras too small for SSD; OpenMV's ml module decodes it)
    head: Literal["ssd", "fomo"] = "ssd"
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


class AugmentConfig(Section):
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


class TransferConfig(Section):
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


class TrainConfig(Section):
    epochs: int = Field(60, ge=1, le=1000, description="at most; early stopping usually ends sooner")
    # Stop when val loss has not improved for this many epochs; the best epoch's weights are kept.
    patience: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(3e-3, gt=0, lt=1, description="peak; see schedule")
    # decoupled (AdamW-style): each step shrinks every weight by learning rate x this; 0 = none
    weight_decay: float = Field(0.0, ge=0, lt=1)
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


class PruneConfig(Section):
    target_sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    frequency: int = Field(10, ge=1, description="prune every N steps")
    min_steps: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="at least this many pruning steps: on a small dataset `epochs` grows until the cuts "
        "have steps to recover in (components/prune.py)",
    )
    clusters: int | None = Field(
        None,
        ge=2,
        le=256,
        description="weight clustering after pruning (tfmot, sparsity kept): each kernel keeps at most this "
        "many distinct values, and QAT preserves both (PCQAT); null: no clustering",
    )
    cluster_epochs: int = Field(2, ge=1, le=1000, description="fine-tuning epochs of the clustered model")


class QatConfig(Section):
    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0, lt=1)


class NmsConfig(Section):
    """The detector's post-processing, the same in every runtime (the fused TFLite op's attributes, the
    shared decoding of the ONNX and Keras outputs)."""

    # Low: COCO mAP integrates over every score; an app raises it (or reads only the confident boxes).
    score_threshold: Threshold = 0.05
    iou_threshold: Threshold = 0.5
    max_detections: int = Field(20, ge=1, le=100, description="per image, best first")


class FomoConfig(Section):
    """How a FOMO heatmap becomes objects and how they are scored (model.head: fomo)."""

    threshold: Threshold = Field(0.5, description="a cell is an object cell from this class score up")
    # a found centre matches an object of its class whose box centre is this close (fraction of the side)
    max_distance: Threshold = 0.1


class DetectionConfig(Section):
    """Read with `task: detection` only (components/tasks/detection)."""

    # How an image of another shape becomes the square input: stretch (every pixel used, shapes distorted)
    # or letterbox (aspect kept, grey bars as Ultralytics and OpenMV pad). Recorded in the metadata.
    resize: Literal["stretch", "letterbox"] = "stretch"
    nms: NmsConfig = NmsConfig()
    # The float detector must reach this COCO mAP@0.5 (model.head fomo: centroid F1) on the validation
    # split, or the run stops after training with a diagnosis (the counterpart of train.min_val_accuracy).
    min_val_map: Threshold = 0.25
    fomo: FomoConfig = FomoConfig()


class ExportConfig(Section):
    onnx_opset: int = Field(13, ge=13, le=21)
    representative_samples: int = Field(200, ge=1, le=100_000)


Task = Literal["classification", "detection"]
# What `auto` model settings are for each task: the classifier of the bundled digits, and a MobileNetV2
# detector whose int8 file (stride-16 and -32 heads, Conv_1 left out: model.FEATURE_LAYERS) fits 256 KiB.
# What `auto` (or an unset key) means for each task, by section.key. The classifier's are the settings
# the bundled digits were tuned with. A detector needs more steps than a classifier (anchor matching,
# focal loss): on the bundled scenes (280 training images) batch 32 for 60 epochs reached val mAP@0.5
# 0.29; batch 16: 0.51 and 0.50 (60 epochs, two seeds), 0.89 (80): it jumps late, so patience is long
# too. At the classifier's peak rate 0.003, scenes of another seed (11) reached only 0.55 in 100 epochs
# (0.895 in 200, which made `make run` 11 min 38 s); at 0.01 they reach 0.94 (best epoch 80) and the
# bundled scenes 0.94 (epoch 78) in 100 epochs, 218 s. Pruning in 108 steps lost 15 pp of mAP@0.5, in
# 216 (bench/detection.py) none. docs/figures.md has the runs.
TASK_DEFAULTS: dict[str, dict[str, object]] = {
    "classification": {
        "model.name": "edgepipe-digits",
        "model.architecture": "small_cnn",
        "model.width_multiplier": 1.0,
        "data.bundled_if_empty": "digits",
        "train.epochs": 60,
        "train.patience": 12,
        "train.batch_size": 32,
        "train.learning_rate": 0.003,
        "train.weight_decay": 0.0,
        "prune.batch_size": 32,
        "prune.min_steps": 100,
        "qat.batch_size": 32,
    },
    "detection": {
        "model.name": "edgepipe-detector",
        "model.architecture": "mobilenet_v2",
        "model.width_multiplier": 0.35,
        "data.bundled_if_empty": "scenes",
        "train.epochs": 100,
        "train.patience": 30,
        "train.batch_size": 16,
        "train.learning_rate": 0.01,
        "train.weight_decay": 0.005,
        "prune.batch_size": 16,
        "prune.min_steps": 200,
        "qat.batch_size": 16,
    },
}
TASK_BUNDLED_DATA = {task: values["data.bundled_if_empty"] for task, values in TASK_DEFAULTS.items()}


def _device_budgets(raw: dict, task: str) -> dict:
    """`target: auto` (or unset) becomes the task's device (components/targets.py: an OpenMV H7 for a
    classifier; a detector's int8 file, about 380 KB, needs an H7 Plus), and the `auto` gates that
    device's budgets: `gates.max_bytes.<format>` its model flash, `gates.max_arena_bytes` its arena,
    `gates.max_latency_ms` its latency."""
    from components.targets import DEFAULT_TARGETS, get_profile, profile_names  # not a stage dependency

    target = raw.get("target", "auto")
    if target == "auto":
        target = DEFAULT_TARGETS[task]
    # an unknown name is the `target` field's error alone: the gates take the task's device meanwhile
    profile = get_profile(target if target in profile_names() else DEFAULT_TARGETS[task])
    resolved = {**raw, "target": target}
    gates = raw.get("gates")
    if not isinstance(gates, dict):
        return resolved  # the section's own check says what is wrong
    gates = dict(gates)
    if isinstance(gates.get("max_bytes"), dict):
        sizes = {k: profile.flash_bytes if v == "auto" else v for k, v in gates["max_bytes"].items()}
        gates["max_bytes"] = {k: v for k, v in sizes.items() if v is not None}  # None: no limit
    if gates.get("max_arena_bytes") == "auto":
        gates["max_arena_bytes"] = profile.arena_bytes
    if gates.get("max_latency_ms") == "auto":
        gates["max_latency_ms"] = profile.latency_ms
    return {**resolved, "gates": gates}


class Params(Section):
    # classification: a folder per class; detection: annotated images (YOLO or COCO layout), SSD boxes
    task: Task = "classification"
    # the device the release must fit (components/targets.py, `edgepipe targets`); auto: the task's
    target: str = "openmv_h7"
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
    detection: DetectionConfig = DetectionConfig()

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        from components.targets import profile_names  # not a stage dependency

        # "auto" is left only when another section is invalid (_task_defaults stops early): that one's error
        if value != "auto" and value not in profile_names():
            raise ValueError(
                f"{value!r} is not a device profile; use auto or one of {', '.join(profile_names())} "
                "(`edgepipe targets` lists their budgets)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: object) -> object:
        """`auto` (or unset) settings of TASK_DEFAULTS become the task's, and `target` and the `auto` size
        gates the device's."""
        if not isinstance(raw, dict):
            return raw
        task = raw.get("task", "classification")
        if task not in TASK_DEFAULTS:
            return raw  # the field's own check names the allowed values
        resolved = dict(raw)
        for dotted, value in TASK_DEFAULTS[task].items():
            section, key = dotted.split(".")
            found = raw.get(section, {})
            if not isinstance(found, dict):
                return raw  # the section's own check says what is wrong
            if found.get(key, "auto") == "auto":
                resolved[section] = {**resolved.get(section, found), key: value}
        return _device_budgets(resolved, task)

    @model_validator(mode="after")
    def _task_fits(self) -> Params:
        if self.model.head == "fomo" and self.task != "detection":
            raise ValueError("model.head: fomo is a detection head; set task: detection or head: ssd")
        if self.task == "detection" and self.model.architecture != "mobilenet_v2":
            raise ValueError(
                "model.architecture: task detection has a MobileNetV2 backbone; set mobilenet_v2 or auto"
            )
        if self.task == "detection" and self.prune.clusters is not None:
            raise ValueError(
                "prune.clusters: weight clustering is built for classifiers only so far; set it to null "
                "for task detection"
            )
        bundled = self.data.bundled_if_empty
        if bundled not in ("none", TASK_BUNDLED_DATA[self.task]):
            raise ValueError(
                f"data.bundled_if_empty: {bundled} is not data for task {self.task}; use "
                f"{TASK_BUNDLED_DATA[self.task]}, auto or none"
            )
        return self

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


def written_defaults(sections: set[str]) -> dict:
    """The defaults of params.yaml `sections` as the file should hold them: what a task resolves (`target`,
    TASK_DEFAULTS' keys) stays `auto`, not the classifier's values a bare Params() resolves it to."""
    written = Params().model_dump(mode="json", include=sections)
    if "target" in written:
        written["target"] = "auto"
    for dotted in TASK_DEFAULTS["classification"]:
        section, key = dotted.split(".")
        if section in written:
            written[section][key] = "auto"
    return written


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
