"""prepare: image folder -> checked, resized, stratified train/val/test split + manifest.

Input layout: `<raw_dir>/<class name>/<image>` with .png/.jpg/.jpeg/.bmp in any case. Other files
(README, .DS_Store, ...) are skipped and listed in the log. Images of any size or channel count are
converted to the configured channels and resized (bilinear) to the configured size. Class names may
contain spaces and non-ASCII characters; they are kept as written.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from components.atomic import atomic_path, write_json
from components.config import DataConfig, ImageSpec
from components.errors import EdgepipeError
from components.hashing import file_digest

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


def write_bundled_digits(raw_dir: Path) -> int:
    """Write sklearn's bundled 8x8 digits (1,797 images, shipped with scikit-learn) as PNG class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        class_dir = raw_dir / str(target)
        class_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).save(class_dir / f"digit_{index:04d}.png")
    log.info("wrote %d bundled digit images to %s", len(digits.images), raw_dir)
    return len(digits.images)


def has_images(raw_dir: Path) -> bool:
    return raw_dir.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in raw_dir.rglob("*"))


def ensure_raw_data(config: DataConfig, raw_dir: Path) -> Path:
    """Make sure raw_dir holds images: write the bundled digits if it is empty and that is allowed."""
    if raw_dir.exists() and not raw_dir.is_dir():
        raise EdgepipeError(
            f"{raw_dir}: is a file, not a folder. Set data.raw_dir in params.yaml to a folder with one "
            "subfolder per class."
        )
    if has_images(raw_dir):
        return raw_dir
    if config.bundled_if_empty == "none":
        raise EdgepipeError(
            f"{raw_dir}: no images found. Put images in {raw_dir}/<class name>/*.png (or .jpg/.jpeg/.bmp), "
            "or set data.bundled_if_empty: digits in params.yaml to use the bundled dataset."
        )
    write_bundled_digits(raw_dir)
    return raw_dir


def scan_image_folder(raw_dir: Path) -> tuple[list[str], list[LabelledImage]]:
    """List classes (sorted folder names) and their images; raise on layouts that cannot train."""
    if not raw_dir.is_dir():
        raise EdgepipeError(f"{raw_dir}: folder not found. Create it with one subfolder per class.")
    stray = sorted(p.name for p in raw_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if stray:
        raise EdgepipeError(
            f"{raw_dir}: images must be inside one subfolder per class, found {len(stray)} at the top level "
            f"(e.g. {stray[0]}). Move them into {raw_dir}/<class name>/."
        )
    class_dirs = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    images: list[LabelledImage] = []
    classes: list[str] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        accepted = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if skipped:
            log.warning(
                "%s: skipped %d non-image file(s): %s", class_dir, len(skipped), ", ".join(skipped[:5])
            )
        if not accepted:
            raise EdgepipeError(
                f"{class_dir}: class folder has no images (.png/.jpg/.jpeg/.bmp). "
                "Add images or remove the folder."
            )
        for path in accepted:  # names go into manifest.json and model metadata, which are UTF-8
            try:
                path.relative_to(raw_dir).as_posix().encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                raise EdgepipeError(
                    f"{shown}: the name is not valid UTF-8. Rename it (UTF-8 names such as café are fine)."
                ) from None
        label = len(classes)
        classes.append(class_dir.name)
        images.extend(LabelledImage(path, label) for path in accepted)
    if len(classes) < 2:
        raise EdgepipeError(
            f"{raw_dir}: found {len(classes)} class folder(s); a classifier needs at least 2. "
            f"Add one subfolder of images per class."
        )
    return classes, images


def load_image(path: Path, image: ImageSpec) -> np.ndarray:
    """Decode, convert channels and resize one image to uint8 HxWxC. Bad files raise naming the file."""
    if path.stat().st_size == 0:
        raise EdgepipeError(f"{path}: empty (0-byte) file. Delete it or replace it with a valid image.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit: keep the top 8 bits, not a clip
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
            converted = img.convert("L" if image.channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise EdgepipeError(f"{path}: not a readable image ({exc}). Delete or replace the file.") from None
    resized = converted.resize((image.width, image.height), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    return array.reshape(image.height, image.width, image.channels)


def stratified_split(labels: np.ndarray, config: DataConfig, classes: list[str], files: list[Path]) -> dict:
    """Deterministic stratified split of indices into train/val/test."""
    split = config.split
    counts = np.bincount(labels, minlength=len(classes))
    train_fraction = 1.0 - split.val_fraction - split.test_fraction
    needed = math.ceil(1 / min(split.val_fraction, split.test_fraction, train_fraction)) + 1
    for label, count in enumerate(counts):
        if count < needed:
            raise EdgepipeError(
                f"{files[int(np.flatnonzero(labels == label)[0])].parent}: "
                f"class '{classes[label]}' has {count} "
                f"image(s); the split (val {split.val_fraction}, test {split.test_fraction}) needs at least "
                f"{needed} per class. Add images or lower data.split fractions."
            )
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=split.test_fraction, stratify=labels, random_state=split.seed
    )
    val_share = split.val_fraction / (1.0 - split.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=split.seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def prepare(config: DataConfig, raw_dir: Path, out_dir: Path) -> dict:
    """Scan raw_dir, check every image, split, and write `<split>.npz` + manifest.json to out_dir.

    Returns the summary written to the manifest. The folder is replaced atomically.
    """
    classes, images = scan_image_folder(raw_dir)
    arrays = np.stack([load_image(item.path, config.image) for item in images])
    labels = np.array([item.label for item in images], dtype=np.int64)
    files = [item.path for item in images]
    splits = stratified_split(labels, config, classes, files)

    manifest = {
        "classes": classes,
        "image": config.image.model_dump(mode="json"),
        "layout": "NHWC",
        "normalization": "x = (pixel / 255 - mean) / std",
        "counts": {name: int(len(idx)) for name, idx in splits.items()},
        "files": [
            {
                "path": files[i].relative_to(raw_dir).as_posix(),
                "label": int(labels[i]),
                "split": name,
                "sha256": file_digest(files[i]),
            }
            for name, idx in splits.items()
            for i in idx
        ],
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, idx in splits.items():
            np.savez_compressed(tmp / f"{name}.npz", x=arrays[idx], y=labels[idx])
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %d images in %d classes: %s", len(labels), len(classes), manifest["counts"])
    return {"classes": classes, "counts": manifest["counts"]}
