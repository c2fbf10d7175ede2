"""The pipeline's steps as DVC stages: what each reads (params sections, data), what it writes, and the
module whose `run_stage(params, paths)` does the work.

This table is the single definition used by the Prefect flow (`dvc status` decides what runs, `dvc commit`
records it), by `edgepipe stage NAME` (the command in dvc.yaml) and by `edgepipe dvc-yaml`, which writes
dvc.yaml; a test checks that the committed dvc.yaml is what this table generates. A stage's code
dependencies are derived from its module's imports (components.code_deps), never listed by hand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.atomic import read_json
from components.code_deps import code_dependencies
from components.config import Params, written_defaults
from components.errors import EdgepipeError
from components.formats import RELEASE_FORMAT, by_container, get_format
from components.hashing import file_digest
from components.paths import ProjectPaths
from components.results import VAL_SCORE_COLUMN, VAL_SCORE_TITLE

RAW_DATA_DEP = "${data.raw_dir}"  # DVC interpolates it from params.yaml


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # its run_stage(params, paths) does the work; its imports are the code dependencies
    params: tuple[str, ...]  # params.yaml sections the step reads
    deps: Callable[[ProjectPaths], tuple[Path, ...]]  # data and models it reads
    outs: Callable[[ProjectPaths], tuple[Path, ...]]
    metrics: Callable[[ProjectPaths], Path]
    # DVC plot files the step writes (not cached), with their `dvc plots` properties
    plots: Callable[[ProjectPaths], dict[Path, dict]] = field(default=lambda p: {})
    # run() takes `map_fn` for its independent per-format work, which the flow hands to a Prefect task runner
    fans_out: bool = False
    # Files that params.yaml names and dvc.yaml cannot list (they may not exist, e.g. model.pretrained). The
    # step records each one's sha256 in its metrics (`<name>: {sha256: ...}`); the flow re-runs it when one
    # changed.
    named_inputs: Callable[[Params, ProjectPaths], dict[str, Path]] = field(default=lambda params, p: {})
    # the module that does this step for `task: detection` (components/tasks/detection/stages), and for
    # its FOMO head (model.head: fomo; .../fomo_stages); None: the module before it does it
    detection_module: str | None = None
    fomo_module: str | None = None

    @property
    def code(self) -> tuple[str, ...]:
        """Source files (relative to the project root) whose change re-runs the step, for either task (one
        dvc.yaml serves both)."""
        modules = [m for m in (self.module, self.detection_module, self.fomo_module) if m]
        return tuple(sorted({path for module in modules for path in code_dependencies(module)}))

    def module_for(self, params: Params) -> str:
        if params.task != "detection":
            return self.module
        if params.model.head == "fomo" and self.fomo_module:
            return self.fomo_module
        return self.detection_module or self.module

    def run(self, params: Params, paths: ProjectPaths, **kwargs) -> dict:
        return importlib.import_module(self.module_for(params)).run_stage(params, paths, **kwargs)

    def named_inputs_unchanged(self, params: Params, paths: ProjectPaths) -> bool:
        """True when every named input has the sha256 the step's metrics recorded when it last ran."""
        named = self.named_inputs(params, paths)
        if not named:
            return True
        recorded = read_json(self.metrics(paths)) if self.metrics(paths).is_file() else {}
        return all(
            path.is_file() and recorded.get(name, {}).get("sha256") == file_digest(path)
            for name, path in named.items()
        )


def _pretrained_file(params: Params, paths: ProjectPaths) -> dict[str, Path]:
    """model.pretrained when it is a file of the user's (imagenet weights are fixed by their name)."""
    if params.model.pretrained in ("none", "imagenet"):
        return {}
    return {"pretrained": paths.root / params.model.pretrained}


def _detection(step: str) -> str:
    return f"components.tasks.detection.stages.{step}"


def _fomo(step: str) -> str:
    return f"components.tasks.detection.fomo_stages.{step}"


def _export_files(container: str) -> Callable[[ProjectPaths], tuple[Path, ...]]:
    return lambda p: tuple(fmt.path(p.export_dir) for fmt in by_container(container))


