"""`edgepipe` command line. Errors a user can fix are printed without a traceback (exit code 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import yaml
from rich.markup import escape

import flows  # noqa: F401  (environment before TensorFlow/Prefect)
from components.errors import EdgepipeError
from components.paths import ProjectPaths
from flows.cli_data import data_app
from flows.cli_output import console, err_console, print_results, rich_table, user_errors

app = typer.Typer(
    help="edgepipe: image folder -> pruned, quantised, validated, versioned edge models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
@user_errors
def run(
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    project_dir: Path = typer.Option(Path("."), help="the git + DVC project folder"),
    push: bool = typer.Option(True, help="dvc push the outputs to the default remote at the end"),
) -> None:
    """Run the whole pipeline as a Prefect flow and print the results table. When nothing changed since the
    last release (dvc status, the MLflow registry), say so and print its results without starting Prefect."""
    from components.config import load_params
    from components.image_folder import has_images, quick_check
    from components.paths import ProjectPaths
    from components.pretrained import weights_file
    from components.stages import check_params_sections
    from components.tasks.detection.annotations import is_detection_folder, read_detection_set
    from components.up_to_date import unchanged_release

    # What can be checked in seconds fails before Prefect starts: the params and weights files, the data.
    root = project_dir.resolve()
    config = load_params(project_dir / params)
    check_params_sections(project_dir / params)
    weights_file(config.model, config.data.image, root)
    result = unchanged_release(config, root, push)
    if result is not None:
        console.print(
            f"Unchanged: dvc.lock records every step for this data, code and params, and MLflow version "
            f"{result.registration.version} holds the release file; nothing ran.",
            markup=False,
            highlight=False,
        )
    else:
        # only when the flow runs: data an unchanged release was made from passed prepare's check
        raw_dir = ProjectPaths(root).raw_dir(config.data)
        if config.task == "detection":  # every annotation checked (in about a second for 400 images)
            if has_images(raw_dir):
                read_detection_set(raw_dir, config.data.on_bad_image)
        else:
            if is_detection_folder(raw_dir):
                raise EdgepipeError(
                    f"{raw_dir}: holds images/ with labels/ or annotations.json, an annotated detection "
                    "folder, but params.yaml says task: classification (one subfolder per class). Set "
                    "task: detection in params.yaml to train a detector on it."
                )
            quick_check(raw_dir, config.data.on_bad_image)
        from flows.pipeline import pipeline

        result = pipeline(params_path=str(params), project_dir=str(project_dir), push=push)
    print_results(result)


@app.command()
@user_errors
def sweep(
    set_: list[str] = typer.Option(
        [],
        "-S",
        "--set",
        help="KEY=V1,V2: values of one params.yaml key (repeat for a grid), as dvc exp run -S",
    ),
    search: str = typer.Option("grid", help="grid: every combination | optuna: a TPE search of --trials"),
    trials: int = typer.Option(8, min=1, help="--search optuna: candidates to run"),
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    project_dir: Path = typer.Option(Path("."), help="the git + DVC project folder"),
    push: bool = typer.Option(True, help="dvc push the released candidate's outputs"),
) -> None:
    """Run candidate settings as DVC experiments side by side, judge each against the device profile
    (`target:`), and release the best one that passes every gate, as `edgepipe run` would. Exit 2 when none
    does, with what each candidate missed."""
    from flows.cli_output import print_sweep

    if not set_:
        raise EdgepipeError("give at least one -S KEY=V1,V2 (e.g. -S prune.target_sparsity=0.3,0.6)")
    if search not in ("grid", "optuna"):
        raise EdgepipeError(f"--search {search!r}: expected grid or optuna")
    from flows.sweep import NoCandidateFits
    from flows.sweep import sweep as sweep_flow

    try:
        result = sweep_flow(
            options=set_,
            search=search,
            trials=trials,
            params_path=str(params),
            project_dir=str(project_dir),
            push=push,
        )
    except NoCandidateFits as error:
        print_sweep(error.result, project_dir)
        raise
    print_sweep(result, project_dir)


@app.command()
def targets(markdown: bool = typer.Option(False, help="print the Markdown table the README holds")) -> None:
    """The device profiles `target:` in params.yaml names: the budgets the release must fit."""
    from components.targets import PROFILES, deploys_text, latency_text, targets_markdown

    if markdown:
        typer.echo(targets_markdown(), nl=False)
        return
    rows = [
        {
            "target": p.name,
            "device": p.device,
            "model flash": "no limit" if p.flash_bytes is None else f"{p.flash_bytes:,} B",
            "TFLite-Micro arena": "no limit" if p.arena_bytes is None else f"{p.arena_bytes:,} B",
            "latency (build machine)": latency_text(p),
            "deploys (must pass its gates)": deploys_text(p),
        }
        for p in PROFILES
    ]
    console.print(rich_table("edgepipe device profiles (target: in params.yaml)", tuple(rows[0]), rows))
    for p in PROFILES:
        console.print(f"{p.name}: {p.source}.")


@app.command()
def formats(markdown: bool = typer.Option(False, help="print the Markdown table the README holds")) -> None:
    """The format registry: every artifact the pipeline exports and the runtimes that must run it."""
    from components.formats import FORMATS, registry_markdown

    if markdown:
        typer.echo(registry_markdown(), nl=False)
        return
    rows = [
        {
            "format": fmt.name,
            "file": fmt.filename,
            "precision": fmt.precision,
            "made from": fmt.source,
            "runtimes (* = not required: fails on some or all models)": ", ".join(
                t.name + ("" if t.required else "*") for t in fmt.runtimes
            ),
            "converter": ", ".join(f"{k}={v}" for k, v in fmt.converter.items()) or "defaults",
        }
        for fmt in FORMATS
    ]
    console.print(rich_table("edgepipe export formats", tuple(rows[0]), rows))
    for fmt in FORMATS:
        for target in fmt.runtimes:
            if target.note and not target.required:
                console.print(f"* {fmt.name} on {target.name}: {target.note}")


@app.command()
@user_errors
def stage(
    name: str = typer.Argument(..., help="stage name from dvc.yaml"),
    params: Path = typer.Option(Path("params.yaml")),
) -> None:
    """Run one step without Prefect (this is the command in dvc.yaml, used by `dvc repro`)."""
    from components.config import load_params
    from components.stages import get_stage

    config = load_params(params)
    try:
        step = get_stage(name)
    except KeyError:
        raise EdgepipeError(f"unknown stage {name!r}; see dvc.yaml for the stage names") from None
    step.run(config, ProjectPaths(Path.cwd()))


@app.command()
@user_errors
def ingest(params: Path = typer.Option(Path("params.yaml"))) -> None:
    """Write the task's bundled data if the data folder is empty (when allowed), then `dvc add` it."""
    from components import versioning
    from components.bundled_data import ensure_raw_data
    from components.config import load_params

    data = load_params(params).data
    raw_dir = ensure_raw_data(data, ProjectPaths(Path.cwd()).raw_dir(data))
    versioning.track_data(Path.cwd(), raw_dir)
    console.print(f"{raw_dir} is tracked by DVC ({raw_dir}.dvc)")


