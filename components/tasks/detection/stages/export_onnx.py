"""export_onnx (detection): the pruned detector with its sigmoid (model.with_scores) as ONNX float and int8,
the raw outputs (box encodings, class scores) that the shared decoding turns into detections. The
metadata carries what a user needs to decode them without edgepipe: the anchors, the box coder's scales,
the NMS settings and the resize."""

from __future__ import annotations

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.export_onnx import export_onnx
from components.formats import by_container
from components.model import load_model
from components.paths import ProjectPaths
from components.tasks.detection.export import detector_metadata
from components.tasks.detection.model import anchors_for, with_scores


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    info = read_dataset_info(paths.prepared_dir)
    metadata = detector_metadata(paths.prepared_dir, params.detection.nms) | {
        "outputs": ["box_encodings", "class_scores"],
        "anchors": anchors_for(info.input_shape).round(6).tolist(),
    }
    sizes = export_onnx(
        params.export,
        paths.prepared_dir,
        with_scores(load_model(paths.pruned_model)),
        paths.export_dir,
        by_container("onnx", "detection"),
        metadata,
    )
    write_json(paths.metrics_file("export_onnx"), {"bytes": sizes})
    return sizes
