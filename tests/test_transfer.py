"""Transfer learning (model.pretrained): ImageNet weights read from the Keras cache, the one clear message
when they are missing offline, a weights file of an earlier run, and the two-phase training. No test
downloads: the "ImageNet" file is one the test writes where Keras keeps its cache."""

from __future__ import annotations

import numpy as np
import pytest

from components import pretrained
from components.config import ImageSpec, ModelConfig, Params, TrainConfig
from components.errors import EdgepipeError
from components.hashing import file_digest
from components.model import build_model, keras, load_model, save_model
from components.paths import ProjectPaths
from components.stages import get_stage
from conftest import free_port

MOBILENET = {"architecture": "mobilenet_v2", "width_multiplier": 0.35, "pretrained": "imagenet"}
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache: HOME points at a temporary folder (tf-keras keeps downloads in ~/.keras)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".keras").mkdir()
    return tmp_path / ".keras" / "models"


def test_imagenet_names_the_file_keras_applications_would_load():
    assert pretrained.imagenet_file_name(0.35, 96, 96) == IMAGENET_FILE
    assert pretrained.imagenet_file_name(1.0, 160, 160).endswith("_1.0_160_no_top.h5")
    assert pretrained.imagenet_file_name(0.5, 100, 120).endswith("_0.5_224_no_top.h5")  # Keras' fallback


