"""The user's image folder, read and checked: `<raw_dir>/<class name>/<image>` with .png/.jpg/.jpeg/.bmp in
any case. Other files (README, .DS_Store, ...) are skipped and listed in the log. Every file that cannot be
used is a DataProblem; all of them are collected and reported at once, each kind with its fix. Class names
may contain spaces and non-ASCII characters; they are kept as written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.errors import EdgepipeError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


def has_images(raw_dir: Path) -> bool:
    return raw_dir.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in raw_dir.rglob("*"))


@dataclass(frozen=True)
class DataProblem:
    """One file or folder that cannot be used, found by the data check (all are collected, then reported)."""

    path: Path
    kind: str  # one of PROBLEM_FIXES
    detail: str


# kind -> what the user should do about it
PROBLEM_FIXES = {
    "not a readable image": "Delete or replace the file.",
    "empty (0-byte) file": "Delete it or replace it with a valid image.",
    "class folder has no images (.png/.jpg/.jpeg/.bmp)": "Add images or remove the folder.",
    "name is not valid UTF-8": "Rename it (UTF-8 names such as café are fine).",
}
SKIPPABLE = ("not a readable image", "empty (0-byte) file")
# What Pillow raises for a file it cannot read as an image (a bomb: more pixels than it accepts)
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError)
LISTED = 50  # problems named per report; the rest are counted


def describe_problems(
    raw_dir: Path,
    problems: list[DataProblem],
    skippable: bool,
    fixes: dict[str, str] = PROBLEM_FIXES,
    skip_does: str = "leave unreadable images out of training",
) -> str:
    """Every problem at once, grouped by kind, each with its fix (`fixes`: kind -> fix): one run finds them
    all. `skip_does`: what data.on_bad_image: skip would do instead."""
    lines = [f"{raw_dir}: {len(problems)} problem(s) in the data, nothing changed. Fix them and run again"]
    if skippable:
        lines[0] += f" (or set data.on_bad_image: skip to {skip_does})"
    lines[0] += ":"
    listed = 0
    for kind, fix in fixes.items():
        group = [p for p in problems if p.kind == kind]
        if not group:
            continue
        lines.append(f"  {kind} ({len(group)}): {fix}")
        for problem in group[: max(0, LISTED - listed)]:
            lines.append(f"    {problem.path}: {kind}{problem.detail}")
        listed += len(group)
    if listed > LISTED:
        lines.append(f"  ... and {listed - LISTED} more (the first {LISTED} are named above)")
    return "\n".join(lines)


def scan_image_folder(raw_dir: Path) -> tuple[list[str], list[LabelledImage], list[DataProblem]]:
    """List classes (sorted folder names), their images and the problems found (empty class folders,
    names that are not UTF-8); raise at once only on layouts that cannot train at all."""
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
    problems: list[DataProblem] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        accepted = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if skipped:
            log.warning(
                "%s: skipped %d non-image file(s): %s", class_dir, len(skipped), ", ".join(skipped[:5])
            )
        if not accepted:
            problems.append(DataProblem(class_dir, "class folder has no images (.png/.jpg/.jpeg/.bmp)", "."))
            continue
        for path in accepted:  # names go into manifest.json and model metadata, which are UTF-8
            try:
                path.relative_to(raw_dir).as_posix().encode("utf-8")
            except UnicodeEncodeError:
                shown = Path(os.fsencode(path).decode("utf-8", "backslashreplace"))
                problems.append(DataProblem(shown, "name is not valid UTF-8", ""))
        label = len(classes)
        classes.append(class_dir.name)
        images.extend(LabelledImage(path, label) for path in accepted)
    if len(classes) < 2 and not problems:
        raise EdgepipeError(
            f"{raw_dir}: found {len(classes)} class folder(s); a classifier needs at least 2. "
            f"Add one subfolder of images per class."
        )
    return classes, images, problems


class BadImage(Exception):
    def __init__(self, problem: DataProblem):
        super().__init__(problem.detail)
        self.problem = problem


def decode_image(path: Path, height: int, width: int) -> tuple[np.ndarray, bool]:
    """Decode and resize one image to uint8 HxWx3 (RGB), and whether it has colour. Grayscale sources are
    expanded channel-equal, so converting back to one channel gives exactly their pixels. A file that
    cannot be used raises BadImage carrying the problem."""
    if path.stat().st_size == 0:
        raise BadImage(DataProblem(path, "empty (0-byte) file", "."))
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit: keep the top 8 bits, not a clip
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
            coloured = img.mode not in ("1", "L", "LA", "I", "F") and not img.mode.startswith("I;")
            rgb = img.convert("RGB")
    except UNREADABLE as exc:
        raise BadImage(DataProblem(path, "not a readable image", f" ({exc})")) from None
    array = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
    return array, coloured and has_colour(array)


@dataclass(frozen=True)
class DecodedFolder:
    images: list[np.ndarray]  # uint8 HxWx3 (RGB), in the order of `kept`
    kept: list[LabelledImage]
    skipped: list[DataProblem]  # left out under data.on_bad_image: skip
    colour: bool  # some kept image has colour


def decode_folder(
    raw_dir: Path,
    classes: list[str],
    images: list[LabelledImage],
    problems: list[DataProblem],
    on_bad_image: str,
    size: tuple[int, int],
) -> DecodedFolder:
    """Decode every image at `size` (height, width). Raises one EdgepipeError listing every problem that
    blocks training: all of them with on_bad_image "error"; with "skip", those unreadable images cannot fix
    (an empty or non-UTF-8 name, a class left without any readable image)."""
    decoded, kept, colour = [], [], False
    problems = list(problems)
    for item in images:
        try:
            array, coloured = decode_image(item.path, *size)
        except BadImage as bad:
            problems.append(bad.problem)
            continue
        decoded.append(array)
        kept.append(item)
        colour = colour or coloured
    skipped = [p for p in problems if p.kind in SKIPPABLE]
    blocking = [p for p in problems if on_bad_image == "error" or p.kind not in SKIPPABLE]
    emptied = sorted(set(range(len(classes))) - {item.label for item in kept})
    blocking += [
        DataProblem(
            raw_dir / classes[c],
            "class folder has no images (.png/.jpg/.jpeg/.bmp)",
            ": all of them are unreadable",
        )
        for c in emptied
        if on_bad_image == "skip"
    ]
    if blocking:
        raise EdgepipeError(describe_problems(raw_dir, blocking, skippable=on_bad_image == "error"))
    return DecodedFolder(decoded, kept, skipped, colour)


def quick_check(raw_dir: Path, on_bad_image: str) -> None:
    """The data check of `edgepipe run`, in seconds and before anything starts: the folder layout and each
    image's header (Pillow reads the header only). When that finds a problem, every image is decoded, as
    `prepare` does, so that one message lists all of them. A folder without images is left to `ingest`
    (bundled data or its own message); an image whose header is fine but whose data is not is found by
    `prepare`."""
    if not has_images(raw_dir):
        return
    classes, images, problems = scan_image_folder(raw_dir)
    if problems or not all(header_readable(item.path) for item in images):
        decode_folder(raw_dir, classes, images, problems, on_bad_image, size=(8, 8))


def header_readable(path: Path) -> bool:
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path):
            return True
    except UNREADABLE:
        return False


def has_colour(rgb: np.ndarray) -> bool:
    """True when more than 1% of pixels differ between channels by more than JPEG noise (12 levels): a
    grayscale photo saved as RGB counts as grayscale."""
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    return bool(np.mean(spread > 12) > 0.01)
