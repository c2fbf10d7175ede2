"""Anchors, the box encoding and the matching of ground truth to anchors: numpy, shared by the training
targets, the TFLite post-processing op's anchor tensor and the decoding of raw outputs (ONNX, OpenCV).

Boxes are normalised to the model input, as (ymin, xmin, ymax, xmax), the order TFLite's
`TFLite_Detection_PostProcess`, the TF Object Detection API and OpenMV read. Anchors are
(ycenter, xcenter, height, width), the op's anchor tensor. The encoding is SSD's centre-size encoding
with the op's default scales: (dy / ha * 10, dx / wa * 10, log(h / ha) * 5, log(w / wa) * 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCALES = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w: the op's y_scale, x_scale, h_scale, w_scale
ASPECTS = (1.0, 2.0, 0.5)  # width / height of the anchors of each cell, after the extra 1:1 anchor


@dataclass(frozen=True)
class AnchorGrid:
    """One feature map: its cells and the anchor sizes (fractions of the input side) at each cell."""

    rows: int
    cols: int
    scale: float  # anchor side of the 1:1 anchor
    next_scale: float  # the extra 1:1 anchor is sqrt(scale * next_scale), as in SSD

    @property
    def per_cell(self) -> int:
        return len(ASPECTS) + 1


def anchor_boxes(grids: tuple[AnchorGrid, ...]) -> np.ndarray:
    """All anchors (N, 4) as (ycenter, xcenter, h, w), grid by grid, row-major, per_cell anchors per cell:
    the order of the model's box and class outputs."""
    anchors = []
    for grid in grids:
        sizes = [(grid.scale / math.sqrt(a), grid.scale * math.sqrt(a)) for a in ASPECTS]
        extra = math.sqrt(grid.scale * grid.next_scale)
        sizes.insert(1, (extra, extra))
        for row in range(grid.rows):
            for col in range(grid.cols):
                cy, cx = (row + 0.5) / grid.rows, (col + 0.5) / grid.cols
                anchors.extend((cy, cx, h, w) for h, w in sizes)
    return np.asarray(anchors, np.float32)


def corners(centre_size: np.ndarray) -> np.ndarray:
    """(ycenter, xcenter, h, w) -> (ymin, xmin, ymax, xmax)."""
    cy, cx, h, w = np.moveaxis(centre_size, -1, 0)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) corner boxes: (N, M)."""
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    return overlap / np.maximum(area(boxes)[:, None] + area(others)[None, :] - overlap, 1e-9)


def encode(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Corner boxes (N, 4), each relative to its anchor (N, 4): the regression target."""
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cy, cx = boxes[:, 0] + h / 2, boxes[:, 1] + w / 2
    ay, ax, ah, aw = anchors.T
    sy, sx, sh, sw = SCALES
    return np.stack(
        [(cy - ay) / ah * sy, (cx - ax) / aw * sx, np.log(h / ah) * sh, np.log(w / aw) * sw], axis=-1
    ).astype(np.float32)


def decode(encoded: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The inverse of `encode`: corner boxes (..., N, 4)."""
    ay, ax, ah, aw = anchors.T
    sy, sx, sh, sw = SCALES
    cy = encoded[..., 0] / sy * ah + ay
    cx = encoded[..., 1] / sx * aw + ax
    h = np.exp(encoded[..., 2] / sh) * ah
    w = np.exp(encoded[..., 3] / sw) * aw
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4


def match(
    boxes: np.ndarray, labels: np.ndarray, anchors: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one image. `boxes` (M, 4) normalised corners, `labels` (M,).

    Returns box targets (N, 5): the encoding and a 1 where the anchor is positive; class targets
    (N, num_classes + 1): one-hot (all zero for background) and a weight, 0 for anchors ignored (IoU
    between NEGATIVE_IOU and POSITIVE_IOU). Every object gets at least its best anchor."""
    n = len(anchors)
    box_targets = np.zeros((n, 5), np.float32)
    class_targets = np.zeros((n, num_classes + 1), np.float32)
    class_targets[:, -1] = 1.0
    if len(boxes) == 0:
        return box_targets, class_targets
    overlaps = iou(corners(anchors), boxes)  # (N, M)
    best_object = overlaps.argmax(axis=1)
    best_iou = overlaps.max(axis=1)
    positive = best_iou >= POSITIVE_IOU
    forced = overlaps.argmax(axis=0)  # each object's best anchor
    best_object[forced] = np.arange(len(boxes))
    positive[forced] = True
    ignored = ~positive & (best_iou >= NEGATIVE_IOU)
    box_targets[positive, :4] = encode(boxes[best_object[positive]], anchors[positive])
    box_targets[positive, 4] = 1.0
    class_targets[positive, labels[best_object[positive]]] = 1.0
    class_targets[ignored, -1] = 0.0
    return box_targets, class_targets