def test_imagenet_weights_are_read_from_the_keras_cache_into_the_backbone(keras_home):
    keras_home.mkdir()
    # What Keras publishes: the MobileNetV2 backbone without its top, saved as .h5 weights.
    backbone = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    backbone.save_weights(keras_home / IMAGENET_FILE)
    config = ModelConfig(**MOBILENET)
    path = pretrained.weights_file(config, ImageSpec(), root=keras_home)  # size auto: 96
    assert path == keras_home / IMAGENET_FILE
    model = build_model(config, (96, 96, 3), num_classes=4)
    loaded = pretrained.load_weights(model, "imagenet", path)
    assert loaded.layers_new == ("logits",)  # the head starts from scratch
    assert len(loaded.layers_loaded) == len([layer for layer in backbone.layers if layer.weights])
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for ours, theirs in zip(model.get_layer(name).weights, backbone.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_missing_imagenet_weights_offline_give_one_message_naming_the_file(keras_home, monkeypatch):
    # A real download attempt that fails at once: nothing listens on this port (as on a machine offline).
    monkeypatch.setenv("EDGEPIPE_KERAS_WEIGHTS_URL", f"http://127.0.0.1:{free_port()}/weights/")
    with pytest.raises(EdgepipeError) as info:
        pretrained.weights_file(ModelConfig(**MOBILENET), ImageSpec(), root=keras_home)
    message = str(info.value)
    assert message.startswith(
        f"model.pretrained: imagenet needs {IMAGENET_FILE}, which is not in the Keras cache"
    )
    assert f"copy it to {keras_home / IMAGENET_FILE}, then run again. Nothing was changed." in message
    assert list(keras_home.glob("*")) == []  # no partial download left behind


def test_pretrained_settings_are_checked_when_params_are_read():
    with pytest.raises(ValueError, match="imagenet weights exist for architecture mobilenet_v2 only"):
        ModelConfig(pretrained="imagenet")
    with pytest.raises(ValueError, match="width_multiplier one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"):
        ModelConfig(**{**MOBILENET, "width_multiplier": 0.6})
    with pytest.raises(ValueError, match=".keras or .h5 weights file"):
        ModelConfig(pretrained="weights.bin")
    with pytest.raises(ValueError, match="needs 3 channels"):
        Params.model_validate({"model": MOBILENET, "data": {"image": {"channels": 1}}})


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(EdgepipeError, match=r"model.pretrained: .*old\.keras not found"):
        pretrained.weights_file(ModelConfig(pretrained="old.keras"), ImageSpec(), root=tmp_path)


def test_a_weights_file_of_other_data_loads_every_layer_but_the_head_and_a_first_conv_of_other_channels(
    tmp_path,
):
    donor = build_model(ModelConfig(), (32, 32, 1), num_classes=10)  # grayscale, 10 classes
    save_model(donor, tmp_path / "old.keras")
    model = build_model(ModelConfig(), (32, 32, 3), num_classes=4)  # colour, 4 classes
    loaded = pretrained.load_weights(model, "old.keras", tmp_path / "old.keras")
    assert set(loaded.layers_new) == {"block1_conv", "logits"}
    assert "block1_bn" in loaded.layers_loaded and "block4_conv" in loaded.layers_loaded
    np.testing.assert_array_equal(
        model.get_layer("block4_conv").kernel, donor.get_layer("block4_conv").kernel
    )
    assert loaded.sha256 == file_digest(tmp_path / "old.keras")


def test_weights_of_another_architecture_are_refused_by_name(tmp_path):
    donor = build_model(ModelConfig(architecture="mobilenet_v2", width_multiplier=0.35), (32, 32, 3), 3)
    save_model(donor, tmp_path / "mobilenet.keras")
    model = build_model(ModelConfig(), (32, 32, 3), num_classes=3)
    with pytest.raises(EdgepipeError, match="no layer of .*mobilenet.keras matches"):
        pretrained.load_weights(model, "mobilenet.keras", tmp_path / "mobilenet.keras")


def test_a_changed_weights_file_makes_the_train_step_run_again(tmp_path):
    paths = ProjectPaths(tmp_path)
    params = Params.model_validate({"model": {"pretrained": "start.keras"}})
    weights = tmp_path / "start.keras"
    weights.write_bytes(b"weights v1")
    paths.metrics_dir.mkdir()
    paths.metrics_file("train").write_text(f'{{"pretrained": {{"sha256": "{file_digest(weights)}"}}}}')
    train = get_stage("train")
    assert train.named_inputs_unchanged(params, paths)
    weights.write_bytes(b"weights v2")  # same path, other content: DVC alone would not see it
    assert not train.named_inputs_unchanged(params, paths)
    assert get_stage("prune").named_inputs_unchanged(params, paths)  # no named inputs


@pytest.mark.slow
def test_two_phase_training_returns_a_fully_trainable_model_with_both_phases_in_its_history(tmp_path):
    from components.prepare import prepare
    from components.synthetic import write_colour_folder
    from components.train import train

    write_colour_folder(tmp_path / "raw", "signs", images=60, seed=4)
    prepare(
        Params().data.model_copy(update={"image": ImageSpec(height=24, width=24)}),
        tmp_path / "raw",
        tmp_path / "data",
    )
    save_model(build_model(ModelConfig(), (24, 24, 3), num_classes=3), tmp_path / "start.keras")
    config = TrainConfig(epochs=2, min_val_accuracy=0.0, transfer={"head_epochs": 2})
    metrics = train(
        ModelConfig(pretrained="start.keras"),
        config,
        tmp_path / "data",
        tmp_path / "m.keras",
        tmp_path / "t.json",
        tmp_path / "h.csv",
        pretrained_file=tmp_path / "start.keras",
    )
    assert metrics["pretrained"]["layers_loaded"] == 8 and metrics["pretrained"]["layers_new"] == 1
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert rows[0].endswith(",phase") and [row.split(",")[-1] for row in rows[1:]] == ["1", "1", "2", "2"]
    assert all(layer.trainable for layer in load_model(tmp_path / "m.keras").layers)  # prune and QAT train it


@pytest.mark.slow
def test_weights_learned_on_one_folder_make_a_small_other_folder_learnable(tmp_path):
    """Transfer learning helps: a small CNN trained on 2,000 generated `shapes` images (circle, square,
    triangle, plus) is the start for 240 `outlines` images (star, pentagon, X, half disc; other classes).
    From scratch the small folder stays near chance; from those weights it learns. 32 px keeps it ~70 s."""
    from components.prepare import prepare
    from components.synthetic import write_colour_folder
    from components.train import train

    data = Params().data.model_copy(update={"image": ImageSpec(height=32, width=32)})
    write_colour_folder(tmp_path / "shapes", "shapes", images=2000, seed=21)
    write_colour_folder(tmp_path / "outlines", "outlines", images=240, seed=22)
    prepare(data, tmp_path / "shapes", tmp_path / "source")
    prepare(data, tmp_path / "outlines", tmp_path / "target")
    source = train(
        ModelConfig(),
        TrainConfig(epochs=40),
        tmp_path / "source",
        tmp_path / "shapes.keras",
        *_outs(tmp_path, "s"),
    )
    assert source["val_accuracy"] >= 0.75, source  # the weights file holds features worth moving

    def target(pretrained_file):
        config = ModelConfig(pretrained="shapes.keras" if pretrained_file else "none")
        return train(
            config,
            TrainConfig(min_val_accuracy=0.0),  # measure both, whatever they reach
            tmp_path / "target",
            tmp_path / "outlines.keras",
            *_outs(tmp_path, "t"),
            pretrained_file=pretrained_file,
        )

    scratch, transferred = target(None), target(tmp_path / "shapes.keras")
    print(
        f"outlines (240 images): from scratch {scratch['val_accuracy']:.3f}, from shapes.keras "
        f"{transferred['val_accuracy']:.3f}"
    )
    # 4 balanced classes: chance is 0.25, the default learning bar 0.4375
    assert scratch["val_accuracy"] < 0.4375
    assert transferred["val_accuracy"] >= max(0.5, scratch["val_accuracy"] + 0.15)


def _outs(tmp_path, prefix: str):
    return tmp_path / f"{prefix}.json", tmp_path / f"{prefix}.csv"


def test_a_detector_starts_from_imagenet_weights_with_fresh_class_heads_and_trains_both_phases(keras_home):
    """task: detection with model.pretrained: imagenet (auto: MobileNetV2 alpha 0.35, 96 px): the backbone
    layers the SSD detector keeps get Keras' weights from the cache, its class heads start fresh, the box
    heads and the feature heads too (not in the file), and the train step runs the two phases."""
    from components.tasks.detection.scenes import write_detection_set
    from components.tasks.detection.stages.train import CLASS_HEADS

    keras_home.mkdir()
    backbone = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    backbone.save_weights(keras_home / IMAGENET_FILE)
    root = keras_home.parent.parent / "project"
    write_detection_set(root / "data" / "raw", images=24, seed=4)
    params = Params.model_validate(
        {
            "task": "detection",
            "model": {"pretrained": "imagenet"},
            "train": {"epochs": 1, "batch_size": 8, "transfer": {"head_epochs": 1}},
            "detection": {"min_val_map": 0.0},
        }
    )
    paths = ProjectPaths(root)
    get_stage("prepare").run(params, paths)
    metrics = get_stage("train").run(params, paths)
    assert metrics["pretrained"]["source"] == "imagenet" and metrics["pretrained"]["file"] == IMAGENET_FILE
    assert metrics["pretrained"]["sha256"] == file_digest(keras_home / IMAGENET_FILE)
    assert metrics["epochs_run"] == 2  # one epoch per phase
    model = load_model(paths.float_model)
    kept = [layer.name for layer in model.layers if layer.weights and layer.name in backbone_names(backbone)]
    assert metrics["pretrained"]["layers_loaded"] == len(kept) > 50
    assert set(CLASS_HEADS) <= {layer.name for layer in model.layers}
    assert "phase" in (paths.train_history.read_text().splitlines()[0])


def backbone_names(model) -> set[str]:
    return {layer.name for layer in model.layers if layer.weights}
