"""A FOMO-style centroid detector (Edge Impulse's "Faster Objects, More Objects"): MobileNetV2 cut at its
stride-8 feature map and a 1x1 convolution head that classifies every cell of that grid as background or
one of the classes. It finds where objects are (their centres), not their extent, for a fraction of an SSD
head's cost, and OpenMV's `ml` module decodes its output on the camera (channel 0 is background).

Boxes are what DetectionSplit holds: normalised (ymin, xmin, ymax, xmax) of the model input; class labels
are 0-based (heatmap channel label + 1). Centroids are (cx, cy, class, score), normalised x and y.
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from components.mcu_files import OPENMV_FIRMWARE, openmv_camera
from components.model import BATCH_NORM_MOMENTUM, keras, make_training_variables
from components.tasks.detection.data import DetectionBatches, DetectionSplit, augmented

CUT_LAYER = "block_6_expand_relu"  # the last stride-8 activation of Keras' MobileNetV2 (Edge Impulse's cut)
STRIDE = 8
HEAD_FILTERS = 32
HEATMAP_OUTPUT = "fomo_heatmap"
OBJECT_WEIGHT = 100.0  # object cells against background cells in the loss, as Edge Impulse weighs them


def build_fomo(
    input_shape: tuple[int, int, int], num_classes: int, width_multiplier: float, name: str
) -> keras.Model:
    """An untrained FOMO model (weights=None: never downloads) with one output, `fomo_heatmap`
    (H/8, W/8, num_classes + 1): softmax over background and the classes per cell. Only convolutions,
    batch norm, ReLU and softmax: layers tfmot prunes and quantizes."""
    backbone = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=width_multiplier, include_top=False, weights=None
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM  # few steps: see components.model
    features = backbone.get_layer(CUT_LAYER).output
    grid = (-(-input_shape[0] // STRIDE), -(-input_shape[1] // STRIDE))
    if tuple(features.shape[1:3]) != grid:  # a Keras release that renames or moves its blocks
        raise ValueError(f"{CUT_LAYER} is {features.shape[1:3]}, not the stride-{STRIDE} grid {grid}")
    # ReLU fused into the convolution: with a separate ReLU layer tfmot's 8-bit scheme folds the pair and
    # its pruning-preserving QAT lost the head's zeros (measured: 50 % -> 4.7 % after fine-tuning)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, activation="relu", name="fomo_head")(features)
    x = keras.layers.Conv2D(num_classes + 1, 1, name="fomo_logits")(x)
    heatmap = keras.layers.Softmax(name=HEATMAP_OUTPUT)(x)
    return keras.Model(backbone.input, heatmap, name=name)


def fomo_targets(
    boxes_norm: np.ndarray, labels: np.ndarray, grid_h: int, grid_w: int, num_classes: int
) -> np.ndarray:
    """One image's target (grid_h, grid_w, num_classes + 1), one-hot: the cell holding each box centre is
    its class (channel label + 1), every other cell background (channel 0). Two centres in one cell: the
    later box's class."""
    target = np.zeros((grid_h, grid_w, num_classes + 1), np.float32)
    target[..., 0] = 1.0
    boxes = np.asarray(boxes_norm, np.float32).reshape(-1, 4)
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rows = np.clip((cy * grid_h).astype(int), 0, grid_h - 1)
    cols = np.clip((cx * grid_w).astype(int), 0, grid_w - 1)
    for row, col, label in zip(rows, cols, np.asarray(labels, int), strict=True):
        target[row, col] = 0.0
        target[row, col, label + 1] = 1.0
    return target


def fomo_loss(y_true: tf.Tensor, y_pred: tf.Tensor, object_weight: float = OBJECT_WEIGHT) -> tf.Tensor:
    """Categorical cross-entropy per cell, object cells weighted `object_weight` times background cells:
    without it the few object cells (about 2 in 144) are outvoted and all-background is the optimum."""
    y_true = tf.cast(y_true, y_pred.dtype)
    cross_entropy = -tf.reduce_sum(y_true * tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)), axis=-1)
    weight = 1.0 + (object_weight - 1.0) * (1.0 - y_true[..., 0])
    return tf.reduce_mean(cross_entropy * weight)


class FomoBatches(DetectionBatches):
    """DetectionBatches (its shuffling and seeded flips, zoom and lighting) with heatmap targets."""

    def __init__(self, split, grid, num_classes, batch_size, normalize, augment=False, seed=0, shuffle=False):
        # no anchors: __getitem__ below is the only reader of them
        super().__init__(split, None, num_classes, batch_size, normalize, augment, seed, shuffle)
        self.grid = grid

    def __getitem__(self, index: int):
        picked = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images, targets = [], []
        for i in picked:
            image, boxes, labels = self.split.images[i], self.split.boxes[i], self.split.labels[i]
            if self.draws is not None:
                image, boxes, labels = augmented(image, boxes, labels, self.draws[i])
            images.append(image)
            targets.append(fomo_targets(boxes, labels, *self.grid, self.num_classes))
        return self.normalize(np.stack(images)), np.stack(targets)


