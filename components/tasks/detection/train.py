"""Training the detector: the loop train, prune and QAT share for detection (the classifier's is
components.model.fit_classifier), and the predictions of a Keras detector as Detections."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.model import keras, make_training_variables
from components.tasks.detection.data import DetectionBatches, DetectionSplit
from components.tasks.detection.decode import Detections, NmsSettings, detections_from_raw, sigmoid
from components.tasks.detection.metrics import GroundTruth, coco_map
from components.tasks.detection.model import BOX_OUTPUT, CLASS_OUTPUT, LOSSES


@dataclass(frozen=True)
class TrainingData:
    """What train, prune and QAT fit a detector on: the splits, the anchors the targets are matched to,
    the class count and the input normalisation."""

    train: DetectionSplit
    val: DetectionSplit
    anchors: np.ndarray
    num_classes: int
    normalize: object  # uint8 images -> the model's float input


def fit_detector(
    model: keras.Model,
    data: TrainingData,
    learning_rate,
    epochs: int,
    batch_size: int,
    callbacks: tuple = (),
    augment: bool = True,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> keras.callbacks.History:
    """Compile (Adam, with decoupled `weight_decay` if not 0; smooth L1 on boxes, focal loss on classes)
    and fit, validating every epoch."""
    # Losses by output position: pruning and QAT wrappers rename the outputs (quant_box_encodings, ...).
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None),
        loss=[LOSSES[BOX_OUTPUT], LOSSES[CLASS_OUTPUT]],
    )
    batches = DetectionBatches(
        data.train, data.anchors, data.num_classes, batch_size, data.normalize, augment, seed, shuffle=True
    )
    checks = DetectionBatches(data.val, data.anchors, data.num_classes, batch_size, data.normalize)
    make_training_variables(model, *checks[0])
    # shuffle=False: the batches shuffle themselves, seeded (DetectionBatches)
    return model.fit(
        batches, validation_data=checks, epochs=epochs, callbacks=list(callbacks), shuffle=False, verbose=2
    )


def predict_detections(
    model: keras.Model, inputs: np.ndarray, anchors: np.ndarray, nms: NmsSettings
) -> list[Detections]:
    """The Keras detector's detections on normalised inputs, through the shared decoding."""
    boxes, logits = model.predict(inputs, verbose=0, batch_size=32)
    scores = sigmoid(logits)
    return [detections_from_raw(b, s, anchors, nms) for b, s in zip(boxes, scores, strict=True)]


class ValidationMap(keras.callbacks.Callback):
    """Adds `val_map_50` and `val_map_50_95` (pycocotools, on the validation split) to each epoch's logs, for
    the early stopping that follows it in the callback list and for the history."""

    def __init__(self, data: TrainingData, classes: list[str], nms) -> None:
        super().__init__()
        self.data, self.classes, self.nms = data, classes, nms
        self.inputs = data.normalize(data.val.images)
        height, width = data.val.images.shape[1:3]
        self.truth = [
            GroundTruth(b, lab, height, width) for b, lab in zip(data.val.boxes, data.val.labels, strict=True)
        ]

    def scores(self, model) -> dict:
        found = predict_detections(model, self.inputs, self.data.anchors, self.nms)
        return coco_map(self.truth, found, self.classes)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.scores(self.model)
        if logs is not None:
            logs["val_map_50"], logs["val_map_50_95"] = scores["map_50"], scores["map_50_95"]