def _all_exports(p: ProjectPaths) -> tuple[Path, ...]:
    return _export_files("tflite")(p) + _export_files("onnx")(p)


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        "components.prepare",
        # model.architecture decides an `auto` input size (DVC needs every section a stage reads written
        # in params.yaml: check_params_sections); `task` decides what the data is
        ("task", "data", "model", "detection"),
        detection_module=_detection("prepare"),
        deps=lambda p: (Path(RAW_DATA_DEP),),
        outs=lambda p: (p.prepared_dir,),
        metrics=lambda p: p.metrics_file("prepare"),
    ),
    Stage(
        "train",
        "components.train",
        ("model", "train", "detection"),
        detection_module=_detection("train"),
        fomo_module=_fomo("train"),
        deps=lambda p: (p.prepared_dir,),
        named_inputs=_pretrained_file,
        outs=lambda p: (p.float_model,),
        metrics=lambda p: p.metrics_file("train"),
        plots=lambda p: {
            p.train_history: {"x": "epoch", "y": VAL_SCORE_COLUMN, "title": f"Float model: {VAL_SCORE_TITLE}"}
        },
    ),
    Stage(
        "prune",
        "components.prune",
        ("prune",),
        detection_module=_detection("prune"),
        fomo_module=_fomo("prune"),
        deps=lambda p: (p.prepared_dir, p.float_model),
        outs=lambda p: (p.pruned_model,),
        metrics=lambda p: p.metrics_file("prune"),
        plots=lambda p: {
            p.history_file("prune"): {
                "x": "epoch",
                "y": VAL_SCORE_COLUMN,
                "title": f"Pruning: {VAL_SCORE_TITLE}",
            }
        },
    ),
    Stage(
        "qat",
        "components.qat",
        ("qat", "prune"),  # prune.clusters: PCQAT instead of PQAT
        detection_module=_detection("qat"),
        fomo_module=_fomo("qat"),
        deps=lambda p: (p.prepared_dir, p.pruned_model),
        outs=lambda p: (p.qat_weights,),
        metrics=lambda p: p.metrics_file("qat"),
        plots=lambda p: {
            p.history_file("qat"): {
                "x": "epoch",
                "y": VAL_SCORE_COLUMN,
                "title": f"Quantization-aware fine-tuning: {VAL_SCORE_TITLE}",
            }
        },
    ),
    Stage(
        "export_tflite",
        "components.export_tflite",
        ("export", "detection", "prune"),  # prune.clusters: how the QAT model is rebuilt
        detection_module=_detection("export_tflite"),
        fomo_module=_fomo("export_tflite"),
        deps=lambda p: (p.prepared_dir, p.float_model, p.pruned_model, p.qat_weights),
        outs=_export_files("tflite"),
        metrics=lambda p: p.metrics_file("export_tflite"),
    ),
    Stage(
        "export_onnx",
        "components.export_onnx",
        ("export",),
        detection_module=_detection("export_onnx"),
        fomo_module=_fomo("export_onnx"),
        deps=lambda p: (p.prepared_dir, p.pruned_model),
        outs=_export_files("onnx"),
        metrics=lambda p: p.metrics_file("export_onnx"),
    ),
    Stage(
        "mcu",
        "components.mcu",
        ("prune",),  # prune.clusters: the LUT-compressed file, checked on the test split
        detection_module=_detection("mcu"),
        fomo_module=_fomo("mcu"),
        deps=lambda p: (p.prepared_dir, get_format(RELEASE_FORMAT).path(p.export_dir)),
        outs=lambda p: (p.mcu_dir,),
        metrics=lambda p: p.metrics_file("mcu"),
    ),
    Stage(
        "validate",
        "components.validate",
        # target: the device whose budgets fill the `auto` size gates; prune.clusters: how QAT was wrapped
        ("target", "gates", "detection", "prune"),
        detection_module=_detection("validate"),
        fomo_module=_fomo("validate"),
        deps=lambda p: (p.prepared_dir, p.float_model, p.pruned_model, p.qat_weights, *_all_exports(p)),
        outs=lambda p: (),
        metrics=lambda p: p.validation_file,
        fans_out=True,
        plots=lambda p: {
            p.release_predictions: {
                "template": "confusion",
                "x": "actual",
                "y": "predicted",
                "title": f"{RELEASE_FORMAT} in LiteRT: confusion on the test split",
            }
        },
    ),
    Stage(
        "report",
        "components.report",
        (),
        detection_module=_detection("report"),
        fomo_module=_fomo("report"),
        deps=lambda p: (
            p.prepared_dir,  # a detector's report draws test images
            p.validation_file,
            p.release_predictions,
            p.train_history,
            *(p.metrics_file(name) for name in ("train", "prune", "qat", "mcu")),
        ),
        outs=lambda p: (p.reports_dir,),
        metrics=lambda p: p.metrics_file("report"),
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(name)


def dvc_yaml(paths: ProjectPaths) -> dict:
    """dvc.yaml as a dict: one stage per step with exact deps, params, outs and metrics."""
    stages = {}
    for stage in STAGES:
        deps = list(stage.code)
        deps += [RAW_DATA_DEP if p == Path(RAW_DATA_DEP) else paths.rel(p) for p in stage.deps(paths)]
        entry: dict = {"cmd": f"edgepipe stage {stage.name}", "deps": deps}
        if stage.params:
            entry["params"] = list(stage.params)
        if stage.outs(paths):
            entry["outs"] = [paths.rel(p) for p in stage.outs(paths)]
        entry["metrics"] = [{paths.rel(stage.metrics(paths)): {"cache": False}}]
        if stage.plots(paths):
            plots = stage.plots(paths).items()
            entry["plots"] = [{paths.rel(f): {"cache": False, **props}} for f, props in plots]
        stages[stage.name] = entry
    return {"stages": stages}


def check_params_sections(params_file: Path) -> None:
    """Every params.yaml section a stage reads is written in the file. DVC records those sections (dvc.yaml
    `params:`) and stops with MissingParamsError when one is absent, which it finds only when it records the
    stage, after the stage ran; pydantic's defaults would have let the run start. Checked before anything
    runs: the message names each missing section, the stages that read it, and its defaults to paste."""
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    readers: dict[str, list[str]] = {}
    for stage in STAGES:
        for section in stage.params:
            readers.setdefault(section, []).append(stage.name)
    missing = [section for section in readers if section not in raw]
    if not missing:
        return
    needed = "; ".join(f"{section} (read by {', '.join(readers[section])})" for section in missing)
    defaults = yaml.safe_dump(written_defaults(set(missing)), sort_keys=False)
    raise EdgepipeError(
        f"{params_file}: missing section(s) {needed}. DVC records every section a step reads, so each "
        f"must be written in the file. Nothing ran. Add these (the defaults) and run again:\n\n{defaults}"
    )
