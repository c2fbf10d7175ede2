"""The bundled detection set: annotated scenes generated deterministically from a seed, in the YOLO layout
a labelling tool exports (`images/`, `labels/*.txt`, `classes.txt`). It plays the role the digits play for
classification: what `task: detection` runs on when the data folder is empty, and what tests judge on.

Each scene is a photo-like background (gradient, noise, clutter blobs) of mixed size and aspect ratio with
0-3 road-sign-like objects of `synthetic.DATASETS["signs"]` (colour and shape tell the class) at random
places and sizes, overlapping little. A box is the exact extent of the painted object, read back from the
layer it was painted on. About 1 scene in 10 has no object (no label file, as the tools write it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components.synthetic import DATASETS, _background

# Three of the sign classes: enough to need class decisions, few enough for a tiny detector.
CLASSES = ("Stop", "Info", "Go")


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def render_scene(rng: np.random.Generator, classes: tuple[str, ...] = CLASSES) -> tuple[Image.Image, list]:
    """One scene and its objects as (class index, x0, y0, x1, y1) in pixels."""
    width = int(rng.integers(120, 321))
    height = int(np.clip(width * rng.uniform(0.6, 1.4), 96, 320))
    image = _background(width, height, rng).convert("RGBA")
    objects: list[tuple[int, float, float, float, float]] = []
    wanted = 0 if rng.random() < 0.1 else int(rng.integers(1, 4))
    for _ in range(wanted * 4):  # a few tries per object to find a place that overlaps little
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(classes)))
        radius = rng.uniform(0.09, 0.22) * min(width, height)
        centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        painter, _ = DATASETS["signs"][classes[label]]
        painter(ImageDraw.Draw(layer), centre, radius, rng)
        box = layer.getchannel("A").getbbox()
        if box is None or any(_overlap(box, other[1:]) > 0.25 for other in objects):
            continue
        image.alpha_composite(layer)
        objects.append((label, *map(float, box)))
    image = image.convert("RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image, objects


def write_detection_set(root: Path, images: int = 300, seed: int = 0) -> dict[str, int]:
    """Write `images` scenes as `root/images/scene_NNNN.jpg|png`, their YOLO labels and classes.txt;
    returns the number of objects per class."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(CLASSES, 0)
    for i in range(images):
        image, objects = render_scene(rng)
        name = f"scene_{i:04d}"
        if i % 2:
            image.save(root / "images" / f"{name}.jpg", quality=int(rng.integers(80, 96)))
        else:
            image.save(root / "images" / f"{name}.png")
        if not objects:
            continue  # no label file: an image with no objects
        w, h = image.size
        lines = [
            f"{label} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
            for label, x0, y0, x1, y1 in objects
        ]
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        for label, *_ in objects:
            counts[CLASSES[label]] += 1
    return counts
