"""A user's own colour images: data-aware defaults (channels and input size), the training recipe
(augmentation only while training, class weights, the diagnosis when the model did not learn), every bad
file found in one run, and the default params.yaml releasing a model that learned a generated colour folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import DataConfig, ModelConfig, Params, TrainConfig, load_params
from components.dataset import load_split, read_dataset_info
from components.errors import EdgepipeError
from components.model import load_model
from components.prepare import prepare
from components.synthetic import write_colour_folder
from components.train import augmentation_layers, balanced_class_weights, train
from conftest import PROJECT_ROOT, TINY_PARAMS, make_project_repo, run, write_image_folder


def test_channels_auto_follow_the_data_and_size_auto_follows_the_architecture(tmp_path):
    colour = tmp_path / "colour"
    write_colour_folder(colour, "signs", images=50, seed=3)
    grey = write_image_folder(tmp_path / "grey", per_class=10)
    auto = DataConfig()  # the defaults: height, width and channels auto
    assert prepare(auto, colour, tmp_path / "c")["image"]["channels"] == 3
    assert prepare(auto, grey, tmp_path / "g", architecture="mobilenet_v2")["image"]["channels"] == 1
    colour_info, grey_info = read_dataset_info(tmp_path / "c"), read_dataset_info(tmp_path / "g")
    assert colour_info.input_shape == (48, 48, 3)  # small_cnn's size
    assert grey_info.input_shape == (96, 96, 1)  # MobileNetV2's size
    assert colour_info.metadata()["input_shape"] == [1, 48, 48, 3]  # what every artifact embeds


def test_a_greyscale_photo_saved_as_rgb_counts_as_greyscale(tmp_path):
    grey = write_image_folder(tmp_path / "raw", per_class=10)
    for path in list(grey.rglob("*.png"))[::2]:  # half of them re-saved as RGB JPEG (JPEG noise included)
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=80)
        path.unlink()
    assert prepare(DataConfig(), grey, tmp_path / "out")["image"]["channels"] == 1


def test_every_bad_file_is_named_in_one_run_and_nothing_is_written(tmp_path):
    raw = tmp_path / "raw"
    write_colour_folder(raw, "signs", images=60, seed=1)
    (raw / "Stop" / "img_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (raw / "Info" / "img_0000.png").write_bytes(b"")
    (raw / "Go" / "img_0003.jpg").write_bytes((raw / "Go" / "img_0003.jpg").read_bytes()[:200])
    (raw / "Empty Class").mkdir()
    with pytest.raises(EdgepipeError) as info:
        prepare(DataConfig(), raw, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{raw}: 4 problem(s) in the data, nothing changed.")
    assert "or set data.on_bad_image: skip" in message
    assert "  not a readable image (2): Delete or replace the file." in message
    assert f"    {raw / 'Stop' / 'img_0001.jpg'}: not a readable image (" in message
    assert f"    {raw / 'Go' / 'img_0003.jpg'}: not a readable image (" in message
    assert f"    {raw / 'Info' / 'img_0000.png'}: empty (0-byte) file." in message
    assert f"    {raw / 'Empty Class'}: class folder has no images (.png/.jpg/.jpeg/.bmp)." in message
    assert not (tmp_path / "out").exists()


def test_a_long_list_of_bad_files_names_the_first_50_and_counts_the_rest(tmp_path):
    raw = write_image_folder(tmp_path / "raw", per_class=40)
    for path in sorted(raw.rglob("*.png"))[:70]:
        path.write_bytes(b"")
    message = str(pytest.raises(EdgepipeError, prepare, DataConfig(), raw, tmp_path / "out").value)
    assert message.count(": empty (0-byte) file.") == 50
    assert "  ... and 20 more (the first 50 are named above)" in message


def test_skip_leaves_bad_images_out_lists_them_and_leaves_the_folder_untouched(tmp_path):
    raw = write_image_folder(tmp_path / "raw", per_class=12)
    (raw / "bars" / "bars_001.png").write_bytes(b"garbage")
    (raw / "stripes" / "stripes_002.png").write_bytes(b"")
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    summary = prepare(DataConfig(on_bad_image="skip"), raw, tmp_path / "out")
    assert summary["skipped"] == 2
    assert sum(summary["counts"].values()) == 36 - 2
    manifest_skipped = {s["path"]: s["problem"] for s in read_manifest(tmp_path / "out")["skipped"]}
    assert manifest_skipped.keys() == {"bars/bars_001.png", "stripes/stripes_002.png"}
    assert manifest_skipped["stripes/stripes_002.png"] == "empty (0-byte) file."
    assert {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before


def test_skip_still_stops_on_a_class_left_without_images(tmp_path):
    raw = write_image_folder(tmp_path / "raw", per_class=8)
    for path in (raw / "diagonal").iterdir():
        path.write_bytes(b"")
    message = str(
        pytest.raises(EdgepipeError, prepare, DataConfig(on_bad_image="skip"), raw, tmp_path / "o").value
    )
    assert (
        f"{raw / 'diagonal'}: class folder has no images (.png/.jpg/.jpeg/.bmp): all of them are unreadable"
        in (message)
    )


def read_manifest(prepared: Path) -> dict:
    return json.loads((prepared / "manifest.json").read_text())


def test_balanced_class_weights_make_every_class_weigh_the_same():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    weights = balanced_class_weights(labels, 3)
    assert {c: weights[c] * np.sum(labels == c) for c in range(3)} == pytest.approx(
        {0: 100 / 3, 1: 100 / 3, 2: 100 / 3}
    )


def test_augmentation_changes_training_images_only_and_keeps_the_pixel_range(tmp_path):
    write_colour_folder(tmp_path / "raw", "signs", images=40, seed=4)
    data = DataConfig(image={"mean": 0.5, "std": 0.25, "height": 32, "width": 32})
    prepare(data, tmp_path / "raw", tmp_path / "out")
    info = read_dataset_info(tmp_path / "out")
    x, _ = load_split(tmp_path / "out", "train")
    import tensorflow as tf

    augment = tf.keras.Sequential(list(augmentation_layers(TrainConfig().augment, info, seed=0)))
    trained = augment(x, training=True).numpy()
    assert not np.allclose(trained, x)
    assert trained.min() >= (0 - 0.5) / 0.25 - 1e-4 and trained.max() <= (1 - 0.5) / 0.25 + 1e-4
    np.testing.assert_allclose(augment(x, training=False).numpy(), x, atol=1e-5)  # inference: identity
    assert augmentation_layers(TrainConfig(augment="none").augment, info, seed=0) == ()


@pytest.mark.slow
def test_the_saved_model_never_contains_the_augmentation(tmp_path):
    write_colour_folder(tmp_path / "raw", "signs", images=60, seed=5)
    prepare(DataConfig(image={"height": 24, "width": 24}), tmp_path / "raw", tmp_path / "out")
    config = TrainConfig(epochs=2, min_val_accuracy=0.0)
    train(
        ModelConfig(), config, tmp_path / "out", tmp_path / "m.keras", tmp_path / "t.json", tmp_path / "h.csv"
    )
    layers = [type(layer).__name__ for layer in load_model(tmp_path / "m.keras").layers]
    assert not [name for name in layers if name.startswith("Random") or name == "Rescaling"], layers
    assert layers[0] == "InputLayer" and "BatchNormalization" in layers


@pytest.mark.slow
def test_a_model_that_did_not_learn_stops_before_export_with_a_diagnosis(tmp_path):
    raw = write_image_folder(tmp_path / "raw", per_class=20)
    files = sorted(raw.rglob("*.png"))
    folders = np.random.default_rng(0).permutation([str(path.parent) for path in files])
    for index, (path, folder) in enumerate(zip(files, folders, strict=True)):  # labels become noise
        path.rename(Path(folder) / f"shuffled_{index:03d}.png")
    prepare(DataConfig(image={"height": 16, "width": 16}), raw, tmp_path / "out")
    config = TrainConfig(epochs=3, augment="none")
    with pytest.raises(EdgepipeError) as info:
        train(
            ModelConfig(),
            config,
            tmp_path / "out",
            tmp_path / "m.keras",
            tmp_path / "t.json",
            tmp_path / "h.csv",
        )
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'h.csv'}: the float model did not learn, so nothing was exported")
    assert "Validation accuracy 0." in message and "below the bar" in message
    assert "train.epochs" in message or "more images per class" in message
    assert not (tmp_path / "m.keras").exists()  # nothing for a later step to pick up
    assert (tmp_path / "h.csv").is_file()  # the curves, to look at


# --- the default params.yaml on a user's colour folder ------------------------------------------------


@pytest.fixture(scope="module")
def colour_release(tmp_path_factory, prefect_api):
    """A user's project: the shipped params.yaml unchanged, a generated colour folder in data/raw."""
    from flows.pipeline import pipeline

    base = tmp_path_factory.mktemp("colour")
    root = make_project_repo(base / "project")
    shutil.copy2(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    shutil.rmtree(root / "data" / "raw")
    counts = write_colour_folder(root / "data" / "raw", "signs", images=600, seed=11)  # bench/own_data.py's
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "my photos"], root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        result = pipeline(params_path="params.yaml", project_dir=str(root))
    return {"root": root, "result": result, "counts": counts}