def fit_fomo(
    model: keras.Model,
    train_split: DetectionSplit,
    val_split: DetectionSplit,
    normalize,
    lr,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    augment: bool = True,
    callbacks: tuple = (),
    weight_decay: float = 0.0,
) -> keras.callbacks.History:
    """Compile (Adam, fomo_loss) and fit, validating every epoch. The grid and class count are read from
    the model's output, so pruning and QAT wrappers of it train the same way (pass their callbacks)."""
    _, grid_h, grid_w, channels = model.output_shape
    model.compile(optimizer=keras.optimizers.Adam(lr, weight_decay=weight_decay or None), loss=fomo_loss)
    args = ((grid_h, grid_w), channels - 1, batch_size, normalize)
    batches = FomoBatches(train_split, *args, augment=augment, seed=seed, shuffle=True)
    checks = FomoBatches(val_split, *args)
    make_training_variables(model, *checks[0])
    # shuffle=False: the batches shuffle themselves, seeded (DetectionBatches)
    return model.fit(
        batches, validation_data=checks, epochs=epochs, callbacks=list(callbacks), shuffle=False, verbose=0
    )


def fit_fomo_on(model: keras.Model, data, learning_rate, epochs: int, batch_size: int, callbacks=(), **kw):
    """fit_fomo with fit_detector's signature (a TrainingData), for the shared prune and QAT steps."""
    return fit_fomo(
        model,
        data.train,
        data.val,
        data.normalize,
        learning_rate,
        epochs,
        batch_size,
        callbacks=callbacks,
        **kw,
    )


class ValidationCentroids(keras.callbacks.Callback):
    """Adds `val_f1`, `val_precision` and `val_recall` (centroids on the validation split) to each epoch's
    logs, for the early stopping that follows it in the callback list and for the history."""

    def __init__(self, data, classes: list[str], threshold: float, max_distance: float) -> None:
        super().__init__()
        self.data, self.classes, self.threshold, self.max_distance = data, classes, threshold, max_distance
        self.inputs = data.normalize(data.val.images)

    def scores(self, model) -> dict:
        found = centroids_from_heatmap(model.predict(self.inputs, verbose=0, batch_size=32), self.threshold)
        truth = list(zip(self.data.val.boxes, self.data.val.labels, strict=True))
        return centroid_metrics(truth, found, self.classes, self.max_distance)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.scores(self.model)
        if logs is not None:
            for key in ("f1", "precision", "recall"):
                logs[f"val_{key}"] = scores[key]


Centroid = tuple[float, float, int, float]  # cx, cy (0-1 of the input), class (0-based), score


def centroids_from_heatmap(heatmap: np.ndarray, threshold: float = 0.5) -> list[list[Centroid]]:
    """Per image of a (N, gh, gw, C + 1) heatmap, its objects best first. A cell is an object cell of
    class c when c is its best class and that score reaches `threshold`; each 8-connected blob of one
    class is one object at the score-weighted centre of its cells, scored by its cells' mean (OpenMV's
    find_blobs-based FOMO decoding, in spirit)."""
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim == 3:
        heatmap = heatmap[None]
    _, gh, gw, channels = heatmap.shape
    found: list[list[Centroid]] = []
    for image in heatmap:
        best, score = image[..., 1:].argmax(axis=-1), image[..., 1:].max(axis=-1)
        objects: list[Centroid] = []
        for label in range(channels - 1):
            mask = ((best == label) & (score >= threshold)).astype(np.uint8)
            count, blobs, _, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            if count < 2:
                continue
            rows, cols = np.indices(mask.shape)
            weights = np.where(mask > 0, score, 0.0).ravel()
            flat = blobs.ravel()
            total = np.bincount(flat, weights, minlength=count)[1:]
            cells = np.bincount(flat, minlength=count)[1:]
            cy = (np.bincount(flat, weights * rows.ravel(), minlength=count)[1:] / total + 0.5) / gh
            cx = (np.bincount(flat, weights * cols.ravel(), minlength=count)[1:] / total + 0.5) / gw
            means = total / cells
            objects += [(float(x), float(y), label, float(m)) for x, y, m in zip(cx, cy, means, strict=True)]
        found.append(sorted(objects, key=lambda o: -o[3]))
    return found


