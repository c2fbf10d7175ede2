"""Generated colour image folders: what a user's own photos look like, made deterministically from a seed.

Tests and benchmarks judge the model on these instead of the bundled grayscale digits: colour objects on
noisy, coloured backgrounds, at mixed sizes (24-128 px) and aspect ratios, saved as JPEG and PNG, in class
folders whose names have capitals and spaces.

- `shapes`: the class is the shape (circle, square, triangle, plus); colours are random, so only shape
  tells the classes apart. Balanced.
- `outlines`: the same with other shapes (star, pentagon, X, half disc): the target of the
  transfer-learning benchmark, whose source is a large `shapes` folder (other classes, same kind of
  images).
- `signs`: road-sign-like plates (red octagon, red triangle, blue square, yellow diamond, green circle):
  colour and shape tell the class, under other light, on cluttered scenes. Balanced.
- `produce`: the class is colour and shape together (a red round tomato, a yellow oval lemon, ...), with
  lighting changes; the classes are imbalanced (the largest has 5x the smallest), as real folders are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Rng = np.random.Generator
Painter = Callable[[ImageDraw.ImageDraw, tuple[float, float], float, Rng], None]


def _random_colour(rng: Rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(30, 256, 3))


def _polygon(centre: tuple[float, float], radius: float, corners: int, angle: float) -> list[tuple]:
    cx, cy = centre
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / corners),
            cy + radius * math.sin(angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _circle(draw, centre, radius, rng, colour=None):
    cx, cy = centre
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour or _random_colour(rng))


def _square(draw, centre, radius, rng, colour=None):
    draw.polygon(
        _polygon(centre, radius * 1.2, 4, rng.uniform(0, math.pi / 2)), fill=colour or _random_colour(rng)
    )


def _triangle(draw, centre, radius, rng, colour=None):
    draw.polygon(
        _polygon(centre, radius * 1.2, 3, rng.uniform(0, 2 * math.pi)), fill=colour or _random_colour(rng)
    )


def _plus(draw, centre, radius, rng, colour=None):
    cx, cy = centre
    arm, half = radius, radius * 0.32
    fill = colour or _random_colour(rng)
    draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)


def _star(draw, centre, radius, rng, colour=None):
    cx, cy = centre
    turn = rng.uniform(0, 2 * math.pi)
    points = [
        (
            cx + r * math.cos(turn + math.pi * k / 5),
            cy + r * math.sin(turn + math.pi * k / 5),
        )
        for k, r in zip(range(10), [radius * 1.2, radius * 0.5] * 5, strict=True)
    ]
    draw.polygon(points, fill=colour or _random_colour(rng))


def _pentagon(draw, centre, radius, rng, colour=None):
    draw.polygon(
        _polygon(centre, radius * 1.15, 5, rng.uniform(0, 2 * math.pi)), fill=colour or _random_colour(rng)
    )


def _cross(draw, centre, radius, rng, colour=None):
    """An X: two bars at +-45 degrees (give or take 15)."""
    cx, cy = centre
    fill = colour or _random_colour(rng)
    tilt = math.pi / 4 + rng.uniform(-0.26, 0.26)
    for angle in (tilt, tilt + math.pi / 2):
        dx, dy = math.cos(angle), math.sin(angle)
        half = radius * 0.3
        draw.polygon(
            [
                (cx + radius * dx - half * dy, cy + radius * dy + half * dx),
                (cx + radius * dx + half * dy, cy + radius * dy - half * dx),
                (cx - radius * dx + half * dy, cy - radius * dy - half * dx),
                (cx - radius * dx - half * dy, cy - radius * dy + half * dx),
            ],
            fill=fill,
        )


def _half_disc(draw, centre, radius, rng, colour=None):
    cx, cy = centre
    start = rng.uniform(0, 360)
    box = (cx - radius * 1.1, cy - radius * 1.1, cx + radius * 1.1, cy + radius * 1.1)
    draw.pieslice(box, start, start + 180, fill=colour or _random_colour(rng))


def _oval(draw, centre, radius, rng, colour, aspect=0.6):
    cx, cy = centre
    draw.ellipse((cx - radius, cy - radius * aspect, cx + radius, cy + radius * aspect), fill=colour)


def _shade(base: tuple[int, int, int], rng: Rng) -> tuple[int, int, int]:
    """The same hue under other light: brightness x0.6-1.25 and a little per-channel drift."""
    scale = rng.uniform(0.6, 1.25)
    return tuple(int(np.clip(c * scale + rng.normal(0, 12), 0, 255)) for c in base)


def _polygon_painter(corners: int) -> Callable:
    def paint(draw, centre, radius, rng, colour):
        draw.polygon(
            _polygon(centre, radius * 1.1, corners, rng.uniform(-0.15, 0.15) + math.pi / corners), fill=colour
        )
        draw.polygon(_polygon(centre, radius * 0.8, corners, math.pi / corners), outline=(240, 240, 240))

    return paint


def _produce(base: tuple[int, int, int], shape: Callable, **kwargs) -> Painter:
    def paint(draw, centre, radius, rng):
        shape(draw, centre, radius, rng, _shade(base, rng), **kwargs)

    return paint


DATASETS: dict[str, dict[str, tuple[Painter, float]]] = {
    # class folder -> (painter, share of the images)
    "shapes": {
        "Circle": (_circle, 1.0),
        "Square Tile": (_square, 1.0),
        "Triangle": (_triangle, 1.0),
        "Plus Sign": (_plus, 1.0),
    },
    "outlines": {  # like `shapes` (random colours, only the outline tells), with other shapes
        "Star": (_star, 1.0),
        "Pentagon": (_pentagon, 1.0),
        "Cross X": (_cross, 1.0),
        "Half Disc": (_half_disc, 1.0),
    },
    "signs": {
        "Stop": (_produce((190, 25, 30), _polygon_painter(8)), 1.0),
        "Give Way": (_produce((210, 40, 40), _triangle), 1.0),
        "Info": (_produce((30, 70, 190), _square), 1.0),
        "Warning": (_produce((235, 200, 20), _polygon_painter(4)), 1.0),
        "Go": (_produce((40, 160, 60), _circle), 1.0),
    },
    "produce": {
        "Tomato": (_produce((200, 35, 30), _circle), 1.0),
        "Lemon": (_produce((230, 210, 40), _oval), 0.6),
        "Lime": (_produce((70, 170, 40), _circle), 0.4),
        "Plum": (_produce((110, 40, 120), _oval, aspect=0.8), 0.3),
        "Orange Carrot": (_produce((240, 120, 20), _triangle), 0.2),
    },
}


def _background(width: int, height: int, rng: Rng) -> Image.Image:
    """A coloured gradient with pixel noise and a few random blobs of clutter."""
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (
        np.linspace(0, 1, width)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(0, 1, height)[:, None, None]
    )
    pixels = start * (1 - t) + end * t + rng.normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(np.broadcast_to(pixels, (height, width, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, min(width, height) / 8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_random_colour(rng))
    return image


def render(painter: Painter, rng: Rng) -> Image.Image:
    """One image: mixed size and aspect ratio, the object at a random place and scale."""
    width = int(rng.integers(24, 129))
    height = int(np.clip(width * rng.uniform(0.6, 1.6), 24, 128))  # photo-like aspect ratios
    image = _background(width, height, rng)
    side = min(width, height)
    radius = rng.uniform(0.22, 0.4) * side
    centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    painter(ImageDraw.Draw(image), centre, radius, rng)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image


def write_colour_folder(
    root: Path, dataset: str = "shapes", images: int = 600, seed: int = 0
) -> dict[str, int]:
    """Write about `images` images of `dataset` as `root/<class>/<n>.jpg|png`; returns the count per class."""
    classes = DATASETS[dataset]
    total_share = sum(share for _, share in classes.values())
    rng = np.random.default_rng(seed)
    counts = {}
    for name, (painter, share) in classes.items():
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        count = max(8, round(images * share / total_share))
        for i in range(count):
            image = render(painter, rng)
            if i % 2:
                image.save(folder / f"img_{i:04d}.jpg", quality=int(rng.integers(70, 96)))
            else:
                image.save(folder / f"img_{i:04d}.png")
        counts[name] = count
    return counts
