"""The detector as a .tflite with the standard four outputs: post-processing fused as TFLite's
`TFLite_Detection_PostProcess` custom op, the way the TF Object Detection API exports SSD models, so
LiteRT, TFLite-Micro, MediaPipe and OpenMV read (boxes, classes, scores, count) from it.

A `tf.function` whose `experimental_implements` signature names the op and its attributes stands in for
it; the converter (with custom ops allowed) replaces the function's body by the op. Its body here is
placeholder constants of the output shapes: TensorFlow never runs it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.dataset import read_dataset_info
from components.tasks.detection.anchors import SCALES
from components.tasks.detection.decode import NmsSettings
from components.tasks.detection.prepared import resize_mode

POSTPROCESS_OP = "TFLite_Detection_PostProcess"


def postprocess_signature(num_classes: int, nms: NmsSettings) -> str:
    """The op and its attributes as `experimental_implements` reads them (an AttrValue map in text form)."""
    y_scale, x_scale, h_scale, w_scale = SCALES
    attributes = {
        "max_detections": ("i", nms.max_detections),
        "max_classes_per_detection": ("i", 1),
        "detections_per_class": ("i", nms.max_detections),
        "num_classes": ("i", num_classes),
        "nms_score_threshold": ("f", nms.score_threshold),
        "nms_iou_threshold": ("f", nms.iou_threshold),
        "y_scale": ("f", y_scale),
        "x_scale": ("f", x_scale),
        "h_scale": ("f", h_scale),
        "w_scale": ("f", w_scale),
        "use_regular_nms": ("b", "false"),  # one best class per box, then NMS: fast, what SSD exports use
    }
    return " ".join(
        [f'name: "{POSTPROCESS_OP}"']
        + [
            f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}'
            for key, (kind, value) in attributes.items()
        ]
    )


def postprocess_op(num_classes: int, nms: NmsSettings):
    """The tf.function the converter turns into the op: (box encodings [1, N, 4], class scores [1, N, C],
    anchors [N, 4]) -> boxes, classes, scores, count."""
    k = nms.max_detections

    @tf.function(experimental_implements=postprocess_signature(num_classes, nms))
    def postprocess(box_encodings, class_predictions, anchor_boxes):
        return (
            tf.zeros([1, k, 4], name="boxes"),
            tf.zeros([1, k], name="classes"),
            tf.zeros([1, k], name="scores"),
            tf.zeros([1], name="count"),
        )

    return postprocess


def detection_function(model: tf.keras.Model, anchors: np.ndarray, num_classes: int, nms: NmsSettings):
    """The detector with its post-processing, batch 1 (the op's batch), as one concrete function."""
    postprocess = postprocess_op(num_classes, nms)
    anchor_tensor = tf.constant(anchors, tf.float32)

    def detect(image):
        box_encodings, logits = model(image, training=False)
        return postprocess(box_encodings, tf.sigmoid(logits), anchor_tensor)

    name = model.inputs[0].name.split(":")[0]
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32, name=name)
    return tf.function(detect).get_concrete_function(spec)


def standard_output_order(model_bytes: bytes) -> bytes:
    """Put the file's outputs in the op's order (boxes, classes, scores, count), which is what apps that
    read outputs by index expect (OpenMV, MediaPipe, the TF1 Object Detection API's files). The converter
    lists a function's outputs in an order of its own (here :1, :3, :0, :2); each output tensor's name
    still ends in its position in the function's result (`...:0` = boxes)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    position = {index: int(graph.tensors[index].name.decode().rsplit(":", 1)[1]) for index in graph.outputs}
    graph.outputs = sorted(graph.outputs, key=position.__getitem__)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def detector_metadata(prepared_dir, nms_config) -> dict:
    """What an app needs beside the input description to use a detector file: the task, how images were
    resized to the input, the NMS the outputs went through."""
    return read_dataset_info(prepared_dir).metadata() | {
        "task": "detection",
        "resize": resize_mode(prepared_dir),
        "nms": nms_config.model_dump(mode="json"),
        "box_coder_scales": list(SCALES),
    }
