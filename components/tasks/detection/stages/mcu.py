"""mcu (detection): the release int8 detector as the microcontroller package (components/tasks/detection/
mcu.py): C array, header with the four outputs, TFLite-Micro arena, OpenMV main.py that draws boxes."""

from __future__ import annotations

from components.atomic import write_json
from components.config import Params
from components.formats import RELEASE_FORMAT, get_format
from components.paths import ProjectPaths
from components.tasks.detection.mcu import package_detector_for_mcu
from components.tflite_metadata import read_tflite_metadata


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    release = get_format(RELEASE_FORMAT, "detection").path(paths.export_dir)
    summary = package_detector_for_mcu(release, read_tflite_metadata(release), paths.mcu_dir)
    write_json(paths.metrics_file("mcu"), summary)
    return summary
