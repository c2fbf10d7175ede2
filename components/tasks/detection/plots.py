"""Pictures of a detector's results for the report and MLflow: precision-recall curves per class at IoU
0.5, and test images with the float model's and the int8 file's boxes side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.atomic import atomic_path
from components.tasks.detection.decode import Detections
from components.tasks.detection.metrics import RECALLS


def plot_precision_recall(path: Path, curves: dict[str, dict[str, list]], title: str) -> None:
    """`curves`: {model label: coco_map(...)["pr_50"]}; one panel per class, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.2), squeeze=False)
    for ax, name in zip(axes[0], classes, strict=True):
        for label, per_class in curves.items():
            precision = np.array([np.nan if v is None else v for v in per_class[name]], dtype=float)
            ax.plot(RECALLS, precision, label=label)
        ax.set(title=name, xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
    axes[0][0].set_ylabel("precision (IoU 0.5)")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def draw_side_by_side(
    path: Path,
    images: np.ndarray,
    columns: dict[str, list[Detections]],
    classes: list[str],
    min_score: float = 0.3,
) -> None:
    """One row per image (uint8 HxWx3), one column per model: its detections scoring >= min_score drawn
    with class name and score."""
    from PIL import Image, ImageDraw

    scale = max(1, 192 // images.shape[1])
    h, w = images.shape[1] * scale, images.shape[2] * scale
    sheet = Image.new("RGB", (w * len(columns), h * len(images) + 14), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    colours = [(255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255), (0, 220, 220)]
    for col, (label, found) in enumerate(columns.items()):
        draw.text((col * w + 4, 1), label, fill=(0, 0, 0))
        for row, image in enumerate(images):
            picture = Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST)
            pen = ImageDraw.Draw(picture)
            det = found[row]
            for box, cls, score in zip(det.boxes, det.classes, det.scores, strict=True):
                if score < min_score:
                    continue
                y0, x0, y1, x1 = np.clip(box, 0, 1) * [h, w, h, w]
                colour = colours[int(cls) % len(colours)]
                pen.rectangle((x0, y0, x1, y1), outline=colour, width=2)
                pen.text((x0 + 2, max(0, y0 - 11)), f"{classes[int(cls)]} {score:.2f}", fill=colour)
            sheet.paste(picture, (col * w, 14 + row * h))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
