"""The pipeline's steps as DVC stages: what each reads (params sections, files), what it writes, and the
adapter that hands it only its own config section.

This table is the single definition used by the Prefect flow (cache keys, `dvc commit`), by
`edgepipe stage NAME` (the command in dvc.yaml) and by `edgepipe dvc-yaml`, which writes dvc.yaml;
a test checks that the committed dvc.yaml is what this table generates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from components.atomic import read_json, write_json
from components.config import Params
from components.formats import RELEASE_FORMAT, by_container, get_format
from components.hashing import file_digest
from components.paths import ProjectPaths

COMMON_CODE = ("components/config.py", "components/dataset.py")
RAW_DATA_DEP = "${data.raw_dir}"  # DVC interpolates it from params.yaml


@dataclass(frozen=True)
class Stage:
    name: str
    params: tuple[str, ...]  # params.yaml sections the step reads
    code: tuple[str, ...]  # source files; a change re-runs the step
    deps: Callable[[ProjectPaths], tuple[Path, ...]]
    outs: Callable[[ProjectPaths], tuple[Path, ...]]
    metrics: Callable[[ProjectPaths], Path]
    run: Callable[..., dict]  # (params, paths), plus map_fn when fans_out
    # DVC plot files the step writes (not cached), with their `dvc plots` properties
    plots: Callable[[ProjectPaths], dict[Path, dict]] = field(default=lambda p: {})
    # run() takes `map_fn` for its independent per-format work, which the flow hands to a Prefect task runner
    fans_out: bool = False
    # Files that params.yaml names and dvc.yaml cannot list (they may not exist, e.g. model.pretrained). The
    # step records each one's sha256 in its metrics (`<name>: {sha256: ...}`); the flow re-runs it when one
    # changed, and they are part of its Prefect cache key.
    named_inputs: Callable[[Params, ProjectPaths], dict[str, Path]] = field(default=lambda params, p: {})

    def dep_paths(self, paths: ProjectPaths, params: Params) -> tuple[Path, ...]:
        """Every file or folder whose content decides this step's result, raw data resolved."""
        code = tuple(paths.root / c for c in (*COMMON_CODE, *self.code))
        data = tuple(paths.raw_dir(params.data) if p == Path(RAW_DATA_DEP) else p for p in self.deps(paths))
        return code + data + tuple(self.named_inputs(params, paths).values())

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


def _prepare(params: Params, paths: ProjectPaths) -> dict:
    from components.prepare import prepare

    summary = prepare(
        params.data,
        paths.raw_dir(params.data),
        paths.prepared_dir,
        params.model.architecture,
        colour_model=params.model.pretrained == "imagenet",
    )
    write_json(
        paths.metrics_file("prepare"),
        {
            "counts": summary["counts"],
            "classes": len(summary["classes"]),
            "skipped": summary["skipped"],
            **{f"image_{key}": summary["image"][key] for key in ("height", "width", "channels")},
            "image_chosen": summary["image_chosen"],
        },
    )
    return summary


def _train(params: Params, paths: ProjectPaths) -> dict:
    from components.pretrained import weights_file
    from components.train import train

    return train(
        params.model,
        params.train,
        paths.prepared_dir,
        paths.float_model,
        paths.metrics_file("train"),
        paths.train_history,
        pretrained_file=weights_file(params.model, params.data.image, paths.root),
    )


def _pretrained_file(params: Params, paths: ProjectPaths) -> dict[str, Path]:
    """model.pretrained when it is a file of the user's (imagenet weights are fixed by their name)."""
    if params.model.pretrained in ("none", "imagenet"):
        return {}
    return {"pretrained": paths.root / params.model.pretrained}


def _prune(params: Params, paths: ProjectPaths) -> dict:
    from components.prune import prune

    return prune(
        params.prune,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.metrics_file("prune"),
        paths.history_file("prune"),
    )


def _qat(params: Params, paths: ProjectPaths) -> dict:
    from components.qat import qat

    return qat(
        params.qat,
        paths.prepared_dir,
        paths.pruned_model,
        paths.qat_weights,
        paths.metrics_file("qat"),
        paths.history_file("qat"),
    )


def _export_tflite(params: Params, paths: ProjectPaths) -> dict:
    from components.export_tflite import export_tflite

    sizes = export_tflite(
        params.export,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.qat_weights,
        paths.export_dir,
    )
    write_json(paths.metrics_file("export_tflite"), {"bytes": sizes})
    return sizes


def _export_onnx(params: Params, paths: ProjectPaths) -> dict:
    from components.export_onnx import export_onnx

    sizes = export_onnx(params.export, paths.prepared_dir, paths.pruned_model, paths.export_dir)
    write_json(paths.metrics_file("export_onnx"), {"bytes": sizes})
    return sizes


def _validate(params: Params, paths: ProjectPaths, map_fn: Callable = map) -> dict:
    from components.validate import validate

    return validate(
        params.gates,
        paths.prepared_dir,
        paths.float_model,
        paths.pruned_model,
        paths.qat_weights,
        paths.export_dir,
        paths.validation_file,
        paths.release_predictions,
        map_fn,
    )


