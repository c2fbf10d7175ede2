"""Reading the prepared dataset: the manifest and normalised splits, as every later step sees them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.atomic import read_json
from components.errors import EdgepipeError


@dataclass(frozen=True)
class DatasetInfo:
    classes: list[str]
    height: int
    width: int
    channels: int
    mean: float
    std: float

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels.astype(np.float32) / 255.0) - self.mean) / self.std

    def metadata(self) -> dict:
        """What a device needs to feed the model: embedded in / logged with every artifact."""
        return {
            "labels": self.classes,
            "input_shape": [1, self.height, self.width, self.channels],
            "layout": "NHWC",
            "normalization": {"formula": "(pixel / 255 - mean) / std", "mean": self.mean, "std": self.std},
        }


def read_dataset_info(prepared_dir: Path) -> DatasetInfo:
    manifest_path = Path(prepared_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise EdgepipeError(f"{manifest_path}: not found. Run the prepare step first (edgepipe run).")
    manifest = read_json(manifest_path)
    image = manifest["image"]
    return DatasetInfo(
        classes=manifest["classes"],
        height=image["height"],
        width=image["width"],
        channels=image["channels"],
        mean=image["mean"],
        std=image["std"],
    )


def load_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised float32 images (N, H, W, C) and int labels of one split."""
    info = read_dataset_info(prepared_dir)
    with np.load(Path(prepared_dir) / f"{split}.npz") as data:
        return info.normalize(data["x"]), data["y"].astype(np.int64)
