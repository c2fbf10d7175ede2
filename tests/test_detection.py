"""Detection building blocks (components/tasks/detection): the generated scenes, the YOLO and COCO readers
and their checks, anchors and matching, decoding, COCO mAP, and the detector's TFLite export with the fused
`TFLite_Detection_PostProcess` op run in LiteRT and TFLite-Micro, checked against the shared decoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from components.config import load_params
from components.errors import EdgepipeError
from components.tasks.detection.anchors import anchor_boxes, corners, decode, encode, iou, match
from components.tasks.detection.annotations import read_detection_set, write_coco
from components.tasks.detection.decode import Detections, NmsSettings, detections_from_raw
from components.tasks.detection.metrics import GroundTruth, agreement, coco_map
from components.tasks.detection.model import anchor_grids
from components.tasks.detection.scenes import CLASSES, write_detection_set
from components.tasks.detection.train import predict_detections
from conftest import assert_histories_have_the_plotted_column


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes") / "raw"
    counts = write_detection_set(root, images=40, seed=3)
    return root, counts


def yolo_to_coco(root, dest):
    """The same annotations as a COCO export (what CVAT or Label Studio would write), category ids from 7."""
    found = read_detection_set(root)
    write_coco(found, dest, first_category_id=7)
    return found


def test_generated_scenes_are_deterministic_yolo_folders(scenes, tmp_path):
    root, counts = scenes
    again = tmp_path / "again"
    assert write_detection_set(again, images=40, seed=3) == counts
    for name in ("scene_0004.png", "scene_0006.png"):
        assert (again / "images" / name).read_bytes() == (root / "images" / name).read_bytes()
    assert (root / "classes.txt").read_text().split("\n")[:3] == list(CLASSES)
    found = read_detection_set(root)
    assert found.layout == "yolo" and len(found.images) == 40
    assert found.objects_per_class() == counts and sum(counts.values()) > 40
    assert any(len(item.labels) == 0 for item in found.images)  # a scene without objects has no label file
    sizes = {(item.width, item.height) for item in found.images}
    assert len(sizes) > 20  # mixed sizes and aspect ratios


def test_coco_json_reads_to_the_same_boxes_as_yolo(scenes, tmp_path):
    root, _ = scenes
    yolo = yolo_to_coco(root, tmp_path)
    coco = read_detection_set(tmp_path)
    assert coco.layout == "coco" and coco.classes == list(CLASSES)
    by_name = {item.path.name: item for item in coco.images}
    for item in yolo.images:
        other = by_name[item.path.name]
        np.testing.assert_allclose(other.boxes, item.boxes, atol=1e-3)
        np.testing.assert_array_equal(other.labels, item.labels)


def test_every_bad_annotation_is_listed_in_one_run_and_skip_leaves_those_images_out(scenes, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(scenes[0], root)
    labels = root / "labels"
    (labels / "scene_0001.txt").write_text("0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n")  # unknown class 9
    (labels / "scene_0002.txt").write_text("1 0.5 0.5 0.0 0.3\n")  # zero width
    (labels / "scene_0003.txt").write_text("2 0.95 0.5 0.4 0.2\n")  # reaches x = 1.15
    (labels / "scene_0004.txt").write_text("2 0.5 0.5\n")  # three numbers
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    (root / "images" / "scene_0007.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(EdgepipeError) as info:
        read_detection_set(root)
    message = str(info.value)
    assert message.startswith(f"{root}: 6 problem(s) in the data, nothing changed.")
    assert "(or set data.on_bad_image: skip to leave the images that have one out of training):" in message
    for expected in (
        f"{labels / 'scene_0001.txt'}: unknown class id (line 2: '9 0.5 0.5 0.2 0.2'): 3 classes",
        f"{labels / 'scene_0002.txt'}: box with zero area (line 1",
        f"{labels / 'scene_0003.txt'}: box outside the image (line 1",
        f"{labels / 'scene_0004.txt'}: label line is not `class cx cy w h` (line 1",
        f"{labels / 'ghost.txt'}: label file with no image.",
        f"{root / 'images' / 'scene_0007.jpg'}: not a readable image (",
    ):
        assert expected in message, message
    skipped = read_detection_set(root, on_bad_image="skip")
    assert len(skipped.images) == 40 - 5 and len(skipped.problems) == 6
    assert not {"scene_0001", "scene_0002", "scene_0003", "scene_0004", "scene_0007"} & {
        item.path.stem for item in skipped.images
    }


def test_a_folder_without_annotations_says_which_layouts_are_read(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(EdgepipeError, match="neither labels/ \\(YOLO\\) nor annotations.json \\(COCO\\)"):
        read_detection_set(tmp_path)


def test_encoding_round_trips_and_every_object_gets_an_anchor():
    anchors = anchor_boxes(anchor_grids(96, 96))
    assert anchors.shape == (6 * 6 * 4 + 3 * 3 * 4, 4)
    rng = np.random.default_rng(0)
    centre = rng.uniform(0.2, 0.8, (50, 2))
    size = rng.uniform(0.05, 0.4, (50, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    picked = anchors[rng.integers(len(anchors), size=50)]
    np.testing.assert_allclose(decode(encode(boxes, picked), picked), boxes, atol=1e-5)
    truth = boxes[:3]
    box_targets, class_targets = match(truth, np.array([0, 2, 1]), anchors, num_classes=3)
    positive = box_targets[:, 4] == 1
    assert positive.sum() >= 3
    matched = decode(box_targets[positive, :4], anchors[positive])
    assert (iou(matched, truth).max(axis=1) > 0.999).all()  # each positive encodes one of the objects
    assert set(class_targets[positive, :3].argmax(axis=1)) == {0, 1, 2}
    assert (class_targets[~positive, :3] == 0).all()


def test_decoding_perfect_outputs_gives_the_objects_and_map_one():
    anchors = anchor_boxes(anchor_grids(96, 96))
    truth = np.array([[0.1, 0.1, 0.4, 0.35], [0.5, 0.55, 0.9, 0.95]], np.float32)
    labels = np.array([1, 0])
    box_targets, class_targets = match(truth, labels, anchors, num_classes=2)
    scores = class_targets[:, :2] * 0.9  # the positives score 0.9 for their class, the rest 0
    found = detections_from_raw(box_targets[:, :4], scores, anchors, NmsSettings())
    assert len(found.scores) == 2  # NMS keeps one box per object
    order = np.argsort(found.boxes[:, 0])
    np.testing.assert_allclose(found.boxes[order], truth, atol=1e-5)
    np.testing.assert_array_equal(found.classes[order], labels)
    gt = [GroundTruth(truth, labels, 96, 96)]
    assert coco_map(gt, [found], ["a", "b"])["map_50"] == pytest.approx(1.0)
    shifted = Detections(found.boxes + 0.12, found.classes, found.scores)
    result = coco_map(gt, [shifted], ["a", "b"])
    assert result["map_50_95"] < result["map_50"] < 1.0 or result["map_50"] == 0.0
    assert agreement([found], [found]) == 1.0 and agreement([found], [shifted]) < 1.0
    wrong_class = Detections(found.boxes, 1 - found.classes, found.scores)
    assert agreement([found], [wrong_class]) == 0.0
    assert coco_map(gt, [wrong_class], ["a", "b"])["map_50"] == 0.0
    assert corners(anchors[:1]).shape == (1, 4)


MAX_DETECTIONS = 100
DETECTION_PARAMS = {
    "task": "detection",
    "data": {
        "bundled_if_empty": "none",
        "image": {"height": "auto", "width": "auto", "channels": "auto"},  # 96x96x3
        "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 1},
    },
    "model": {"name": "tiny-detector"},
    "train": {"epochs": 3, "batch_size": 8},  # what the fixture trains with (dvc.yaml names the section)
    # a few steps at a low rate: this is about the path, not about accuracy
    "prune": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-5, "frequency": 1, "min_steps": 5},
    "qat": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-5},
    "export": {"representative_samples": 16},
    # room for every box above 0.3: the untrained head's int8 scores tie at a few values, and a cap inside
    # a tie keeps different boxes in different runtimes
    "detection": {"nms": {"score_threshold": 0.3, "max_detections": MAX_DETECTIONS}, "min_val_map": 0.0},
    # the detector below is not trained to find the signs (its mAP is near 0) and its scores crowd the
    # NMS threshold, where int8 rounding moves boxes in and out: the gates hold each file to its model and
    # runtime loosely here; test_the_int8_detector_runs_in_tflite_micro_as_in_litert checks them closely
    "gates": {"min_agreement": 0.7, "min_runtime_agreement": 0.7},
    "mlflow": {"experiment": "edgepipe-detection-tests"},
    "benchmark": {"threads": 1, "warmup": 1, "rounds": 1, "runs_per_round": 2},
}


@pytest.fixture(scope="module")
def released(scenes, tmp_path_factory, prefect_api):
    """A detection project released by the real flow: the 40 scenes as a COCO export in data/raw (a git +
    DVC repository with a local remote), prepared and trained through the stage table, then `pipeline()`
    (Prefect) runs prune, pruning-preserving QAT, the exports, the MCU package, validation, the report,
    the MLflow registration and the DVC push, skipping the steps dvc.lock records.

    The float detector is trained here for 3 epochs (enough for its batch-norm statistics; an untrained
    MobileNetV2's activations vanish in inference mode), then its class head is set to logit 0 + 3 x
    features so that it scores anchors well apart from the focal-loss prior: the runtimes are compared on
    many confident detections without minutes of training (bench/detection.py measures accuracy)."""
    from components import versioning
    from components.atomic import write_json
    from components.model import save_model, seed_everything, write_history
    from components.paths import ProjectPaths
    from components.stages import get_stage
    from components.tasks.detection.model import build_detector
    from components.tasks.detection.prepared import training_data
    from components.tasks.detection.train import fit_detector
    from conftest import make_project_repo, run, write_params
    from flows.pipeline import pipeline

    base = tmp_path_factory.mktemp("released")
    root = make_project_repo(base / "project")
    shutil.rmtree(root / "data" / "raw")
    yolo_to_coco(scenes[0], (root / "data" / "raw").resolve())
    params_file = write_params(root / "params.yaml")
    raw = yaml.safe_load(params_file.read_text())
    for key in ("model", "train", "gates"):
        raw.pop(key, None)
    params_file.write_text(yaml.safe_dump(deep_merge(raw, DETECTION_PARAMS), sort_keys=False))
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "coco scenes"], root)
    params = load_params(params_file)
    paths = ProjectPaths(root)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        versioning.track_data(root, paths.raw_dir(params.data))
        get_stage("prepare").run(params, paths)
        versioning.commit_stage(root, "prepare")
        seed_everything(0)
        data = training_data(paths.prepared_dir)
        model = build_detector((96, 96, 3), 3, 0.35, "tiny-detector")
        history = fit_detector(model, data, 3e-3, 3, 8).history
        for level in (0, 1):
            head = model.get_layer(f"head{level}_classes")
            kernel, bias = head.get_weights()
            head.set_weights([kernel * 3, np.zeros_like(bias)])  # logits spread wider: fewer tied scores
        save_model(model, paths.float_model)
        write_history(paths.train_history, history | {"val_map_50": [0.0] * 3, "val_map_50_95": [0.0] * 3})
        write_json(
            paths.metrics_file("train"),
            {"val_map_50": 0.0, "val_map_50_95": 0.0, "best_epoch": 3, "epochs_run": 3, "learned": True},
        )
        versioning.commit_stage(root, "train")
        result = pipeline(params_path="params.yaml", project_dir=str(root))
    return {"root": root, "uri": uri, "result": result, "params": params, "paths": paths}


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


@pytest.fixture(scope="module")
def exported(released):
    """What the released project holds, as the runtime tests read it: the pruned Keras detector, the
    anchors, the normalised test images, the NMS settings, the files and the sparsity facts."""
    from components.dataset import read_dataset_info
    from components.model import load_model, sparsity
    from components.qat import load_qat_model
    from components.tasks.detection.model import anchors_for
    from components.tasks.detection.prepared import load_detection_split, nms_settings

    paths, params = released["paths"], released["params"]
    info = read_dataset_info(paths.prepared_dir)
    images = info.normalize(load_detection_split(paths.prepared_dir, "test").images)
    pruned = load_model(paths.pruned_model)
    files = {
        name: paths.export_dir / f"model_{name}"
        for name in ("float32.tflite", "int8.tflite", "float32.onnx", "int8.onnx")
    }
    kernels = [w.numpy() for w in pruned.weights if w.name.endswith("/kernel:0")]
    facts = {
        "float_sparsity": sparsity(load_model(paths.float_model)),
        # tfmot prunes conv kernels, not depthwise ones (which `sparsity` counts too)
        "pruned_kernel_sparsity": sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels),
        "pruned_sparsity": sparsity(pruned),
        "qat_sparsity": sparsity(load_qat_model(paths.pruned_model, paths.qat_weights)),
    }
    return pruned, anchors_for(info.input_shape), images, nms_settings(params.detection.nms), files, facts


def test_pruning_and_qat_of_a_detector_keep_the_float_model_and_the_sparsity(exported):
    facts = exported[-1]
    assert facts["float_sparsity"] < 0.01  # pruning worked on a copy: models/float.keras is dense
    assert facts["pruned_kernel_sparsity"] == pytest.approx(0.5, abs=0.02)  # per-tensor rounding
    assert facts["qat_sparsity"] == pytest.approx(facts["pruned_sparsity"], abs=1e-6)  # PQAT kept the zeros


def same_detections(found: Detections, expected: Detections, tolerance: float = 1e-4) -> None:
    """The same detections (order among equal scores aside): count, scores best first, and for each one
    a box of the same class and score at IoU > 0.999."""
    assert len(found.scores) == len(expected.scores)
    np.testing.assert_allclose(found.scores, expected.scores, atol=tolerance)
    for box, label, score in zip(found.boxes, found.classes, found.scores, strict=True):
        same = (
            (iou(box[None], expected.boxes)[0] > 0.999)
            & (expected.classes == label)
            & (np.abs(expected.scores - score) < tolerance)
        )
        assert same.any(), (box, label, score, expected)


def test_the_tflite_detector_has_the_four_standard_outputs_and_computes_the_shared_decoding(exported):
    """LiteRT runs the fused TFLite_Detection_PostProcess; its outputs, in the file's order boxes, classes,
    scores, count, are what the shared numpy decoding makes of the Keras model's raw outputs."""
    from ai_edge_litert.interpreter import Interpreter

    from components.tasks.detection.runtimes import litert_detector

    model, anchors, images, nms, files, _ = exported
    details = Interpreter(model_path=str(files["float32.tflite"])).get_output_details()
    assert [d["shape"].tolist() for d in details] == [
        [1, MAX_DETECTIONS, 4],
        [1, MAX_DETECTIONS],
        [1, MAX_DETECTIONS],
        [1],
    ]
    found = litert_detector(files["float32.tflite"])(images)
    for got, want in zip(found, predict_detections(model, images, anchors, nms), strict=True):
        same_detections(got, want)
    assert sum(len(d.scores) for d in found) > 8  # the comparison covered real detections


def test_the_onnx_detector_decodes_alike_in_onnxruntime_and_both_opencv_engines(exported):
    from components.tasks.detection.runtimes import onnxruntime_detector, opencv_detector

    model, anchors, images, nms, files, _ = exported
    expected = predict_detections(model, images, anchors, nms)
    for run in (
        onnxruntime_detector(files["float32.onnx"], anchors, nms),
        opencv_detector(files["float32.onnx"], anchors, nms, "classic"),
        opencv_detector(files["float32.onnx"], anchors, nms, "new"),
    ):
        for got, want in zip(run(images), expected, strict=True):
            same_detections(got, want, tolerance=1e-3)


def test_the_int8_detector_runs_in_tflite_micro_as_in_litert(exported):
    """The QAT int8 file in TFLite-Micro (reference kernels, as on a device) finds what LiteRT finds. Their
    int8 kernels round differently on QAT files (the classifier's QAT file differs by up to 38 output
    steps, its PTQ file by 1: tests/test_mobilenet_v2.py), so scores may move by a few 1/256 steps and
    the comparison is on confident detections, both ways."""
    from ai_edge_litert.interpreter import Interpreter

    from components.tasks.detection.runtimes import litert_detector, tflm_detector

    _, _, images, _, files, _ = exported
    assert Interpreter(model_path=str(files["int8.tflite"])).get_input_details()[0]["dtype"] == np.int8
    litert = litert_detector(files["int8.tflite"])(images)
    micro = tflm_detector(files["int8.tflite"])(images)
    assert sum(int((d.scores >= 0.45).sum()) for d in litert) > 4
    assert agreement(litert, micro, min_score=0.45) >= 0.9
    assert agreement(micro, litert, min_score=0.45) >= 0.9
    for a, b in zip(litert, micro, strict=True):
        np.testing.assert_allclose(a.scores[:3], b.scores[:3], atol=0.04)


def test_augmented_boxes_follow_the_pixels():
    """A white square on grey, flipped and zoomed in: the returned box is where the white pixels went."""
    import math

    from components.tasks.detection.data import ZOOM, augmented

    image = np.full((96, 96, 3), 100, np.uint8)
    image[20:50, 10:30] = 255  # rows 20-49, columns 10-29
    box = np.array([[20 / 96, 10 / 96, 50 / 96, 30 / 96]], np.float32)
    low, high = ZOOM
    no_zoom = math.log(1 / low) / math.log(high / low)  # the draw that gives scale 1.0
    zoom_in = math.log(1.2 / low) / math.log(high / low)
    for flip, zoom, place in ((0.1, no_zoom, 0.5), (0.9, zoom_in, 0.3), (0.1, zoom_in, 0.8), (0.9, 0.0, 0.2)):
        out, boxes, labels = augmented(
            image, box, np.array([2]), np.array([flip, zoom, place, place, 0.5, 0.5])
        )
        bright = np.argwhere(out.mean(axis=-1) > 200)
        (y0, x0), (y1, x1) = bright.min(axis=0), bright.max(axis=0) + 1
        np.testing.assert_allclose(boxes[0] * 96, [y0, x0, y1, x1], atol=1.5)
        assert labels.tolist() == [2]
    # the largest zoom with the view at the far corner: a square near the left edge leaves the view (a quarter
    # of it stays, columns 4-23 at 1.25x moved 24 px left), so its box is dropped with it
    edge = np.array([[20 / 96, 4 / 96, 50 / 96, 24 / 96]], np.float32)
    _, boxes, labels = augmented(image, edge, np.array([2]), np.array([0.9, 1.0, 1.0, 1.0, 0.5, 0.5]))
    assert len(boxes) == len(labels) == 0


def test_report_pictures_draw_the_boxes_and_the_curves(tmp_path):
    from PIL import Image

    from components.tasks.detection.plots import draw_side_by_side, plot_precision_recall

    images = np.full((2, 96, 96, 3), 90, np.uint8)
    found = Detections(
        np.array([[0.1, 0.1, 0.5, 0.6]], np.float32), np.array([1]), np.array([0.9], np.float32)
    )
    quiet = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    draw_side_by_side(
        tmp_path / "boxes.png", images, {"float": [found, quiet], "int8": [quiet, quiet]}, ["a", "b"]
    )
    sheet = np.asarray(Image.open(tmp_path / "boxes.png"))
    assert sheet.shape == (14 + 2 * 192, 2 * 192, 3)
    first = sheet[14 : 14 + 192, :192]
    assert (np.abs(first.astype(int) - 90).sum(axis=-1) > 60).any()  # the float model's box is drawn
    assert (sheet[14:, 192:] == 90).all()  # nothing drawn where nothing was found
    truth = [GroundTruth(found.boxes, found.classes, 96, 96)]
    curves = {"float": coco_map(truth, [found], ["a", "b"])["pr_50"]}
    assert curves["float"]["b"][100] == pytest.approx(1.0) and set(curves["float"]["a"]) == {None}
    plot_precision_recall(tmp_path / "pr.png", curves, "PR")
    assert Image.open(tmp_path / "pr.png").size[0] > 400


def test_the_flow_releases_the_detector_in_mlflow_dvc_and_git(released):
    """`task: detection` through the same DAG, gates and release as the classifier: a COCO folder in, the
    int8 .tflite with the four standard outputs registered in MLflow (its pyfunc returns boxes, classes,
    scores and count, as LiteRT finds them), tagged in git, pushed to the DVC remote; the validation
    matrix scores every file in every runtime its detection row names."""
    from ai_edge_litert.interpreter import Interpreter
    from mlflow.tracking import MlflowClient

    from components.formats import formats_for
    from components.results import ValidationReport
    from components.tasks.detection.prepared import load_detection_split
    from components.tasks.detection.runtimes import litert_detector

    root, paths, result = released["root"], released["paths"], released["result"]
    registration = result.registration
    assert (registration.model_name, registration.version, registration.git_tag) == (
        "tiny-detector",
        "1",
        "tiny-detector@v1",
    )
    assert result.pushed and result.data["counts"] == {"test": 8, "val": 8, "train": 24}
    assert_histories_have_the_plotted_column(paths, "val_map_50")
    release = paths.export_dir / "model_int8.tflite"
    outputs = Interpreter(model_path=str(release)).get_output_details()
    assert [d["shape"].tolist() for d in outputs] == [
        [1, MAX_DETECTIONS, 4],
        [1, MAX_DETECTIONS],
        [1, MAX_DETECTIONS],
        [1],
    ]
    version = MlflowClient(released["uri"]).get_model_version("tiny-detector", "1")
    assert version.tags["git_tag"] == "tiny-detector@v1" and "test_map_50" in version.tags
    assert "mAP@0.5" in version.tags["champion_decision"]

    report = ValidationReport.load(paths.validation_file)
    expected = [(f.name, t.name) for f in formats_for("detection") for t in f.runtimes]
    assert [(c.format, c.runtime) for c in report.cells] == expected
    assert report.task == "detection" and report.passed
    assert all(c.loaded and c.map_50_95 is not None and c.status == "pass" for c in report.cells)
    assert all(c.arena_bytes for c in report.cells if c.runtime == "tflm")
    assert len(report.confusion["release"]) == 4  # three classes and background
    for name in ("report.md", "precision_recall.png", "float_vs_release.png", "confusion_release.png"):
        assert (paths.reports_dir / name).stat().st_size > 1000
    assert "| Stop |" in (paths.reports_dir / "report.md").read_text()  # per-class AP
    assert (paths.mcu_dir / "openmv" / "main.py").is_file()

    mlflow.set_tracking_uri(released["uri"])
    images = load_detection_split(paths.prepared_dir, "test").images[:3].astype(np.float32) / 255.0
    predicted = mlflow.pyfunc.load_model("models:/tiny-detector/1").predict(images)
    want = litert_detector(release)(images)
    assert predicted["boxes"].shape == (3, MAX_DETECTIONS, 4) and predicted["count"].shape == (3,)
    for i, found in enumerate(want):
        n = int(predicted["count"][i])
        assert n == len(found.scores)
        np.testing.assert_array_equal(predicted["scores"][i, :n], found.scores)
        np.testing.assert_array_equal(predicted["classes"][i, :n], found.classes)
    status = run_dvc(root, "status")
    assert "up to date" in status or status.strip() == ""


def test_the_benchmark_times_a_detector_and_scores_it_with_the_validation_map(released):
    """bench/benchmark.py on the released detector: every cell of the chosen rows timed in its own
    process and scored with the same COCO mAP@0.5 as the validation matrix."""
    import sys

    from components.results import ValidationReport

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # spawned workers inherit it
    import benchmark

    root = released["root"]
    rows = benchmark.benchmark(root, root / "params.yaml", "tflite_int8,onnx_float32", use_mlflow=False)
    report = ValidationReport.load(released["paths"].validation_file)
    assert [(r["format"], r["runtime"]) for r in rows] == [
        ("tflite_int8", "litert"),
        ("tflite_int8", "tflm"),
        ("onnx_float32", "onnxruntime"),
        ("onnx_float32", "opencv_dnn:classic"),
        ("onnx_float32", "opencv_dnn:new"),
    ]
    for row in rows:
        assert row["error"] is None and row["median_ms"] > 0 and row["peak_rss_bytes"] > 0
        assert row["accuracy"] == pytest.approx(report.accuracy(row["format"], row["runtime"]), abs=1e-9)


def run_dvc(root, *args) -> str:
    import subprocess

    from conftest import DVC

    return subprocess.run([*DVC, *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_the_shared_decoding_suppresses_boxes_as_the_tflite_op_does():
    """The op alone, converted and run in LiteRT on raw outputs made to overlap across classes (boxes near
    each other, scores spread over both classes): the shared numpy decoding returns the same detections.
    Class-aware NMS would keep a box that a better box of another class covers; the op's fast NMS drops it."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from components.tasks.detection.export import postprocess_op, standard_output_order

    anchors = anchor_boxes(anchor_grids(96, 96))
    n, nms = len(anchors), NmsSettings(score_threshold=0.05, iou_threshold=0.5, max_detections=10)
    op = postprocess_op(2, nms)
    function = tf.function(
        lambda boxes, scores: op(boxes, scores, tf.constant(anchors))
    ).get_concrete_function(tf.TensorSpec((1, n, 4), tf.float32), tf.TensorSpec((1, n, 2), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
    converter.allow_custom_ops = True
    interpreter = Interpreter(model_content=standard_output_order(converter.convert()))
    interpreter.allocate_tensors()
    rng = np.random.default_rng(5)
    compared = 0
    for _ in range(5):
        encodings = rng.normal(0, 1.5, (n, 4)).astype(np.float32)
        scores = (rng.random((n, 2)) ** 6).astype(np.float32)  # few high scores, on either class
        # and objects predicted by several anchors each, the anchors split between the two classes
        for _ in range(3):
            centre, size = rng.uniform(0.3, 0.7, 2), rng.uniform(0.2, 0.4, 2)
            box = np.concatenate([centre - size / 2, centre + size / 2])[None].astype(np.float32)
            near = np.flatnonzero(iou(corners(anchors), box)[:, 0] > 0.2)[:6]
            encodings[near] = encode(np.repeat(box, len(near), axis=0), anchors[near])
            scores[near] = 0.0
            scores[near, np.arange(len(near)) % 2] = rng.uniform(0.5, 0.95, len(near))
        feeds = sorted(interpreter.get_input_details(), key=lambda d: d["shape"][-1])  # scores (C=2), boxes
        interpreter.set_tensor(feeds[1]["index"], encodings[None])
        interpreter.set_tensor(feeds[0]["index"], scores[None])
        interpreter.invoke()
        boxes, classes, kept, count = (
            interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()
        )
        c = int(count[0])
        op_found = Detections(boxes[0, :c], classes[0, :c].astype(np.int64), kept[0, :c])
        same_detections(op_found, detections_from_raw(encodings, scores, anchors, nms), tolerance=1e-5)
        compared += c
    assert compared > 20


def test_the_mcu_package_of_a_detector_holds_the_model_its_arena_and_an_openmv_script(exported, tmp_path):
    import re
    import shutil
    import subprocess

    from components.runtimes import tflm_arena_bytes
    from components.tasks.detection.mcu import package_detector_for_mcu

    files = exported[4]
    metadata = {
        "labels": list(CLASSES),
        "input_shape": [1, 96, 96, 3],
        "normalization": {"mean": 0.5, "std": 0.5},
    }
    out = tmp_path / "mcu"
    facts = package_detector_for_mcu(files["int8.tflite"], metadata, out)
    data = files["int8.tflite"].read_bytes()
    assert (
        facts["arena_bytes"] == tflm_arena_bytes(files["int8.tflite"])
        and facts["max_detections"] == MAX_DETECTIONS
    )
    assert "CUSTOM:TFLite_Detection_PostProcess" in facts["ops"]
    assert (out / "openmv" / "trained.tflite").read_bytes() == data
    source = (out / "model_data.cc").read_text()
    array = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", source))
    assert array == data  # the C array is the model, byte for byte
    header = (out / "model_data.h").read_text()
    assert f"constexpr int kTensorArenaSize = {facts['arena_bytes']};" in header
    assert (
        f"constexpr int kMaxDetections = {MAX_DETECTIONS};" in header
        and "constexpr int kNumClasses = 3;" in header
    )
    assert (out / "openmv" / "labels.txt").read_text().split() == list(CLASSES)
    compile((out / "openmv" / "main.py").read_text(), "main.py", "exec")
    assert shutil.which("g++"), "this test needs g++ (`apt-get install g++`; .ci/run installs it)"
    subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "-c", "model_data.cc", "-o", "m.o"], cwd=out, check=True
    )
    with pytest.raises(EdgepipeError, match="not a full-integer detector"):
        package_detector_for_mcu(files["float32.tflite"], metadata, tmp_path / "float")
    assert not (tmp_path / "float").exists()


def test_scoring_in_parallel_threads_leaves_stdout_alone():
    """Validation scores formats on parallel threads; pycocotools' printing is silenced by swapping
    sys.stdout, which, interleaved, once left it on a buffer and the CLI's results table vanished."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    box = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)
    truth = [GroundTruth(box, np.array([0]), 96, 96)] * 4
    found = [Detections(box, np.array([0]), np.array([0.9], np.float32))] * 4
    before = sys.stdout
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda _: coco_map(truth, found, ["a"])["map_50"], range(24)))
    assert sys.stdout is before and scores == [pytest.approx(1.0)] * 24


def test_an_annotated_folder_under_the_classification_task_says_to_set_task_detection(scenes, tmp_path):
    """The usual first mistake: a YOLO export in data/raw and params.yaml still classifying. `edgepipe run`
    stops before anything runs and names the key to set (exit 2), not "class folder has no images"."""
    from typer.testing import CliRunner

    from conftest import write_params
    from flows.cli import app

    shutil.copytree(scenes[0], tmp_path / "data" / "raw")
    write_params(tmp_path / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        result = CliRunner().invoke(app, ["run", "--project-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "an annotated detection folder" in result.output and "Set task: detection" in result.output


def test_training_does_not_draw_from_pythons_process_wide_random(released):
    """The same step trains the same weights whatever other threads (Prefect's) draw from `random`: the
    batches shuffle themselves, seeded. Keras' own Sequence shuffling drew from `random` and trained a
    detector to val mAP@0.5 0.57 inside `edgepipe run` and to 0.94 alone. fit_detector is run on a
    two-output model of a few layers with the detector's output names and shapes: the shuffling is the
    training loop's, whatever the backbone (the MobileNetV2 detector took 40 s more here)."""
    import random

    from components.model import keras, seed_everything
    from components.tasks.detection.decode import BOX_OUTPUT
    from components.tasks.detection.model import CLASS_OUTPUT
    from components.tasks.detection.prepared import training_data
    from components.tasks.detection.train import fit_detector

    data = training_data(released["paths"].prepared_dir)
    anchors, classes = len(data.anchors), data.num_classes
    weights = []
    for other_draws in (0, 7):
        seed_everything(0)
        inputs = keras.Input((96, 96, 3))
        features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(inputs))
        boxes = keras.layers.Reshape((anchors, 4), name=BOX_OUTPUT)(keras.layers.Dense(anchors * 4)(features))
        logits = keras.layers.Dense(anchors * classes, name="head0_classes")(features)
        model = keras.Model(
            inputs, [boxes, keras.layers.Reshape((anchors, classes), name=CLASS_OUTPUT)(logits)]
        )
        for _ in range(other_draws):
            random.random()
        fit_detector(model, data, 3e-3, 1, 4)  # 6 batches: 720 orders
        weights.append(model.get_layer("head0_classes").get_weights()[0])
    np.testing.assert_array_equal(weights[0], weights[1])
