"""params.yaml is parsed once into a typed config; every mistake names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import Params, load_params
from components.errors import EdgepipeError
from conftest import PROJECT_ROOT, write_params


def test_project_params_file_is_valid():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.model.architecture == "small_cnn"
    assert params.data.raw_dir == Path("data/raw")


def test_tiny_params_round_trip(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml"))
    assert params.data.image.height == 16
    assert params.prune.target_sparsity == 0.5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"train.epoch": 3}, "train.epoch: unknown key"),
        ({"prune.target_sparsity": 1.5}, "prune.target_sparsity: Input should be less than 1"),
        ({"train.epochs": "many"}, "train.epochs: Input should be a valid integer"),
        ({"data.image.channels": 2}, "data.image.channels: Input should be 1, 3 or 'auto'"),
        ({"data.image.height": "tall"}, "data.image.height: Value error, must be a number of pixels from 8"),
        ({"train.augment": {"flip": "diagonal"}}, "train.augment.flip: Input should be 'none', 'horizontal'"),
        ({"data.on_bad_image": "ignore"}, "data.on_bad_image: Input should be 'error' or 'skip'"),
        (
            {"model.architecture": "resnet"},
            "model.architecture: Input should be 'small_cnn' or 'mobilenet_v2'",
        ),
        (
            {"gates.min_agreement": -0.1},
            "gates.min_agreement.default: Input should be greater than or equal to 0",
        ),
        (
            {"gates.max_bytes": {"tflite_int9": 5}},
            "gates.max_bytes: Value error, unknown max_bytes key(s) ['tflite_int9']",
        ),
        (
            {"gates.min_agreement": {"litert": 0.9}},
            "gates.min_agreement: Value error, min_agreement needs a 'default'",
        ),
        ({"model.name": "bad name/with slash"}, "model.name: String should match pattern"),
        (
            {"target": "pi5"},
            "target: Value error, 'pi5' is not a device profile; use auto or one of openmv_h7",
        ),
    ],
)
def test_bad_value_names_the_key(tmp_path, override, expected):
    path = write_params(tmp_path / "params.yaml", override)
    with pytest.raises(EdgepipeError) as info:
        load_params(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_every_bad_key_is_reported_at_once(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"train.epochs": 0, "qat.lr": 1})
    with pytest.raises(EdgepipeError, match="2 invalid setting") as info:
        load_params(path)
    assert "train.epochs" in str(info.value) and "qat.lr: unknown key" in str(info.value)


def test_split_must_leave_training_data(tmp_path):
    path = write_params(
        tmp_path / "p.yaml", {"data.split.val_fraction": 0.45, "data.split.test_fraction": 0.45}
    )
    with pytest.raises(EdgepipeError, match="val_fraction \\+ test_fraction must leave at least 20%"):
        load_params(path)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(EdgepipeError, match="file not found. Run from the project folder or pass --params"):
        load_params(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [epochs: 3\n")
    with pytest.raises(EdgepipeError, match="not valid YAML"):
        load_params(path)


def test_sections_are_frozen_and_hashed_independently(tiny_params):
    other = tiny_params.model_copy(update={"qat": tiny_params.qat.model_copy(update={"epochs": 5})})
    assert tiny_params.section_digest("train") == other.section_digest("train")
    assert tiny_params.section_digest("qat") != other.section_digest("qat")
    with pytest.raises(Exception, match="frozen"):
        tiny_params.train.epochs = 3  # type: ignore[misc]


def test_defaults_are_valid():
    assert Params().train.epochs >= 1


def test_the_target_device_sets_the_size_gates_left_auto():
    """`target:` picks a profile of components/targets.py; its budgets fill the `auto` size gates, a number
    in `gates:` wins, and a device without a flash budget leaves no size limit."""
    import yaml

    from components.targets import get_profile

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    shipped = Params.model_validate(raw)
    assert shipped.target == "openmv_h7"
    assert shipped.gates.max_bytes == {"tflite_int8": 262144} and shipped.gates.max_arena_bytes == 262144
    detector = Params.model_validate(raw | {"task": "detection"})
    assert detector.target == "openmv_h7_plus" and detector.gates.max_bytes == {"tflite_int8": 524288}
    board = Params.model_validate(raw | {"target": "cortex_m4_256k"})
    profile = get_profile("cortex_m4_256k")
    assert board.gates.max_bytes == {"tflite_int8": profile.flash_bytes} == {"tflite_int8": 786432}
    assert board.gates.max_arena_bytes == profile.arena_bytes == 163840
    mine = Params.model_validate(
        raw | {"target": "esp32_s3_psram", "gates": raw["gates"] | {"max_arena_bytes": 1000}}
    )
    assert mine.gates.max_arena_bytes == 1000 and mine.gates.max_bytes == {"tflite_int8": 3 * 1024 * 1024}
    pi = Params.model_validate(raw | {"target": "raspberry_pi_4"})
    assert pi.gates.max_bytes == {} and pi.gates.max_arena_bytes is None
    assert pi.gates.max_latency_ms == 5.0 and shipped.gates.max_latency_ms is None  # the H7: no budget
    faster = Params.model_validate(
        raw | {"target": "desktop_opencv", "gates": raw["gates"] | {"max_latency_ms": 1}}
    )
    assert faster.gates.max_latency_ms == 1.0


def test_a_params_file_without_target_is_told_to_add_target_auto(tmp_path):
    """`target` is read by validate (a DVC param), so an older params.yaml without it stops before anything
    runs, and the line to paste is `target: auto` (the task's device), not the classifier's resolved one."""
    import yaml

    from components.stages import check_params_sections

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw.pop("target")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw | {"task": "detection"}))
    with pytest.raises(EdgepipeError) as info:
        check_params_sections(path)
    assert "missing section(s) target (read by validate)" in str(info.value)
    assert str(info.value).rstrip().endswith("target: auto")
    # the same for every key a task resolves: a detector's missing `qat` is not given the classifier's batch
    raw.pop("qat")
    path.write_text(yaml.safe_dump(raw | {"task": "detection"}))
    with pytest.raises(EdgepipeError) as info:
        check_params_sections(path)
    pasted = yaml.safe_load(str(info.value).split("run again:", 1)[1])
    assert pasted == {"qat": {"epochs": 2, "batch_size": "auto", "learning_rate": 0.0001}, "target": "auto"}
