"""prepare: image folder -> checked, resized, stratified train/val/test split + manifest.

The folder is read and checked by components.image_folder. Images of any size or channel count are
converted to the configured channels and resized (bilinear) to the configured size. Before it, `ingest`
makes sure the folder holds images (components.bundled_data: the bundled digits when allowed).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, write_json
from components.config import ARCHITECTURE_INPUT_SIZE, DataConfig, ImageSpec, Params
from components.errors import EdgepipeError
from components.hashing import file_digest
from components.image_folder import decode_folder, scan_image_folder
from components.paths import ProjectPaths

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W, channels), grayscale by ITU-R 601 luma as PIL computes it."""
    if channels == 3:
        return rgb
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)  # PIL's "L" conversion, rounded
    return ((rgb.astype(np.uint32) @ weights + 0x8000) >> 16).astype(np.uint8)[..., None]


def resolve_image(image: ImageSpec, architecture: str, any_colour: bool) -> dict:
    """The image spec with `auto` decided: channels from the data, size from the architecture."""
    size = ARCHITECTURE_INPUT_SIZE[architecture]
    resolved = image.model_dump(mode="json")
    resolved["height"] = size if image.height == "auto" else image.height
    resolved["width"] = size if image.width == "auto" else image.width
    resolved["channels"] = (3 if any_colour else 1) if image.channels == "auto" else image.channels
    return resolved


def stratified_split(labels: np.ndarray, config: DataConfig, classes: list[str], files: list[Path]) -> dict:
    """Deterministic stratified split of indices into train/val/test."""
    from sklearn.model_selection import train_test_split  # seconds to import: not for describe_data users

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


def prepare(
    config: DataConfig,
    raw_dir: Path,
    out_dir: Path,
    architecture: str = "small_cnn",
    colour_model: bool = False,
) -> dict:
    """Check every image in raw_dir, split, and write `<split>.npz` + manifest.json to out_dir.

    Every problem is found in one pass and reported together; with data.on_bad_image: skip, unreadable
    images are left out and listed in the manifest. `auto` image settings are decided here (channels from
    the data or 3 for a `colour_model` (ImageNet weights), size from `architecture`) and recorded in the
    manifest. raw_dir is only read; out_dir is
    replaced atomically. Returns the summary written to the manifest.
    """
    classes, images, problems = scan_image_folder(raw_dir)
    probe = resolve_image(config.image, architecture, any_colour=False)
    folder = decode_folder(
        raw_dir, classes, images, problems, config.on_bad_image, (probe["height"], probe["width"])
    )
    decoded, kept, colour, skipped = folder.images, folder.kept, folder.colour, folder.skipped
    for problem in skipped:
        log.warning("skipped %s: %s%s", problem.path, problem.kind, problem.detail)
    image = resolve_image(config.image, architecture, any_colour=colour or colour_model)
    arrays = to_channels(np.stack(decoded), image["channels"])
    labels = np.array([item.label for item in kept], dtype=np.int64)
    files = [item.path for item in kept]
    splits = stratified_split(labels, config, classes, files)

    manifest = {
        "classes": classes,
        "image": image,
        "image_chosen": {  # what `auto` decided, and why
            key: f"auto: {reason}"
            for key, reason in (
                (
                    "channels",
                    "colour images found"
                    if colour
                    else "ImageNet weights take colour"
                    if colour_model
                    else "no image has colour",
                ),
                ("height", f"{architecture} input size"),
                ("width", f"{architecture} input size"),
            )
            if getattr(config.image, key) == "auto"
        },
        "layout": "NHWC",
        "normalization": "x = (pixel / 255 - mean) / std",
        "counts": {name: int(len(idx)) for name, idx in splits.items()},
        "class_counts": dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist(), strict=True)),
        "skipped": [
            {"path": p.path.relative_to(raw_dir).as_posix(), "problem": p.kind + p.detail} for p in skipped
        ],
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
    shape = f"{image['height']}x{image['width']}x{image['channels']}"
    log.info(
        "prepared %d images in %d classes at %s (%s): %s",
        len(labels),
        len(classes),
        shape,
        ", ".join(f"{k} {v}" for k, v in manifest["image_chosen"].items()) or "as set in params.yaml",
        manifest["counts"],
    )
    return {
        "classes": classes,
        "counts": manifest["counts"],
        "image": image,
        "image_chosen": manifest["image_chosen"],
        "skipped": len(skipped),
    }


def describe_data(metrics: dict) -> str:
    """One line for the console and the logs: how much data, and the input the model gets (and why)."""
    counts = metrics["counts"]
    chosen = metrics.get("image_chosen", {})
    why = "; ".join(f"{key} {reason}" for key, reason in chosen.items()) or "as set in params.yaml"
    return (
        f"Data: {sum(counts.values())} images in {metrics['classes']} classes "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), "
        f"{metrics.get('skipped', 0)} skipped; model input "
        f"{metrics['image_height']}x{metrics['image_width']}x{metrics['image_channels']} ({why})"
    )


def run_stage(params: Params, paths: ProjectPaths) -> dict:
    """The `prepare` stage: split and resize the raw folder; the summary goes to metrics/prepare.json."""
    summary = prepare(
        params.data,
        paths.raw_dir(params.data),
        paths.prepared_dir,
        params.model.architecture,
        colour_model=params.model.pretrained == "imagenet",
    )
    write_json(
        paths.metrics_file("prepare"),
        {
            "counts": summary["counts"],
            "classes": len(summary["classes"]),
            "skipped": summary["skipped"],
            **{f"image_{key}": summary["image"][key] for key in ("height", "width", "channels")},
            "image_chosen": summary["image_chosen"],
        },
    )
    return summary
