"""Annotated images as the detector sees them: resized to the input (stretched, or letterboxed to keep the
aspect ratio), boxes normalised to it as (ymin, xmin, ymax, xmax), split by image, and the training batches
with their anchor targets (flips, zoom and lighting while training)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from components.model import keras
from components.tasks.detection.anchors import match
from components.tasks.detection.annotations import AnnotatedImage

Resize = Literal["stretch", "letterbox"]
LETTERBOX_FILL = 114  # grey padding, as Ultralytics and OpenMV's letterbox use
ZOOM = (0.8, 1.25)  # training-time zoom range (DetectionBatches)
LIGHT = 0.1  # training-time brightness and contrast change, either way


@dataclass(frozen=True)
class Placement:
    """Where an image lands in the model input: scale per axis and offset, in input pixels."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


def placement(width: int, height: int, input_w: int, input_h: int, resize: Resize) -> Placement:
    if resize == "stretch":
        return Placement(input_w / width, input_h / height, 0.0, 0.0)
    scale = min(input_w / width, input_h / height)
    return Placement(scale, scale, (input_w - width * scale) / 2, (input_h - height * scale) / 2)


def load_image(path, input_h: int, input_w: int, resize: Resize) -> tuple[np.ndarray, Placement]:
    """uint8 (input_h, input_w, 3) RGB and where the image went."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    where = placement(rgb.width, rgb.height, input_w, input_h, resize)
    size = (round(rgb.width * where.scale_x), round(rgb.height * where.scale_y))
    resized = rgb.resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (input_w, input_h), (LETTERBOX_FILL,) * 3)
    canvas.paste(resized, (round(where.offset_x), round(where.offset_y)))
    return np.asarray(canvas, dtype=np.uint8), where


def normalised_boxes(image: AnnotatedImage, where: Placement, input_h: int, input_w: int) -> np.ndarray:
    """Pixel (x0, y0, x1, y1) boxes of the original image -> (ymin, xmin, ymax, xmax) of the input, 0-1."""
    x0, y0, x1, y1 = image.boxes.T
    return np.stack(
        [
            (y0 * where.scale_y + where.offset_y) / input_h,
            (x0 * where.scale_x + where.offset_x) / input_w,
            (y1 * where.scale_y + where.offset_y) / input_h,
            (x1 * where.scale_x + where.offset_x) / input_w,
        ],
        axis=-1,
    ).astype(np.float32)


def original_boxes(boxes: np.ndarray, where: Placement, input_h: int, input_w: int) -> np.ndarray:
    """The inverse of `normalised_boxes`: normalised input boxes -> (x0, y0, x1, y1) original pixels."""
    ymin, xmin, ymax, xmax = np.moveaxis(boxes, -1, 0)
    return np.stack(
        [
            (xmin * input_w - where.offset_x) / where.scale_x,
            (ymin * input_h - where.offset_y) / where.scale_y,
            (xmax * input_w - where.offset_x) / where.scale_x,
            (ymax * input_h - where.offset_y) / where.scale_y,
        ],
        axis=-1,
    )


@dataclass
class DetectionSplit:
    """One split at the input size: images (N, H, W, 3) uint8 and, per image, its normalised boxes and
    labels, source file, original size and placement."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    sources: list[AnnotatedImage]
    placements: list[Placement]


def load_split(items: list[AnnotatedImage], input_h: int, input_w: int, resize: Resize) -> DetectionSplit:
    images, boxes, placements = [], [], []
    for item in items:
        array, where = load_image(item.path, input_h, input_w, resize)
        images.append(array)
        boxes.append(np.clip(normalised_boxes(item, where, input_h, input_w), 0.0, 1.0))
        placements.append(where)
    return DetectionSplit(
        np.stack(images) if images else np.zeros((0, input_h, input_w, 3), np.uint8),
        boxes,
        [item.labels for item in items],
        list(items),
        placements,
    )


def split_images(
    items: list[AnnotatedImage], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[AnnotatedImage]]:
    """A seeded split by image (every object of an image stays in one split)."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = max(1, round(len(items) * test_fraction))
    n_val = max(1, round(len(items) * val_fraction))
    picked = [items[i] for i in order]
    return {
        "test": picked[:n_test],
        "val": picked[n_test : n_test + n_val],
        "train": picked[n_test + n_val :],
    }


class DetectionBatches(keras.utils.Sequence):
    """Batches of (normalised images, (box targets, class targets)) for keras fit, in the detector's output
    order (pruning and QAT wrappers rename the outputs, so they are matched by position).

    With `shuffle`, the images come in a new order every epoch (seeded: Keras's own shuffling of a Sequence
    uses the process-wide `random` module, which other threads, Prefect's among them, draw from too, so a
    run in the flow trained on another order than the same step alone). With `augment`, every epoch draws
    for each image (seeded): a left-right flip (p 0.5), a zoom within
    ZOOM at a random place (boxes that keep less than half their area in view are dropped, the rest
    clipped) and brightness and contrast within LIGHT. Hue is left alone: colour can be what tells
    classes apart (a red stop sign, a blue info sign)."""

    def __init__(
        self,
        split: DetectionSplit,
        anchors: np.ndarray,
        num_classes: int,
        batch_size: int,
        normalize,
        augment: bool = False,
        seed: int = 0,
        shuffle: bool = False,
    ):
        super().__init__()
        self.split, self.anchors, self.num_classes = split, anchors, num_classes
        self.batch_size, self.normalize, self.augment, self.shuffle = batch_size, normalize, augment, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(split.images))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.split.images) / self.batch_size)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)
        self.draws = self.rng.random((len(self.split.images), 6)) if self.augment else None

    def __getitem__(self, index: int):
        picked = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images, box_targets, class_targets = [], [], []
        for i in picked:
            image, boxes, labels = self.split.images[i], self.split.boxes[i], self.split.labels[i]
            if self.draws is not None:
                image, boxes, labels = augmented(image, boxes, labels, self.draws[i])
            box_t, class_t = match(boxes, labels, self.anchors, self.num_classes)
            images.append(image)
            box_targets.append(box_t)
            class_targets.append(class_t)
        return self.normalize(np.stack(images)), (np.stack(box_targets), np.stack(class_targets))


def augmented(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, flipped, zoomed and re-lit as six uniform draws in [0, 1) say (DetectionBatches)."""
    import cv2

    flip, zoom, place_x, place_y, bright, contrast = draws
    h, w = image.shape[:2]
    if flip < 0.5:
        image = image[:, ::-1]
        boxes = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=-1)
    scale = float(np.exp(np.log(ZOOM[0]) + zoom * (np.log(ZOOM[1]) - np.log(ZOOM[0]))))
    # the shift keeps the zoomed image covering the input (zoom in) or inside it (zoom out)
    tx, ty = (place_x * (w - w * scale), place_y * (h - h * scale))
    matrix = np.array([[scale, 0, tx], [0, scale, ty]], np.float32)
    image = cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=(LETTERBOX_FILL,) * 3
    )
    moved = boxes * scale + np.array([ty / h, tx / w, ty / h, tx / w], np.float32)
    clipped = np.clip(moved, 0.0, 1.0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    keep = area(clipped) >= 0.5 * np.maximum(area(moved), 1e-9)
    pixels = image.astype(np.float32)
    light = lambda draw: 1 - LIGHT + 2 * LIGHT * draw  # noqa: E731
    pixels = (pixels - pixels.mean()) * light(contrast) + pixels.mean() * light(bright)
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    return image, clipped[keep].astype(np.float32), labels[keep]
