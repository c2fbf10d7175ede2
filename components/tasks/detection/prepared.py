"""The prepared detection set on disk (data/prepared, written by the detection `prepare` step): per split an
`<split>.npz` with the resized images `x` (uint8 NHWC), `y` (objects per image, what MLflow's dataset
record counts), and the boxes of every object (`boxes` normalised ymin, xmin, ymax, xmax; `box_labels`;
`box_image`, the index of the image each belongs to); the manifest is the classifier's with `task` and
`resize` added. Later steps read it through these functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.atomic import read_json
from components.dataset import read_dataset_info
from components.tasks.detection.data import DetectionSplit
from components.tasks.detection.decode import NmsSettings
from components.tasks.detection.metrics import GroundTruth
from components.tasks.detection.model import anchors_for
from components.tasks.detection.train import TrainingData


def save_split(path: Path, split: DetectionSplit) -> None:
    counts = [len(labels) for labels in split.labels]
    np.savez_compressed(
        path,
        x=split.images,
        y=np.asarray(counts, np.int64),
        boxes=np.concatenate(split.boxes or [np.zeros((0, 4), np.float32)]).astype(np.float32),
        box_labels=np.concatenate(split.labels or [np.zeros(0, np.int64)]).astype(np.int64),
        box_image=np.repeat(np.arange(len(counts)), counts).astype(np.int64),
    )


def load_detection_split(prepared_dir: Path, split: str) -> DetectionSplit:
    """uint8 images and, per image, its boxes and labels (no source files: the manifest lists them)."""
    with np.load(Path(prepared_dir) / f"{split}.npz") as data:
        images, boxes, labels, owner = data["x"], data["boxes"], data["box_labels"], data["box_image"]
    return DetectionSplit(
        images,
        [boxes[owner == i] for i in range(len(images))],
        [labels[owner == i] for i in range(len(images))],
        [],
        [],
    )


def ground_truth(split: DetectionSplit) -> list[GroundTruth]:
    """What COCO mAP is scored against, in the model input's frame."""
    height, width = split.images.shape[1:3]
    return [GroundTruth(b, lab, height, width) for b, lab in zip(split.boxes, split.labels, strict=True)]


def resize_mode(prepared_dir: Path) -> str:
    return read_json(Path(prepared_dir) / "manifest.json")["resize"]


def nms_settings(config) -> NmsSettings:
    """params.yaml detection.nms as the decoding's settings."""
    return NmsSettings(config.score_threshold, config.iou_threshold, config.max_detections)


def training_data(prepared_dir: Path) -> TrainingData:
    """What train, prune and QAT fit the detector on: the train and val splits, the anchors of the input
    size, the classes and the manifest's normalisation."""
    info = read_dataset_info(prepared_dir)
    return TrainingData(
        load_detection_split(prepared_dir, "train"),
        load_detection_split(prepared_dir, "val"),
        anchors_for(info.input_shape),
        info.num_classes,
        info.normalize,
    )
