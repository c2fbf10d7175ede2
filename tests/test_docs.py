"""The documentation site builds with `mkdocs build --strict`, and its reference pages are made from the
code (the format registry, the params schema, the CLI), not copied by hand."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import typer

from components.config import Params
from components.formats import FORMATS, registry_markdown
from conftest import PROJECT_ROOT
from flows.cli import app


def test_docs_build_strictly_and_reference_pages_are_generated_from_the_code(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's notice about its successor
    )
    assert result.returncode == 0, result.stdout + result.stderr  # --strict: any warning fails the build

    formats = (site / "reference" / "formats" / "index.html").read_text()
    for fmt in FORMATS:
        assert fmt.filename in formats and fmt.name in formats

    params = (site / "reference" / "params" / "index.html").read_text()
    assert "target_sparsity" in params and "max_arena_bytes" in params
    for key in Params.model_fields:  # a section's heading, or a top-level key's row (`task`)
        assert f'id="{key}"' in params or f"<code>{key}</code>" in params, key

    cli = (site / "reference" / "cli" / "index.html").read_text()
    commands = typer.main.get_command(app).commands
    assert "verify-release" in commands
    for name in commands:
        assert f"edgepipe {name}" in cli, name
    assert "edgepipe data add" in cli and "edgepipe data check" in cli

    # the formats page is the registry's own table (the README holds the same, see test_cli_and_dvc_yaml)
    spec = importlib.util.spec_from_file_location("docs_hooks", PROJECT_ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert registry_markdown() in hooks.formats_markdown()


def test_the_docs_hook_imports_neither_tensorflow_nor_prefect():
    """mkdocs runs docs/hooks.py in its own process: the generated pages must not need the heavy stack."""
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('hooks', 'docs/hooks.py')\n"
        "hooks = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(hooks)\n"
        "for generate in hooks.GENERATORS.values():\n"
        "    generate()\n"
        "heavy = ('tensorflow', 'prefect', 'mlflow', 'dvc', 'cv2', 'components.stages')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
