"""Detection metrics: COCO mAP@0.5 and mAP@0.5:0.95 and per-class AP from pycocotools (the reference
implementation, not a re-write), and the agreement of one detector's output with another's."""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.tasks.detection.anchors import iou
from components.tasks.detection.decode import Detections

RECALLS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds
_QUIET_COCO = threading.Lock()


@dataclass(frozen=True)
class GroundTruth:
    """One test image: boxes (M, 4) normalised (ymin, xmin, ymax, xmax) of the model input, labels (M,),
    and the input size the boxes are scaled to for COCO's area ranges."""

    boxes: np.ndarray
    labels: np.ndarray
    height: int
    width: int


def _xywh(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    ymin, xmin, ymax, xmax = boxes.T
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=-1)


def coco_map(truth: list[GroundTruth], found: list[Detections], classes: list[str]) -> dict:
    """{"map_50", "map_50_95", "ap_50": {class: AP@0.5}, "pr_50": {class: precision at recall 0, 0.01, ...
    1 (101 points, COCO's interpolation; None past the largest recall reached)}} over the images, up to
    100 detections per image."""
    images, annotations, results = [], [], []
    for image_id, (gt, det) in enumerate(zip(truth, found, strict=True), start=1):
        images.append({"id": image_id, "height": gt.height, "width": gt.width})
        for box, label in zip(_xywh(gt.boxes, gt.height, gt.width), gt.labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        for box, label, score in zip(
            _xywh(det.boxes, gt.height, gt.width), det.classes, det.scores, strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    empty = {
        "map_50": 0.0,
        "map_50_95": 0.0,
        "ap_50": dict.fromkeys(classes, 0.0),
        "pr_50": {name: [None] * len(RECALLS) for name in classes},
    }
    if not results or not annotations:
        return empty
    # pycocotools prints its progress and table. redirect_stdout swaps the process-wide sys.stdout, so two
    # threads (validation's per-format fan-out) interleaving it left sys.stdout on a StringIO and the
    # CLI's results table vanished (seen in a detection `make run`): one evaluation at a time.
    with _QUIET_COCO, contextlib.redirect_stdout(io.StringIO()):
        reference = COCO()
        reference.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
        }
        reference.createIndex()
        evaluation = COCOeval(reference, reference.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [IoU threshold, recall, class, area range, max detections]
    per_class, curves = {}, {}
    for k, name in enumerate(classes):
        values = precision[0, :, k, 0, -1]
        curves[name] = [float(v) if v > -1 else None for v in values]
        values = values[values > -1]
        per_class[name] = float(values.mean()) if values.size else 0.0
    return {
        "map_50": max(0.0, float(evaluation.stats[1])),
        "map_50_95": max(0.0, float(evaluation.stats[0])),
        "ap_50": per_class,
        "pr_50": curves,
    }


def agreement(reference: list[Detections], other: list[Detections], min_score: float = 0.3) -> float:
    """Share of the reference's confident detections (score >= min_score) that `other` also finds: a
    detection of the same class with IoU >= 0.5 and a score of at least half min_score (two runtimes that
    score an object 0.31 and 0.29 found the same object; one that scores it below min_score / 2 did not).
    1.0 when the reference has none."""
    matched = total = 0
    for ref, got in zip(reference, other, strict=True):
        ref_keep, got_keep = ref.scores >= min_score, got.scores >= min_score / 2
        total += int(ref_keep.sum())
        if not ref_keep.any() or not got_keep.any():
            continue
        overlaps = iou(ref.boxes[ref_keep], got.boxes[got_keep])
        same = ref.classes[ref_keep][:, None] == got.classes[got_keep][None, :]
        matched += int(((overlaps >= 0.5) & same).any(axis=1).sum())
    return matched / total if total else 1.0
