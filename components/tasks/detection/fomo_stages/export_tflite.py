"""export_tflite (FOMO): the FOMO rows of the format registry (the classifier's conversions: float32,
float16, full-int8 PTQ and QAT with int8 input and heatmap output), with the detector's metadata."""

from __future__ import annotations

from components.atomic import write_json
from components.config import Params
from components.dataset import read_dataset_info
from components.export_tflite import representative_samples, write_format
from components.formats import by_container
from components.model import load_model
from components.paths import ProjectPaths
from components.qat import load_qat_model
from components.tasks.detection.fomo_stages.export_onnx import fomo_metadata


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    sources = {
        "float": load_model(paths.float_model),
        "pruned": load_model(paths.pruned_model),
        "qat": load_qat_model(paths.pruned_model, paths.qat_weights),
    }
    representative = representative_samples(paths.prepared_dir, params.export.representative_samples)
    meta = read_dataset_info(paths.prepared_dir).metadata() | fomo_metadata(params, paths)
    sizes = {
        fmt.name: write_format(fmt, sources[fmt.source], representative, meta, paths.export_dir)
        for fmt in by_container("tflite", "detection", "fomo")
    }
    write_json(paths.metrics_file("export_tflite"), {"bytes": sizes})
    return sizes