@pytest.mark.slow
def test_default_params_learn_a_colour_folder_and_release_it(colour_release):
    result = colour_release["result"]
    report = result.report
    print(
        f"\ncolour folder, shipped params: float {report.float_accuracy:.3f}, "
        f"int8 LiteRT {report.accuracy('tflite_int8', 'litert'):.3f}"
    )
    assert result.data["image_channels"] == 3 and result.data["image_height"] == 48
    assert report.float_accuracy >= 0.9, report.float_accuracy
    assert report.accuracy("tflite_int8", "litert") >= report.float_accuracy - 0.03
    assert report.passed, report.gates.failures
    assert result.registration.version == "1" and result.registration.git_tag == "edgepipe-digits@v1"
    assert load_params(colour_release["root"] / "params.yaml") == Params.model_validate(
        load_params(PROJECT_ROOT / "params.yaml").model_dump()
    )  # nothing edited


def test_tiny_params_keep_augmentation_off():
    assert not Params.model_validate(TINY_PARAMS).train.augment.enabled


def test_an_accuracy_drop_of_exactly_the_bar_passes():
    """3 of 60 test images is a drop of exactly 0.05, which float subtraction makes 0.05000000000000004."""
    from components.config import GatesConfig
    from components.gates import cell_failures
    from components.results import Cell

    cell = {"format": "tflite_int8", "runtime": "litert", "loaded": True, "precision": "int8"}
    cell |= {"agreement": 1.0, "logit_error": 0.0, "layout": "NHWC", "required": True, "file": "m.tflite"}
    gates = GatesConfig(max_accuracy_drop=0.05)
    assert cell_failures(gates, 58 / 60, Cell(**cell, accuracy=55 / 60)) == []
    assert cell_failures(gates, 58 / 60, Cell(**cell, accuracy=54 / 60)) == [
        "tflite_int8 on litert: accuracy drop 0.0667 > gates.max_accuracy_drop 0.05"
    ]