def centroid_metrics(
    truth: list[tuple[np.ndarray, np.ndarray]],
    found: list[list[Centroid]],
    classes: list[str],
    max_distance: float = 0.1,
) -> dict:
    """Precision, recall and F1 per class and over all objects. `truth`: per image (boxes (M, 4), labels
    (M,)) as DetectionSplit holds them. Per image, best score first, a centroid matches the nearest
    unmatched box centre of its class within `max_distance` (normalised units); unmatched centroids are
    false positives, unmatched boxes misses. Precision is 0 when nothing was found, recall 0 when there
    was nothing to find."""
    counts = {name: {"tp": 0, "fp": 0, "fn": 0} for name in classes}
    for (boxes, labels), objects in zip(truth, found, strict=True):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        centres = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], axis=-1)
        labels = np.asarray(labels, int)
        free = np.ones(len(labels), bool)
        for cx, cy, label, _ in sorted(objects, key=lambda o: -o[3]):
            distance = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)
            distance[~free | (labels != label)] = np.inf
            hit = len(distance) > 0 and distance.min() <= max_distance
            if hit:
                free[distance.argmin()] = False
            counts[classes[label]]["tp" if hit else "fp"] += 1
        for label in labels[free]:
            counts[classes[label]]["fn"] += 1
    overall = {key: sum(c[key] for c in counts.values()) for key in ("tp", "fp", "fn")}
    return {**_scores(overall), "per_class": {name: _scores(c) for name, c in counts.items()}}


def centroid_agreement(
    reference: list[list[Centroid]], other: list[list[Centroid]], max_distance: float
) -> float:
    """Share of the reference's centroids that `other` also finds: same class within max_distance. 1.0
    when the reference found none."""
    matched = total = 0
    for ref, got in zip(reference, other, strict=True):
        total += len(ref)
        free = [True] * len(got)
        for cx, cy, label, _ in ref:
            near = [
                i
                for i, (x, y, lab, _) in enumerate(got)
                if free[i] and lab == label and np.hypot(x - cx, y - cy) <= max_distance
            ]
            if near:
                free[near[0]] = False
                matched += 1
    return matched / total if total else 1.0


def centroid_pairs(
    truth: list[tuple[np.ndarray, np.ndarray]],
    found: list[list[Centroid]],
    background: int,
    max_distance: float,
) -> list[tuple[int, int]]:
    """(actual, predicted) per object and per found centroid, as the detection confusion matrix counts
    them: a centroid within max_distance of an object's centre (any class, nearest first) pairs with it;
    an object left alone is (class, background), a centroid left alone (background, class)."""
    pairs = []
    for (boxes, labels), objects in zip(truth, found, strict=True):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        centres = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], axis=-1)
        free = np.ones(len(boxes), bool)
        for cx, cy, label, _ in objects:
            distance = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) if len(boxes) else np.zeros(0)
            distance[~free] = np.inf
            if len(distance) and distance.min() <= max_distance:
                free[distance.argmin()] = False
                pairs.append((int(labels[distance.argmin()]), int(label)))
            else:
                pairs.append((background, int(label)))
        pairs += [(int(label), background) for label in np.asarray(labels)[free]]
    return pairs


def _scores(c: dict) -> dict:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, **c}


def openmv_fomo_script(labels: list[str], input_size: tuple[int, int], threshold: float = 0.5) -> str:
    """An OpenMV `main.py` that runs `trained.tflite` (an int8 FOMO file) with `labels.txt` (class names,
    no background) beside it and draws a circle at each centroid, with the camera set up as every generated
    script (mcu_files.openmv_camera) and `ml.Model(path, postprocess=Fomo(...))`."""
    height, width = input_size
    return f"""# FOMO centroid detector for {OPENMV_FIRMWARE} and
# ml.postprocessing.edgeimpulse.Fomo (v4.8.0+). Copy trained.tflite, labels.txt and this file to the camera.
# Generated by edgepipe. An int8 input is fed pixel - 128 by the firmware (the model was trained on
# pixel / 127.5 - 1).
import csi
import time
import ml
from ml.postprocessing.edgeimpulse import Fomo

NUM_CLASSES = {len(labels)}  # {", ".join(labels)}
THRESHOLD = {threshold!r}

{openmv_camera(height, width, 3)}
model = ml.Model("trained.tflite", postprocess=Fomo(threshold=THRESHOLD))
labels = [line.rstrip("\\n") for line in open("labels.txt")]
if len(labels) != NUM_CLASSES:
    raise ValueError("labels.txt has %d classes, the model %d" % (len(labels), NUM_CLASSES))
colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]

clock = time.clock()
while True:
    clock.tick()
    img = csi0.snapshot()
    found = 0
    # one list per heatmap channel of ((x, y, w, h), score) in frame pixels; channel 0 is background
    for i, detections in enumerate(model.predict([img])):
        if i == 0:
            continue
        for (x, y, w, h), score in detections:
            cx, cy = x + w // 2, y + h // 2
            color = colors[(i - 1) % len(colors)]
            img.draw_circle((cx, cy, 10), color=color, thickness=2)
            img.draw_string(cx + 12, cy - 6, "%s %.2f" % (labels[i - 1], score), color=color)
            found += 1
    print("%d object(s)  %.1f fps" % (found, clock.fps()))
"""
