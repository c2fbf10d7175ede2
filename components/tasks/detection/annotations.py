"""Reading a folder of annotated images, in the layouts labelling tools export, detected automatically:

- YOLO text (Label Studio, CVAT, Roboflow): `images/`, `labels/<image stem>.txt` with one `class cx cy w h`
  line per object (normalised to the image), class names in `classes.txt` or in `data.yaml`'s `names`;
- COCO JSON: `images/` and one `annotations.json` (`images`, `annotations` with `bbox` [x, y, w, h] in
  pixels, `categories`).

Images of any size and aspect ratio. An image without a label file (YOLO) or without annotations (COCO) has
no objects. Every problem is collected and reported at once, each kind with its fix, as the classification
data check does; with `data.on_bad_image: skip` the images that have one are left out and listed instead.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from components.errors import EdgepipeError
from components.image_folder import IMAGE_SUFFIXES, UNREADABLE, DataProblem, describe_problems

# A box may overshoot the image by this fraction of its side (labelling tools round); it is clipped. More is
# a problem.
OVERSHOOT = 0.01

PROBLEM_FIXES = {
    "not a readable image": "Delete or replace the file.",
    "empty (0-byte) file": "Delete it or replace it with a valid image.",
    "label file with no image": "Add the image or delete the label file.",
    "label line is not `class cx cy w h`": "Fix the line: five numbers, class id then the normalised box.",
    "unknown class id": "Use an id of the class list, or add the class to it.",
    "box outside the image": "Fix the box: it must lie inside the image.",
    "box with zero area": "Delete the box or give it a width and a height.",
    "annotation of an image that is not in images/": "Add the image or delete its annotations.",
}


@dataclass(frozen=True)
class AnnotatedImage:
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in pixels
    labels: np.ndarray  # (N,) int64 class index


@dataclass
class DetectionSet:
    layout: str  # "yolo" or "coco"
    classes: list[str]
    images: list[AnnotatedImage]
    problems: list[DataProblem] = field(default_factory=list)

    def objects_per_class(self) -> dict[str, int]:
        counts = np.bincount(
            np.concatenate([img.labels for img in self.images] or [np.zeros(0, np.int64)]),
            minlength=len(self.classes),
        )
        return dict(zip(self.classes, map(int, counts), strict=True))


def is_detection_folder(root: Path) -> bool:
    return (root / "images").is_dir() and ((root / "labels").is_dir() or _coco_file(root) is not None)


def read_detection_set(root: Path, on_bad_image: str = "error") -> DetectionSet:
    """Read and check `root`. Raises one EdgepipeError listing every problem (with on_bad_image "error"),
    or leaves the images that have one out (with "skip": `problems` lists them)."""
    root = Path(root)
    if not (root / "images").is_dir():
        raise EdgepipeError(
            f"{root}: no images/ folder. A detection data folder holds images/ and either labels/ (YOLO, "
            "with classes.txt or data.yaml) or annotations.json (COCO)."
        )
    coco = _coco_file(root)
    if coco is not None:
        found = _read_coco(root, coco)
    elif (root / "labels").is_dir():
        found = _read_yolo(root)
    else:
        raise EdgepipeError(
            f"{root}: images/ but neither labels/ (YOLO) nor annotations.json (COCO). Export the annotations "
            "from your labelling tool in one of these layouts."
        )
    if found.problems and on_bad_image == "error":
        raise EdgepipeError(
            describe_problems(
                root,
                found.problems,
                skippable=True,
                fixes=PROBLEM_FIXES,
                skip_does="leave the images that have one out of training",
            )
        )
    if not found.images:
        raise EdgepipeError(f"{root}: no usable annotated image left. Add images to {root / 'images'}.")
    return found


def _image_files(root: Path) -> dict[str, Path]:
    files = sorted(
        p for p in (root / "images").rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    return {p.relative_to(root / "images").with_suffix("").as_posix(): p for p in files}


def _image_size(path: Path) -> tuple[int, int] | DataProblem:
    if path.stat().st_size == 0:
        return DataProblem(path, "empty (0-byte) file", ".")
    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except UNREADABLE as exc:
        return DataProblem(path, "not a readable image", f" ({exc})")


def _class_names(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    if (root / "data.yaml").is_file():
        names = (yaml.safe_load((root / "data.yaml").read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise EdgepipeError(
        f"{root}: no class names. Add classes.txt (one name per line, in class-id order) or a data.yaml "
        "with `names`."
    )


def _read_yolo(root: Path) -> DetectionSet:
    classes, images = _class_names(root), _image_files(root)
    problems: list[DataProblem] = []
    labels = {
        p.relative_to(root / "labels").with_suffix("").as_posix(): p
        for p in sorted((root / "labels").rglob("*.txt"))
    }
    problems += [
        DataProblem(path, "label file with no image", ".")
        for key, path in labels.items()
        if key not in images
    ]
    kept = []
    for key, path in images.items():
        size = _image_size(path)
        if isinstance(size, DataProblem):
            problems.append(size)
            continue
        rows, malformed = [], False
        if key in labels:
            for number, line in enumerate(labels[key].read_text().splitlines(), 1):
                if not line.strip():
                    continue
                where = f" (line {number}: {line.strip()!r})"
                try:
                    label, cx, cy, w, h = (float(v) for v in line.split())
                except ValueError:
                    problems.append(DataProblem(labels[key], "label line is not `class cx cy w h`", where))
                    malformed = True
                    continue
                rows.append((label, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, labels[key], where))
        boxes = _checked_boxes(rows, size, classes, problems, scale=size)
        if boxes is not None and not malformed:
            kept.append(AnnotatedImage(path, *size, *boxes))
    return DetectionSet("yolo", classes, kept, problems)


def _coco_file(root: Path) -> Path | None:
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    return None


def _read_coco(root: Path, source: Path) -> DetectionSet:
    try:
        coco = json.loads(source.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        entries, annotations = coco["images"], coco.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgepipeError(
            f"{source}: not COCO JSON with images, annotations and categories ({exc})."
        ) from None
    classes = [str(c["name"]) for c in categories]
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    files = _image_files(root)
    problems: list[DataProblem] = []
    kept = []
    for entry in entries:
        key = Path(entry["file_name"]).with_suffix("").as_posix().removeprefix("images/")
        if key not in files:
            problems.append(
                DataProblem(
                    root / "images" / entry["file_name"], "annotation of an image that is not in images/", "."
                )
            )
            continue
        size = _image_size(files[key])
        if isinstance(size, DataProblem):
            problems.append(size)
            continue
        rows = []
        for annotation in by_image.get(entry["id"], []):
            x, y, w, h = (float(v) for v in annotation["bbox"])
            label = index.get(annotation["category_id"], -1)
            where = (
                f" (annotation id {annotation.get('id')}: category {annotation['category_id']}, "
                f"bbox {annotation['bbox']})"
            )
            rows.append((label, x, y, x + w, y + h, source, where))
        boxes = _checked_boxes(rows, size, classes, problems, scale=(1, 1))
        if boxes is not None:
            kept.append(AnnotatedImage(files[key], *size, *boxes))
    return DetectionSet("coco", classes, kept, problems)


def _checked_boxes(rows, size, classes, problems, scale) -> tuple[np.ndarray, np.ndarray] | None:
    """Boxes in pixels, clipped to the image, and their labels; None (and the problems recorded) when one
    row is bad, so the image is left out under `skip`."""
    width, height = size
    sx, sy = scale
    boxes, labels, bad = [], [], False
    for label, x0, y0, x1, y1, source, where in rows:
        x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
        if not float(label).is_integer() or not 0 <= label < len(classes):
            problems.append(DataProblem(source, "unknown class id", f"{where}: {len(classes)} classes"))
            bad = True
        elif x1 - x0 <= 0 or y1 - y0 <= 0:
            problems.append(DataProblem(source, "box with zero area", where))
            bad = True
        elif (
            min(x0, y0) < -OVERSHOOT * max(size)
            or x1 > width * (1 + OVERSHOOT)
            or y1 > height * (1 + OVERSHOOT)
        ):
            problems.append(DataProblem(source, "box outside the image", f"{where}: image {width}x{height}"))
            bad = True
        else:
            boxes.append((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))
            labels.append(int(label))
    if bad:
        return None
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def write_coco(found: DetectionSet, dest: Path, first_category_id: int = 1) -> None:
    """`found` as a COCO export in `dest` (images/ copied, one annotations.json), as CVAT or Label Studio
    write it: category ids from `first_category_id` (COCO's need not start at 0 or 1), boxes x, y, w, h."""
    images = Path(dest) / "images"
    images.mkdir(parents=True)
    coco: dict = {"images": [], "annotations": []}
    coco["categories"] = [{"id": first_category_id + i, "name": n} for i, n in enumerate(found.classes)]
    for image_id, item in enumerate(found.images, start=1):
        shutil.copy2(item.path, images / item.path.name)
        coco["images"].append(
            {"id": image_id, "file_name": item.path.name, "width": item.width, "height": item.height}
        )
        for (x0, y0, x1, y1), label in zip(item.boxes.tolist(), item.labels.tolist(), strict=True):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": first_category_id + label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    (Path(dest) / "annotations.json").write_text(json.dumps(coco))
