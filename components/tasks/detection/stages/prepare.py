"""prepare (detection): the annotated folder (YOLO or COCO, components/tasks/detection/annotations.py)
checked, split by image, each image resized to the input (stretch or letterbox) with its boxes mapped
along, and written as components/tasks/detection/prepared.py describes."""

from __future__ import annotations

import logging

from components.atomic import atomic_path, write_json
from components.config import ARCHITECTURE_INPUT_SIZE, Params
from components.errors import EdgepipeError
from components.hashing import file_digest
from components.paths import ProjectPaths
from components.tasks.detection.annotations import read_detection_set
from components.tasks.detection.data import load_split, split_images
from components.tasks.detection.prepared import save_split

log = logging.getLogger(__name__)


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    data, raw_dir = params.data, paths.raw_dir(params.data)
    if data.image.channels == 1:
        raise EdgepipeError(
            "data.image.channels: 1 is not supported for task detection (the detector reads RGB); "
            "set 3 or auto."
        )
    found = read_detection_set(raw_dir, data.on_bad_image)
    for problem in found.problems:
        log.warning("skipped %s: %s%s", problem.path, problem.kind, problem.detail)
    size = ARCHITECTURE_INPUT_SIZE[params.model.architecture]
    image = data.image.model_dump(mode="json") | {
        "height": size if data.image.height == "auto" else data.image.height,
        "width": size if data.image.width == "auto" else data.image.width,
        "channels": 3,
    }
    chosen = {
        key: f"auto: {reason}"
        for key, reason in (
            ("height", f"{params.model.architecture} input size"),
            ("width", f"{params.model.architecture} input size"),
            ("channels", "the detector reads RGB"),
        )
        if getattr(data.image, key) == "auto"
    }
    by_split = split_images(found.images, data.split.val_fraction, data.split.test_fraction, data.split.seed)
    resize = params.detection.resize
    counts = {name: len(items) for name, items in by_split.items()}
    manifest = {
        "task": "detection",
        "layout_read": found.layout,
        "classes": found.classes,
        "image": image,
        "resize": resize,
        "image_chosen": chosen,
        "layout": "NHWC",
        "normalization": "x = (pixel / 255 - mean) / std",
        "counts": counts,
        "class_counts": found.objects_per_class(),  # objects, not images
        "objects": {name: sum(len(i.labels) for i in items) for name, items in by_split.items()},
        "skipped": [
            {"path": p.path.relative_to(raw_dir).as_posix(), "problem": p.kind + p.detail}
            for p in found.problems
        ],
        "files": [
            {
                "path": item.path.relative_to(raw_dir).as_posix(),
                "objects": len(item.labels),
                "split": name,
                "sha256": file_digest(item.path),
            }
            for name, items in by_split.items()
            for item in items
        ],
    }
    with atomic_path(paths.prepared_dir) as tmp:
        tmp.mkdir()
        for name, items in by_split.items():
            save_split(tmp / f"{name}.npz", load_split(items, image["height"], image["width"], resize))
        write_json(tmp / "manifest.json", manifest)
    log.info(
        "prepared %d annotated images (%s layout, %d classes, objects %s) at %dx%d (%s): %s",
        len(found.images),
        found.layout,
        len(found.classes),
        manifest["class_counts"],
        image["height"],
        image["width"],
        resize,
        counts,
    )
    metrics = {
        "counts": counts,
        "classes": len(found.classes),
        "skipped": len(found.problems),
        **{f"image_{key}": image[key] for key in ("height", "width", "channels")},
        "image_chosen": chosen,
        "objects": manifest["objects"],
        "resize": resize,
    }
    write_json(paths.metrics_file("prepare"), metrics)
    return {"classes": found.classes, "counts": counts, "image": image, "image_chosen": chosen} | {
        "skipped": len(found.problems)
    }
