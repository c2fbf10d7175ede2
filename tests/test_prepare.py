"""prepare: image folder -> checked, deterministic, stratified split + manifest; bad data -> clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.bundled_data import ensure_raw_data, write_bundled_digits
from components.config import DataConfig
from components.dataset import load_split, read_dataset_info
from components.errors import EdgepipeError
from components.prepare import prepare
from conftest import write_image_folder


def data_config(**image) -> DataConfig:
    return DataConfig.model_validate(
        {"image": {"height": 16, "width": 16, "channels": 1, **image}, "split": {"seed": 3}}
    )


def test_prepare_writes_stratified_deterministic_split(image_folder, tmp_path):
    config = data_config()
    first = prepare(config, image_folder, tmp_path / "a")
    second = prepare(config, image_folder, tmp_path / "b")
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest_a == manifest_b  # same files, same seed -> same split
    assert first == second
    assert first["classes"] == ["bars", "diagonal", "stripes"]
    assert sum(first["counts"].values()) == 72
    for split in ("train", "val", "test"):
        x, y = load_split(tmp_path / "a", split)
        assert x.shape[1:] == (16, 16, 1) and x.dtype == np.float32
        assert np.bincount(y, minlength=3).min() >= 1  # every class in every split
    assert {f["path"].split("/")[0] for f in manifest_a["files"]} == set(first["classes"])
    assert all(len(f["sha256"]) == 64 for f in manifest_a["files"])


def test_image_spec_is_recorded_and_applied(image_folder, tmp_path):
    config = data_config(channels=3, height=12, width=10, mean=0.5, std=0.25)
    prepare(config, image_folder, tmp_path / "out")
    info = read_dataset_info(tmp_path / "out")
    assert info.input_shape == (12, 10, 3)
    assert info.metadata()["normalization"] == {
        "formula": "(pixel / 255 - mean) / std",
        "mean": 0.5,
        "std": 0.25,
    }
    x, _ = load_split(tmp_path / "out", "train")
    assert x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25


def test_mixed_sizes_modes_suffix_case_and_unicode_names_are_handled(tmp_path):
    raw = write_image_folder(tmp_path / "raw", classes=("chat noir", "café", "Ölfass"), per_class=12)
    Image.new("RGB", (40, 25), (200, 10, 10)).save(raw / "café" / "big_rgb.JPG")
    Image.new("RGBA", (7, 9), (1, 2, 3, 4)).save(raw / "chat noir" / "tiny_rgba.PNG")
    (raw / "Ölfass" / "notes.txt").write_text("not an image, skipped")
    summary = prepare(data_config(), raw, tmp_path / "out")
    assert summary["classes"] == ["café", "chat noir", "Ölfass"]
    assert sum(summary["counts"].values()) == 38


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda raw: (raw / "bars" / "bars_000.png").write_bytes(b""),
            r"bars_000.png: empty \(0-byte\) file",
        ),
        (
            lambda raw: (raw / "bars" / "bars_001.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage" * 3),
            r"not a readable image \(1\): Delete or replace the file\.\n"
            r"\s+\S+bars_001.png: not a readable image",
        ),
        (
            lambda raw: (raw / "stripes" / "photo.jpg").write_text("this is text, not a jpeg"),
            r"photo.jpg: not a readable image",
        ),
        (lambda raw: (raw / "empty class").mkdir(), r"empty class: class folder has no images"),
        (
            lambda raw: Image.new("L", (8, 8)).save(raw / "loose.png"),
            r"images must be inside one subfolder per class, found 1 at the top level \(e.g. loose.png\)",
        ),
        (
            lambda raw: [p.unlink() for p in sorted((raw / "diagonal").glob("*.png"))[3:]],
            r"diagonal: class 'diagonal' has 3 image\(s\); the split .* needs at least 8 per class",
        ),
    ],
    ids=["zero-byte", "corrupt-png", "text-as-jpg", "empty-class", "stray-image", "too-few-images"],
)
def test_bad_data_names_the_file_and_keeps_the_previous_split(image_folder, tmp_path, damage, message):
    out = tmp_path / "prepared"
    prepare(data_config(), image_folder, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    damage(image_folder)
    with pytest.raises(EdgepipeError, match=message):
        prepare(data_config(), image_folder, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_one_class_is_an_error(tmp_path):
    raw = write_image_folder(tmp_path / "raw", classes=("only",))
    with pytest.raises(EdgepipeError, match="found 1 class folder\\(s\\); a classifier needs at least 2"):
        prepare(data_config(), raw, tmp_path / "out")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(EdgepipeError, match="folder not found. Create it with one subfolder per class"):
        prepare(data_config(), tmp_path / "absent", tmp_path / "out")


def test_bundled_digits_fill_an_empty_folder_only_when_allowed(tmp_path):
    raw = tmp_path / "raw"
    allowed = DataConfig.model_validate({"bundled_if_empty": "digits"})
    refused = DataConfig.model_validate({"bundled_if_empty": "none"})
    with pytest.raises(EdgepipeError, match="no images found. Put images in"):
        ensure_raw_data(refused, raw)
    assert ensure_raw_data(allowed, raw) == raw
    assert sorted(p.name for p in raw.iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in raw.rglob("*.png")) == 1797
    with Image.open(next((raw / "3").iterdir())) as img:
        assert img.size == (8, 8) and img.mode == "L"


def test_existing_user_data_is_never_overwritten(image_folder):
    before = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*"))
    ensure_raw_data(DataConfig.model_validate({"bundled_if_empty": "digits"}), image_folder)
    assert sorted(p.relative_to(image_folder) for p in image_folder.rglob("*")) == before


def test_bundled_digits_are_deterministic(tmp_path):
    write_bundled_digits(tmp_path / "a")
    write_bundled_digits(tmp_path / "b")
    a = sorted((p.relative_to(tmp_path / "a"), p.read_bytes()) for p in (tmp_path / "a").rglob("*.png"))
    b = sorted((p.relative_to(tmp_path / "b"), p.read_bytes()) for p in (tmp_path / "b").rglob("*.png"))
    assert a == b