def _mcu(params: Params, paths: ProjectPaths) -> dict:
    from components.export_tflite import read_tflite_metadata
    from components.mcu import package_for_mcu

    release = get_format(RELEASE_FORMAT).path(paths.export_dir)
    summary = package_for_mcu(release, read_tflite_metadata(release), paths.mcu_dir)
    write_json(paths.metrics_file("mcu"), summary)
    return summary


def _report(params: Params, paths: ProjectPaths) -> dict:
    from components.report import write_report

    summary = write_report(
        read_json(paths.validation_file),
        {name: read_json(paths.metrics_file(name)) for name in ("train", "prune", "qat", "mcu")},
        paths.train_history,
        paths.release_predictions,
        paths.reports_dir,
    )
    write_json(paths.metrics_file("report"), summary)
    return summary


def _export_files(container: str) -> Callable[[ProjectPaths], tuple[Path, ...]]:
    return lambda p: tuple(fmt.path(p.export_dir) for fmt in by_container(container))


def _all_exports(p: ProjectPaths) -> tuple[Path, ...]:
    return _export_files("tflite")(p) + _export_files("onnx")(p)


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        ("data", "model"),  # model.architecture decides an `auto` input size (DVC needs the key written;
        # a whole section may be left out of params.yaml, a key in it may not)
        ("components/prepare.py",),
        deps=lambda p: (Path(RAW_DATA_DEP),),
        outs=lambda p: (p.prepared_dir,),
        metrics=lambda p: p.metrics_file("prepare"),
        run=_prepare,
    ),
    Stage(
        "train",
        ("model", "train"),
        ("components/train.py", "components/model.py", "components/pretrained.py"),
        deps=lambda p: (p.prepared_dir,),
        named_inputs=_pretrained_file,
        outs=lambda p: (p.float_model,),
        metrics=lambda p: p.metrics_file("train"),
        run=_train,
        plots=lambda p: {
            p.train_history: {"x": "epoch", "y": "val_accuracy", "title": "Float model: validation accuracy"}
        },
    ),
    Stage(
        "prune",
        ("prune",),
        ("components/prune.py", "components/model.py"),
        deps=lambda p: (p.prepared_dir, p.float_model),
        outs=lambda p: (p.pruned_model,),
        metrics=lambda p: p.metrics_file("prune"),
        run=_prune,
        plots=lambda p: {
            p.history_file("prune"): {
                "x": "epoch",
                "y": "val_accuracy",
                "title": "Pruning: validation accuracy",
            }
        },
    ),
    Stage(
        "qat",
        ("qat",),
        ("components/qat.py", "components/model.py"),
        deps=lambda p: (p.prepared_dir, p.pruned_model),
        outs=lambda p: (p.qat_weights,),
        metrics=lambda p: p.metrics_file("qat"),
        run=_qat,
        plots=lambda p: {
            p.history_file("qat"): {
                "x": "epoch",
                "y": "val_accuracy",
                "title": "Quantization-aware fine-tuning: validation accuracy",
            }
        },
    ),
    Stage(
        "export_tflite",
        ("export",),
        (
            "components/export_tflite.py",
            "components/formats.py",
            "components/model.py",
            "components/qat.py",
        ),
        deps=lambda p: (p.prepared_dir, p.float_model, p.pruned_model, p.qat_weights),
        outs=_export_files("tflite"),
        metrics=lambda p: p.metrics_file("export_tflite"),
        run=_export_tflite,
    ),
    Stage(
        "export_onnx",
        ("export",),
        (
            "components/export_onnx.py",
            "components/export_tflite.py",
            "components/formats.py",
            "components/model.py",
        ),
        deps=lambda p: (p.prepared_dir, p.pruned_model),
        outs=_export_files("onnx"),
        metrics=lambda p: p.metrics_file("export_onnx"),
        run=_export_onnx,
    ),
    Stage(
        "mcu",
        (),
        ("components/mcu.py", "components/runtimes.py", "components/export_tflite.py"),
        deps=lambda p: (get_format(RELEASE_FORMAT).path(p.export_dir),),
        outs=lambda p: (p.mcu_dir,),
        metrics=lambda p: p.metrics_file("mcu"),
        run=_mcu,
    ),
    Stage(
        "validate",
        ("gates",),
        (
            "components/validate.py",
            "components/runtimes.py",
            "components/formats.py",
            "components/model.py",
            "components/qat.py",
        ),
        deps=lambda p: (p.prepared_dir, p.float_model, p.pruned_model, p.qat_weights, *_all_exports(p)),
        outs=lambda p: (),
        metrics=lambda p: p.validation_file,
        run=_validate,
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
        (),
        ("components/report.py",),
        deps=lambda p: (
            p.validation_file,
            p.release_predictions,
            p.train_history,
            *(p.metrics_file(name) for name in ("train", "prune", "qat", "mcu")),
        ),
        outs=lambda p: (p.reports_dir,),
        metrics=lambda p: p.metrics_file("report"),
        run=_report,
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
        deps = [*COMMON_CODE, *stage.code]
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
