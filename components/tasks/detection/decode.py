"""From raw detector outputs to detections: the one decoding that validation, the benchmark and the MLflow
model share for files without TFLite's post-processing op (ONNX in onnxruntime and OpenCV dnn, the Keras
model). It does what `TFLite_Detection_PostProcess` does with use_regular_nms false (its "fast" NMS):
decode each anchor's box, keep its best class and that score, then one non-maximum suppression over all
boxes whatever their class (OpenCV's NMSBoxes), best score first. A box overlapping a better box of
another class is suppressed, as the op does: class-aware NMS (NMSBoxesBatched) keeps it and then no
longer matches the .tflite files (measured: agreement 0.87 on the bench's test split)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from components.tasks.detection.anchors import decode

# The raw outputs this decoding reads, as a detector file without the op names them (model.with_scores).
BOX_OUTPUT, SCORE_OUTPUT = "box_encodings", "class_scores"


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first: boxes (K, 4) normalised (ymin, xmin, ymax, xmax), classes
    (K,) int, scores (K,) float: what the TFLite op's outputs hold for one image."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class NmsSettings:
    score_threshold: float = 0.05  # low: mAP integrates over every score; an app raises it
    iou_threshold: float = 0.5
    max_detections: int = 20


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def detections_from_raw(
    box_encodings: np.ndarray, class_scores: np.ndarray, anchors: np.ndarray, nms: NmsSettings
) -> Detections:
    """One image: box encodings (N, 4), class scores (N, C) already through the sigmoid. Boxes are not
    clipped to the image, as the TFLite op leaves them (an app clips when it draws)."""
    boxes = decode(box_encodings, anchors)
    classes = class_scores.argmax(axis=1)
    scores = class_scores.max(axis=1)
    keep = scores >= nms.score_threshold
    boxes, classes, scores = boxes[keep], classes[keep], scores[keep]
    if len(scores):
        xywh = np.stack(
            [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=-1
        )
        kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), nms.score_threshold, nms.iou_threshold)
        kept = np.asarray(kept, dtype=np.int64).reshape(-1)
        kept = kept[np.argsort(-scores[kept], kind="stable")][: nms.max_detections]
        boxes, classes, scores = boxes[kept], classes[kept], scores[kept]
    return Detections(boxes.astype(np.float32), classes.astype(np.int64), scores.astype(np.float32))