@app.command("dvc-yaml")
@user_errors
def dvc_yaml(check: bool = typer.Option(False, help="only check that dvc.yaml is up to date")) -> None:
    """Write dvc.yaml from the stage table in components/stages.py."""
    from components.stages import dvc_yaml as generate

    text = render_dvc_yaml(generate(ProjectPaths(Path.cwd())))
    target = Path("dvc.yaml")
    if check:
        if not target.is_file() or target.read_text() != text:
            raise EdgepipeError("dvc.yaml is out of date with components/stages.py; run `edgepipe dvc-yaml`.")
        console.print("dvc.yaml is up to date")
        return
    target.write_text(text)
    console.print(f"wrote {target}")


def render_dvc_yaml(data: dict) -> str:
    header = "# Generated by `edgepipe dvc-yaml` from components/stages.py; edit that, not this file.\n"
    return header + yaml.safe_dump(data, sort_keys=False, width=120)


def warn_if_reachable(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]serve.host is {escape(host)}: the servers have no authentication; anyone who can "
            "reach this address can read and change runs and models.[/]"
        )


@app.command()
@user_errors
def serve(
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    project_dir: Path = typer.Option(Path("."), help="the git + DVC project folder"),
    prefect_port: int = typer.Option(None, help="default: serve.prefect_port in params.yaml"),
    mlflow_port: int = typer.Option(None, help="default: serve.mlflow_port in params.yaml"),
) -> None:
    """Start a Prefect server and an MLflow server on this machine and serve the pipeline: on the cron
    schedule, and whenever the data folder's content changes. Ctrl-C stops everything it started."""
    from components.config import load_params
    from flows.serve import serve as serve_until_stopped

    root = project_dir.resolve()
    config = load_params(root / params)
    warn_if_reachable(config.serve.host)

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    code = serve_until_stopped(
        config,
        root,
        str(params),
        prefect_port or config.serve.prefect_port,
        mlflow_port or config.serve.mlflow_port,
        say,
    )
    raise typer.Exit(code)


