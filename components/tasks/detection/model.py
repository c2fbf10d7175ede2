"""The detector: an SSD-style single-shot head on a MobileNetV2 backbone, in tf-keras, built only from
layers tfmot can prune and quantize (depthwise and 1x1 convolutions, batch norm, ReLU6, reshape, concat).

Two feature maps (strides 16 and 32) each get a depthwise 3x3 + 1x1 head that predicts, per anchor, a box
encoding (components.tasks.detection.anchors) and one logit per class (sigmoid scores, no background
column: the focal loss needs none, and TFLite's post-processing op reads C columns as C classes).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from components.model import BATCH_NORM_MOMENTUM, keras
from components.tasks.detection.anchors import ASPECTS, AnchorGrid, anchor_boxes
from components.tasks.detection.decode import BOX_OUTPUT, SCORE_OUTPUT

FEATURE_LAYERS = ("block_13_expand_relu", "block_15_add")  # strides 16 and 32 of Keras' MobileNetV2
STRIDES = (16, 32)
CLASS_OUTPUT = "class_logits"  # its sigmoid is SCORE_OUTPUT, what the ONNX file holds (with_scores)
PRIOR = 0.01  # the class logits start at this probability (RetinaNet's prior: a stable start for focal loss)


def anchor_grids(height: int, width: int) -> tuple[AnchorGrid, ...]:
    """The anchors of an input size: SSD's scales, evenly from 0.2 to 0.9 of the input side."""
    scales = np.linspace(0.2, 0.9, len(STRIDES) + 1)
    return tuple(
        AnchorGrid(math.ceil(height / s), math.ceil(width / s), float(scales[i]), float(scales[i + 1]))
        for i, s in enumerate(STRIDES)
    )


def anchors_for(input_shape: tuple[int, int, int]) -> np.ndarray:
    return anchor_boxes(anchor_grids(*input_shape[:2]))


def build_detector(
    input_shape: tuple[int, int, int], num_classes: int, width_multiplier: float, name: str
) -> keras.Model:
    """An untrained detector (weights=None: never downloads). Outputs box encodings (N, 4) and class
    logits (N, num_classes) for the N anchors of `anchors_for(input_shape)`."""
    backbone = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=width_multiplier, include_top=False, weights=None
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    per_cell = len(ASPECTS) + 1
    boxes, logits = [], []
    for level, layer_name in enumerate(FEATURE_LAYERS):
        x = backbone.get_layer(layer_name).output
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"head{level}_dw")(x)
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"head{level}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"head{level}_relu")(x)
        box = keras.layers.Conv2D(per_cell * 4, 1, name=f"head{level}_boxes")(x)
        logit = keras.layers.Conv2D(
            per_cell * num_classes,
            1,
            bias_initializer=keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)),
            name=f"head{level}_classes",
        )(x)
        boxes.append(keras.layers.Reshape((-1, 4), name=f"head{level}_boxes_flat")(box))
        logits.append(keras.layers.Reshape((-1, num_classes), name=f"head{level}_classes_flat")(logit))
    return keras.Model(
        backbone.input,
        [
            keras.layers.Concatenate(axis=1, name=BOX_OUTPUT)(boxes),
            keras.layers.Concatenate(axis=1, name=CLASS_OUTPUT)(logits),
        ],
        name=name,
    )


def box_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Smooth L1 (Huber, delta 1) over the positive anchors' encodings, per positive anchor.
    y_true (B, N, 5): the encoding and a positive flag (anchors.match)."""
    positive = y_true[..., 4]
    diff = tf.abs(y_true[..., :4] - y_pred)
    huber = tf.reduce_sum(tf.where(diff < 1.0, 0.5 * diff**2, diff - 0.5), axis=-1)
    return tf.reduce_sum(huber * positive) / tf.maximum(tf.reduce_sum(positive), 1.0)


def focal_loss(y_true: tf.Tensor, y_pred: tf.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> tf.Tensor:
    """Sigmoid focal loss (RetinaNet) per positive anchor. y_true (B, N, C + 1): one-hot targets (all zero
    for background) and a weight (0: ignored anchor)."""
    targets, weight = y_true[..., :-1], y_true[..., -1:]
    probability = tf.sigmoid(y_pred)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=y_pred)
    p_t = targets * probability + (1 - targets) * (1 - probability)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    loss = alpha_t * (1 - p_t) ** gamma * cross_entropy * weight
    return tf.reduce_sum(loss) / tf.maximum(tf.reduce_sum(targets), 1.0)


LOSSES = {BOX_OUTPUT: box_loss, CLASS_OUTPUT: focal_loss}


def with_scores(model: keras.Model) -> keras.Model:
    """The detector with the sigmoid in the graph, outputs (box encodings, class scores): what the ONNX
    file holds, so OpenCV dnn and onnxruntime return what the shared decoding reads."""
    boxes, logits = model.outputs
    return keras.Model(model.inputs, [boxes, keras.layers.Activation("sigmoid", name=SCORE_OUTPUT)(logits)])
