"""`edgepipe` command line. Errors a user can fix are printed without a traceback (exit code 2)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

import flows  # noqa: F401  (environment before TensorFlow/Prefect)
from components.errors import EdgepipeError
from components.paths import ProjectPaths

app = typer.Typer(
    help="edgepipe: image folder -> pruned, quantised, validated, versioned edge models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Logs and CI have no terminal width; keep the results table readable there.
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=150, emoji=False)
err_console = Console(stderr=True)


def user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgepipeError as exc:
            err_console.print(f"[bold red]edgepipe error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def run(
    params: Path = typer.Option(Path("params.yaml"), help="params file, relative to the project folder"),
    project_dir: Path = typer.Option(Path("."), help="the git + DVC project folder"),
    push: bool = typer.Option(True, help="dvc push the outputs to the default remote at the end"),
) -> None:
    """Run the whole pipeline as a Prefect flow and print the results table."""
    from components.config import load_params
    from flows.pipeline import pipeline

    load_params(project_dir / params)  # fail on a bad params file before Prefect starts
    result = pipeline(params_path=str(params), project_dir=str(project_dir), push=push)
    print_results(result)


def print_results(result: dict) -> None:
    from components.report import ARTIFACT_COLUMNS, MATRIX_COLUMNS, artifact_rows, matrix_rows

    report = result["report"]
    console.print(
        rich_table(
            f"Validation matrix (float Keras top-1 accuracy {report['float_accuracy']:.4f}, "
            f"{report['test_images']} test images)",
            MATRIX_COLUMNS,
            matrix_rows(report),
        )
    )
    console.print(rich_table("Artifacts", ARTIFACT_COLUMNS, artifact_rows(report)))
    registration = result["registration"]
    console.print(f"Release gates: {'passed' if report['gates']['passed'] else 'FAILED'}")
    console.print(f"Report: {result['report_file']} (plots beside it)")
    model = f"MLflow model {registration.model_name} version {registration.version}"
    if registration.new_version:
        console.print(
            f"Registered {model}" + (f", git tag {registration.git_tag}" if registration.git_tag else "")
        )
    elif registration.version:
        console.print(f"{model} already holds these bytes; nothing new registered")
    else:
        console.print("Not registered in MLflow (mlflow.register_model is false in params.yaml)")
    if registration.champion:
        console.print(f"Alias {registration.champion}")
    if result["pushed"] is None:
        console.print("DVC: not pushed (--no-push); `dvc push` sends the outputs to the remote")
    elif result["pushed"]:
        console.print(f"DVC: pushed {result['pushed']} file(s) to the default remote")
    else:
        console.print("DVC: the default remote already holds every output")
    console.print("Look further:")
    console.print(
        f"  mlflow ui --backend-store-uri {registration.tracking_uri}   (run {registration.run_id})"
    )
    console.print(
        "  prefect server start   (then run with PREFECT_API_URL=http://127.0.0.1:4200/api to see it there)"
    )
    console.print("  dvc status; dvc pull models/export/model_int8.tflite   (in another clone)")


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
            "runtimes (* = known not to work, reported only)": ", ".join(
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


def rich_table(title: str, columns: tuple[str, ...], rows: list[dict]) -> Table:
    table = Table(title=title)
    for column in columns:
        numeric = column in ("bytes", "gzip bytes", "bytes/param", "arena bytes")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    return table


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
    """Write the bundled digits if the data folder is empty (when allowed), then `dvc add` it."""
    from components import versioning
    from components.config import load_params
    from components.prepare import ensure_raw_data

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


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
