"""The data a project starts with when its data folder is empty: each task's bundled set, written by
`ingest` (before DVC tracks the folder). Digits for classification (sklearn ships them); generated
annotated scenes for detection (components/tasks/detection/scenes.py, deterministic)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from components.config import DataConfig
from components.errors import EdgepipeError
from components.image_folder import has_images

log = logging.getLogger(__name__)

BUNDLED_SCENES = 400  # images: enough for mAP@0.5 above 0.8 (bench/detection.py), small enough for make run


def write_bundled_digits(raw_dir: Path) -> int:
    """Write sklearn's bundled 8x8 digits (1,797 images, shipped with scikit-learn) as PNG class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        class_dir = raw_dir / str(target)
        class_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).save(class_dir / f"digit_{index:04d}.png")
    log.info("wrote %d bundled digit images to %s", len(digits.images), raw_dir)
    return len(digits.images)


def write_bundled_scenes(raw_dir: Path) -> int:
    """Write the generated annotated scenes (YOLO layout, seed 0)."""
    from components.tasks.detection.scenes import write_detection_set

    counts = write_detection_set(raw_dir, images=BUNDLED_SCENES, seed=0)
    log.info("wrote %d bundled scenes (%s objects) to %s", BUNDLED_SCENES, counts, raw_dir)
    return BUNDLED_SCENES


LAYOUT_HINTS = {
    "digits": "{raw}/<class name>/*.png (or .jpg/.jpeg/.bmp)",
    "scenes": "{raw}/images/ with YOLO labels/*.txt and classes.txt, or a COCO annotations.json",
}


def ensure_raw_data(config: DataConfig, raw_dir: Path) -> Path:
    """Make sure raw_dir holds images: write the bundled set if it is empty and that is allowed."""
    if raw_dir.exists() and not raw_dir.is_dir():
        raise EdgepipeError(
            f"{raw_dir}: is a file, not a folder. Set data.raw_dir in params.yaml to the folder of your "
            "images (one subfolder per class, or images/ and labels/ for detection)."
        )
    if has_images(raw_dir):
        return raw_dir
    if config.bundled_if_empty == "none":
        raise EdgepipeError(
            f"{raw_dir}: no images found. Put images in {LAYOUT_HINTS['digits'].format(raw=raw_dir)} "
            f"(detection: {LAYOUT_HINTS['scenes'].format(raw=raw_dir)}), or set data.bundled_if_empty: "
            "auto in params.yaml to use the bundled dataset."
        )
    if config.bundled_if_empty == "scenes":
        write_bundled_scenes(raw_dir)
    else:
        write_bundled_digits(raw_dir)
    return raw_dir
