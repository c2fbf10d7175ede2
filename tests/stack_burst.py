"""One process of the stack's load scenario (tests/test_stack_scenarios.py): add one new image to the data
folder and emit the new-data event, `--events` times, `--interval` seconds apart, as `edgepipe data add` does
from a cron job or a bucket sync. Prints one JSON line per event sent: {"sha256": ..., "sent": epoch s}.

Usage: python tests/stack_burst.py PROJECT --label CLASS --events 10 --interval 1 --seed 0
(with PREFECT_API_URL set)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from components.config import load_params
    from components.datawatch import add_images, project_data_watch
    from components.paths import ProjectPaths
    from flows.deployment import announce_if_changed

    root = args.project.resolve()
    config = load_params(root / "params.yaml")
    watch = project_data_watch(ProjectPaths(root), config.data)
    examples = sorted((root / config.data.raw_dir / args.label).glob("*.png"))
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.events):
            started = time.monotonic()
            image = Path(scratch) / f"burst{args.seed}_{i:03d}.png"
            # a new picture of the class: one of its images with fresh noise
            pixels = np.asarray(Image.open(examples[i % len(examples)]), np.float32)
            noisy = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(image)
            add_images(image, root / config.data.raw_dir, args.label)
            change = announce_if_changed(watch)
            if change.changed:
                print(json.dumps({"sha256": change.sha256, "sent": time.time()}), flush=True)
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))

    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)  # the events are on the server before this process ends


if __name__ == "__main__":
    main()
