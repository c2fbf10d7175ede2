"""Object detection end to end in one process, outside the DAG (the pipeline runs the same modules for
`task: detection`; this script compares the unpruned PTQ file too and times each step): the generated
annotated scenes (components/tasks/detection/scenes.py) or a folder of yours
(YOLO or COCO layout) -> the SSD-style MobileNetV2 detector trained from scratch -> pruning -> pruning-
preserving QAT -> TFLite float32 / float16 / int8 PTQ / int8 QAT with TFLite_Detection_PostProcess fused,
and ONNX float with raw outputs -> every file in the runtimes that run it, scored with COCO mAP
(pycocotools) on the test split, and its agreement with the float Keras detector.

    python bench/detection.py [--images 600] [--size 96] [--epochs 60] [--data FOLDER]

Prints one row per (file, runtime): bytes, mAP@0.5, mAP@0.5:0.95, agreement, ms per image; then the
step times and per-class AP@0.5 of the float model and the int8 QAT file in TFLite-Micro.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import components  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from components.config import PruneConfig, QatConfig  # noqa: E402
from components.export_onnx import to_onnx  # noqa: E402
from components.export_tflite import convert  # noqa: E402
from components.model import keras, seed_everything, sparsity  # noqa: E402
from components.runtimes import tflm_arena_bytes  # noqa: E402
from components.tasks.detection import runtimes  # noqa: E402
from components.tasks.detection.annotations import read_detection_set  # noqa: E402
from components.tasks.detection.data import load_split, split_images  # noqa: E402
from components.tasks.detection.decode import NmsSettings  # noqa: E402
from components.tasks.detection.export import detection_function, standard_output_order  # noqa: E402
from components.tasks.detection.metrics import GroundTruth, agreement, coco_map  # noqa: E402
from components.tasks.detection.model import anchors_for, build_detector, with_scores  # noqa: E402
from components.tasks.detection.optimize import prune_detector, qat_detector  # noqa: E402
from components.tasks.detection.plots import draw_side_by_side, plot_precision_recall  # noqa: E402
from components.tasks.detection.scenes import write_detection_set  # noqa: E402
from components.tasks.detection.train import TrainingData, fit_detector, predict_detections  # noqa: E402

INT8 = {
    "allow_custom_ops": True,
    "optimizations": "DEFAULT",
    "representative_dataset": "train split",
    "supported_ops": "TFLITE_BUILTINS_INT8",
    "inference_input_type": "int8",  # outputs stay float: the post-processing op writes float boxes
}
TFLITE = {
    "tflite_float32": ("pruned", {"allow_custom_ops": True}),
    "tflite_float16": (
        "pruned",
        {"allow_custom_ops": True, "optimizations": "DEFAULT", "supported_types": "float16"},
    ),
    "tflite_int8_ptq": ("float", INT8),
    "tflite_int8": ("qat", INT8),
}


def normalize(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 127.5 - 1.0  # MobileNetV2's range


def main(
    images: int = typer.Option(600, help="generated scenes (ignored with --data)"),
    data: Path | None = typer.Option(None, help="your annotated folder (YOLO or COCO layout)"),
    size: int = typer.Option(96, help="square input size"),
    width: float = typer.Option(0.35, help="MobileNetV2 alpha"),
    epochs: int = typer.Option(60, help="float training epochs"),
    batch_size: int = typer.Option(16),
) -> None:
    console = Console(width=170)
    work = Path(tempfile.mkdtemp(prefix="edgepipe-detection-"))
    times = {}
    if data is None:
        data = work / "raw"
        write_detection_set(data, images, seed=0)
    found = read_detection_set(data)
    classes, num_classes = found.classes, len(found.classes)
    splits = {
        k: load_split(v, size, size, "stretch") for k, v in split_images(found.images, 0.15, 0.15, 42).items()
    }
    train, val, test = splits["train"], splits["val"], splits["test"]
    shape, nms = (size, size, 3), NmsSettings()
    anchors = anchors_for(shape)
    fitting = TrainingData(train, val, anchors, num_classes, normalize)

    start = time.monotonic()
    seed_everything(0)
    float_model = build_detector(shape, num_classes, width, "detector")
    steps = epochs * -(-len(train.images) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=3e-3, warmup_steps=min(100, steps // 10)
    )
    fit_detector(float_model, fitting, schedule, epochs, batch_size)
    times["train"] = time.monotonic() - start

    start = time.monotonic()
    pruned, _ = prune_detector(float_model, fitting, PruneConfig(epochs=8, batch_size=batch_size))
    times["prune"] = time.monotonic() - start
    start = time.monotonic()
    qat_model, _ = qat_detector(pruned, fitting, QatConfig(epochs=4, batch_size=batch_size))
    times["qat"] = time.monotonic() - start

    start = time.monotonic()
    sources = {"float": float_model, "pruned": pruned, "qat": qat_model}
    representative = normalize(train.images[:200])
    files = {}
    for name, (source, options) in TFLITE.items():
        model = sources[source]
        function = detection_function(model, anchors, num_classes, nms)
        files[name] = work / f"{name}.tflite"
        files[name].write_bytes(standard_output_order(convert(model, options, representative, function)))
    files["onnx_float32"] = work / "onnx_float32.onnx"
    files["onnx_float32"].write_bytes(to_onnx(with_scores(pruned), shape, 13).SerializeToString())
    times["export"] = time.monotonic() - start

    truth = [GroundTruth(b, lab, size, size) for b, lab in zip(test.boxes, test.labels, strict=True)]
    x_test = normalize(test.images)
    reference = predict_detections(float_model, x_test, anchors, nms)
    table = Table(
        title=f"Detection on {len(test.images)} test images "
        f"({len(found.images)} annotated, {num_classes} classes, {size}x{size})"
    )
    for column in ("file", "runtime", "bytes", "mAP@0.5", "mAP@0.5:0.95", "agreement", "ms/image"):
        table.add_column(column)
    results = {("keras float", "tensorflow"): (None, coco_map(truth, reference, classes), 1.0, None)}
    runners = {
        "tflite_float32": [("litert", runtimes.litert_detector)],
        "tflite_float16": [("litert", runtimes.litert_detector)],
        "tflite_int8_ptq": [("litert", runtimes.litert_detector), ("tflm", runtimes.tflm_detector)],
        "tflite_int8": [("litert", runtimes.litert_detector), ("tflm", runtimes.tflm_detector)],
        "onnx_float32": [
            ("onnxruntime", lambda p: runtimes.onnxruntime_detector(p, anchors, nms)),
            ("opencv_dnn:classic", lambda p: runtimes.opencv_detector(p, anchors, nms, "classic")),
            ("opencv_dnn:new", lambda p: runtimes.opencv_detector(p, anchors, nms, "new")),
        ],
    }
    for name, targets in runners.items():
        for runtime, opener in targets:
            try:
                run = opener(files[name])
                begin = time.monotonic()
                detections = run(x_test)
                ms = (time.monotonic() - begin) / len(x_test) * 1000
                results[(name, runtime)] = (
                    files[name].stat().st_size,
                    coco_map(truth, detections, classes),
                    agreement(reference, detections),
                    ms,
                )
            except Exception as exc:  # a runtime that cannot run the file is a result, not a crash
                results[(name, runtime)] = (
                    files[name].stat().st_size,
                    {"error": f"{type(exc).__name__}: {exc}"[:120]},
                    None,
                    None,
                )
    for (name, runtime), (size_bytes, scores, agrees, ms) in results.items():
        if "error" in scores:
            table.add_row(name, runtime, f"{size_bytes:,}", scores["error"], "", "", "")
            continue
        table.add_row(
            name,
            runtime,
            "-" if size_bytes is None else f"{size_bytes:,}",
            f"{scores['map_50']:.3f}",
            f"{scores['map_50_95']:.3f}",
            f"{agrees:.3f}",
            "-" if ms is None else f"{ms:.2f}",
        )
    console.print(table)
    arena = tflm_arena_bytes(files["tflite_int8"])
    steps = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    console.print(
        f"steps (s): {steps}; sparsity {sparsity(pruned):.3f}; TFLite-Micro arena (int8) {arena:,} B"
    )
    for label, key in (
        ("float Keras", ("keras float", "tensorflow")),
        ("int8 in TFLite-Micro", ("tflite_int8", "tflm")),
    ):
        per_class = results[key][1].get("ap_50", {})
        console.print(
            f"AP@0.5 per class, {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items())
        )
    # the pictures the report will show: PR curves and a few test images, float Keras vs int8 in TFLite-Micro
    int8_found = runtimes.tflm_detector(files["tflite_int8"])(x_test[:6])
    draw_side_by_side(
        work / "float_vs_int8.png",
        test.images[:6],
        {"float Keras": reference[:6], "int8 TFLite-Micro": int8_found},
        classes,
    )
    plot_precision_recall(
        work / "precision_recall.png",
        {
            label: results[key][1]["pr_50"]
            for label, key in (
                ("float Keras", ("keras float", "tensorflow")),
                ("int8 LiteRT", ("tflite_int8", "litert")),
            )
        },
        "Precision-recall at IoU 0.5 (test split)",
    )
    console.print(f"files and pictures in {work}")


if __name__ == "__main__":
    typer.run(main)
