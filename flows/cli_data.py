"""`edgepipe data ...`: add images to the data folder, and tell a served pipeline that the data changed."""

from __future__ import annotations

from pathlib import Path

import typer

from components.paths import ProjectPaths
from flows.cli_output import console, user_errors

data_app = typer.Typer(help="New data: add images, and tell a served pipeline that the data changed.")


def _announce(config, root: Path) -> None:
    import os

    from components.datawatch import project_data_watch

    watch = project_data_watch(ProjectPaths(root), config.data)
    change = watch.check()
    if not change.changed:
        console.print(
            f"{change.raw_dir} is unchanged since the last event (sha256 {change.sha256[:12]}); nothing sent"
        )
    elif not os.environ.get("PREFECT_API_URL"):
        console.print(
            f"{change.raw_dir} changed (sha256 {change.sha256[:12]}), but PREFECT_API_URL is not set, so no "
            "event was sent: run `edgepipe run`, or set it to the server `edgepipe serve` printed."
        )
    else:
        from flows.deployment import announce_if_changed

        change = announce_if_changed(watch)
        console.print(
            f"Emitted edgepipe.data.updated for {change.raw_dir} "
            f"(sha256 {change.sha256[:12]}, {change.files} files)"
        )


@data_app.command("add")
@user_errors
def data_add(
    source: Path = typer.Argument(
        ..., help="a folder of class folders, or an image / folder of images with --label"
    ),
    label: str = typer.Option(None, help="the class of the images in SOURCE"),
    params: Path = typer.Option(Path("params.yaml")),
    project_dir: Path = typer.Option(Path(".")),
) -> None:
    """Copy images into the data folder, then emit the new-data event if its content changed."""
    from components.config import load_params
    from components.datawatch import add_images

    root = project_dir.resolve()
    config = load_params(root / params)
    added = add_images(source, root / config.data.raw_dir, label)
    console.print(f"Added {len(added)} image(s) to {root / config.data.raw_dir}")
    _announce(config, root)


@data_app.command("check")
@user_errors
def data_check(
    params: Path = typer.Option(Path("params.yaml")),
    project_dir: Path = typer.Option(Path(".")),
) -> None:
    """Emit the new-data event if the data folder changed since the last event (cron, CI, bucket sync)."""
    from components.config import load_params

    root = project_dir.resolve()
    _announce(load_params(root / params), root)
