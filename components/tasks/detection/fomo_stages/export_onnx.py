"""export_onnx (FOMO): the pruned FOMO detector as ONNX float and int8 (heatmap output), with the detector's
metadata: what a user needs to decode the heatmap without edgepipe."""

from __future__ import annotations

from components.atomic import write_json
from components.config import Params
from components.export_onnx import export_onnx
from components.formats import by_container
from components.model import load_model
from components.paths import ProjectPaths
from components.tasks.detection.fomo import STRIDE
from components.tasks.detection.prepared import resize_mode


def fomo_metadata(params: Params, paths: ProjectPaths) -> dict:
    return {
        "task": "detection",
        "head": "fomo",
        "outputs": ["heatmap (H/8, W/8, classes + 1): softmax per cell, channel 0 background"],
        "stride": STRIDE,
        "resize": resize_mode(paths.prepared_dir),
        "threshold": params.detection.fomo.threshold,
    }


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    sizes = export_onnx(
        params.export,
        paths.prepared_dir,
        load_model(paths.pruned_model),
        paths.export_dir,
        by_container("onnx", "detection", "fomo"),
        fomo_metadata(params, paths),
    )
    write_json(paths.metrics_file("export_onnx"), {"bytes": sizes})
    return sizes
