"""What the `edgepipe` command prints: its consoles, the results of a run, tables."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from components.errors import EdgepipeError

if TYPE_CHECKING:
    from components.results import RunResult

# Logs and CI have no terminal width; keep the results table readable there.
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=150, emoji=False)
err_console = Console(stderr=True)


def user_errors(command):
    """A command whose EdgepipeError (a problem the user can fix) is printed without a traceback, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgepipeError as exc:
            # escape: a message quoting YAML or a path with [brackets] is text, not rich markup
            err_console.print(
                f"[bold red]edgepipe error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper


def print_results(result: RunResult) -> None:
    from components.prepare import describe_data
    from components.registry import redacted
    from components.report import ARTIFACT_COLUMNS, artifact_rows, matrix_columns, matrix_rows

    report = result.report
    console.print(describe_data(result.data), markup=False, highlight=False)
    console.print(
        rich_table(
            f"Validation matrix (float Keras {report.score_name} {report.float_accuracy:.4f}, "
            f"{report.test_images} test images)",
            matrix_columns(report),
            matrix_rows(report),
        )
    )
    console.print(rich_table("Artifacts", ARTIFACT_COLUMNS, artifact_rows(report)))
    registration = result.registration
    if result.latency:
        console.print(f"Latency: {result.latency}")
    console.print(f"Release gates: {'passed' if report.passed else 'FAILED'}")
    console.print(f"Report: {result.report_file} (plots beside it)")
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
    if result.pushed is None:
        console.print("DVC: not pushed (--no-push); `dvc push` sends the outputs to the remote")
    elif result.pushed:
        console.print(f"DVC: pushed {result.pushed} file(s) to the default remote")
    else:
        console.print("DVC: the default remote already holds every output")
    console.print("Look further:")
    if registration.tracking_uri.startswith("sqlite:"):
        console.print(
            f"  mlflow ui --backend-store-uri {registration.tracking_uri}   (run {registration.run_id})"
        )
    else:
        console.print(f"  MLflow UI: {redacted(registration.tracking_uri)}   (run {registration.run_id})")
    console.print(
        "  prefect server start   (then run with PREFECT_API_URL=http://127.0.0.1:4200/api to see it there)"
    )
    console.print("  dvc status; dvc pull models/export/model_int8.tflite   (in another clone)")


def rich_table(title: str, columns: tuple[str, ...], rows: list[dict]) -> Table:
    table = Table(title=title)
    for column in columns:
        numeric = column in ("bytes", "gzip bytes", "bytes/param", "arena bytes")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    return table


def print_sweep(result, project_dir: Path) -> None:
    """The sweep's candidate table, its decision and where to look (flows.sweep.SweepResult)."""
    from components.registry import redacted, tracking_uri
    from flows.sweep import candidate_rows, decision_text

    rows = candidate_rows(result.outcomes, short=True)
    if rows:
        title = f"{result.sweep_id}: {len(rows)} candidates for target {result.outcomes[0].target}"
        console.print(rich_table(title, tuple(rows[0]), rows))
    console.print(
        decision_text(result.chosen, result.unconstrained, result.outcomes), markup=False, highlight=False
    )
    if result.release is not None:
        registration = result.release.registration
        console.print(
            f"Registered MLflow model {registration.model_name} version {registration.version}, git tag "
            f"{registration.git_tag}",
            markup=False,
            highlight=False,
        )
    console.print(
        f"Sweep: {result.seconds:.0f} s. Table {result.table}, Pareto chart {result.chart}; MLflow parent "
        f"run {result.parent_run_id} in {redacted(tracking_uri(project_dir))}; DVC experiments "
        f"{result.sweep_id}-N: `dvc exp show --rev {result.baseline[:7]}` lists them, `dvc exp apply NAME` "
        "brings one back.",
        markup=False,
        highlight=False,
    )
