"""export_tflite (detection): the detection rows of the format registry (float32, float16 from the pruned
detector, int8 PTQ from the float one, int8 from the pruned QAT one), each with the post-processing
fused as TFLite_Detection_PostProcess and its four outputs in the standard order (boxes, classes,
scores, count), the metadata embedded as for the classifier."""

from __future__ import annotations

import logging

from components.atomic import atomic_path, write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.export_tflite import convert, embed_metadata, representative_samples
from components.formats import by_container
from components.model import load_model
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.tasks.detection.export import detection_function, detector_metadata, standard_output_order
from components.tasks.detection.model import anchors_for
from components.tasks.detection.prepared import nms_settings

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    info = read_dataset_info(paths.prepared_dir)
    anchors, nms = anchors_for(info.input_shape), nms_settings(params.detection.nms)
    sources = {
        "float": load_model(paths.float_model),
        "pruned": load_model(paths.pruned_model),
        "qat": load_qat_model(paths.pruned_model, paths.qat_weights),
    }
    representative = representative_samples(paths.prepared_dir, params.export.representative_samples)
    metadata = detector_metadata(paths.prepared_dir, params.detection.nms) | {
        "outputs": ["boxes", "classes", "scores", "count"],
    }
    sizes = {}
    for fmt in by_container("tflite", "detection"):
        model = sources[fmt.source]
        function = detection_function(model, anchors, info.num_classes, nms)
        converted = standard_output_order(convert(model, fmt.converter, representative, function))
        data = embed_metadata(converted, {**metadata, "format": fmt.name})
        with atomic_path(fmt.path(paths.export_dir)) as tmp:
            tmp.write_bytes(data)
        sizes[fmt.name] = len(data)
        log.info("wrote %s (%d bytes)", fmt.path(paths.export_dir), len(data))
    write_json(paths.metrics_file("export_tflite"), {"bytes": sizes})
    return sizes