@app.command()
@user_errors
def stack(
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    project_dir: Path = typer.Option(Path("."), help="the git + DVC project folder"),
    workers: int = typer.Option(2, min=1, help="process workers on the edgepipe pool"),
) -> None:
    """The team stack without Docker: Prefect and MLflow servers on PostgreSQL (the URLs in
    PREFECT_SERVER_DATABASE_CONNECTION_URL and MLFLOW_BACKEND_STORE_URI, else a throwaway local cluster),
    MLflow's artifacts in the project's mlartifacts/, process workers, and this project deployed on their
    pool. Ctrl-C stops it."""
    from components.config import load_params
    from flows.stack import run_stack

    root = project_dir.resolve()
    config = load_params(root / params)
    warn_if_reachable(config.serve.host)

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    run_stack(config, root, str(params), workers, say)


@app.command()
@user_errors
def deploy(
    pool: str = typer.Option(None, help="Prefect work pool; default: serve.work_pool in params.yaml"),
    name: str = typer.Option("edgepipe", help="deployment name (flow edgepipe)"),
    params: Path = typer.Option(Path("params.yaml")),
    project_dir: Path = typer.Option(Path(".")),
) -> None:
    """Register the pipeline deployment (schedule + new-data trigger) on a Prefect work pool (a process
    pool is created if missing); a worker (`prefect worker start --pool NAME`) runs it. Needs
    PREFECT_API_URL."""
    import os

    from components.config import load_params

    if not os.environ.get("PREFECT_API_URL"):
        raise EdgepipeError(
            "PREFECT_API_URL is not set: point it at the Prefect server (e.g. http://127.0.0.1:4200/api)."
        )
    root = project_dir.resolve()
    config = load_params(root / params)
    from flows.deployment import CRASH_DETECTION, deploy_to_pool, ensure_crash_detection, ensure_work_pool

    pool_name = pool or config.serve.work_pool
    if ensure_work_pool(pool_name):
        console.print(f"Created process work pool {pool_name!r}")
    uuid = deploy_to_pool(config, root, pool_name, str(params), name)
    if ensure_crash_detection():
        console.print(f"Created the automation {CRASH_DETECTION!r}")
    console.print(f"Deployment edgepipe/{name} ({uuid}) on work pool {pool_name!r}; start a worker with:")
    console.print(f"  prefect worker start --pool {pool_name} --type process")


app.add_typer(data_app, name="data")


@app.command("verify-release")
@user_errors
def verify_release(
    tag: str = typer.Argument(..., help="a release tag, e.g. edgepipe-digits@v1 (`git tag -l`)"),
    project_dir: Path = typer.Option(Path(".")),
) -> None:
    """Check that git, DVC and MLflow agree about a release: the tag's dvc.lock, the bytes DVC returns for
    it, and the MLflow model version tagged with it. Exit code 1 if they do not."""
    from components.registry import tracking_uri
    from components.verify import verify_release as run_checks

    root = project_dir.resolve()
    checks = run_checks(root, tag, tracking_uri(root))
    rows = [{"check": c.what, "result": "ok" if c.ok else "MISMATCH", "detail": c.detail} for c in checks]
    console.print(rich_table(f"Release {tag}", ("check", "result", "detail"), rows))
    if not all(c.ok for c in checks):
        console.print(f"Release {tag}: the registries DISAGREE")
        raise typer.Exit(1)
    console.print(f"Release {tag}: git, DVC and MLflow agree")


def main() -> None:
    """The `edgepipe` command: native libraries' start-up lines filtered out of stderr, then the app."""
    from components.quiet import filter_native_stderr

    filter_native_stderr()
    sys.exit(app())


if __name__ == "__main__":
    main()
