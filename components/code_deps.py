"""Each stage's code dependencies, derived from the imports of its module (not listed by hand).

A stage depends on its module and on every project module that module imports, at the top or inside a
function, followed transitively, plus the package `__init__.py` that any import of it runs. dvc.yaml lists
these files, so `dvc repro` re-runs a stage when any of them changes.

An import whose line ends with NOT_A_STAGE_DEPENDENCY is skipped: the params schema checks gate keys
against the format registry that way, and the typed results name the registry's Registration for type
checking only; neither can change what a stage writes.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PROJECT_PACKAGES = ("components", "flows")
NOT_A_STAGE_DEPENDENCY = "# not a stage dependency"
ROOT = Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """`components.prepare` -> components/prepare.py (or a package's __init__.py); None if it is not one."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The project modules one source file imports."""
    lines = path.read_text().splitlines()
    found: set[str] = set()
    for node in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom) and lines[node.lineno - 1].endswith(
            NOT_A_STAGE_DEPENDENCY
        ):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from components import atomic` imports the module components.atomic
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PROJECT_PACKAGES)
    return found


@functools.cache
def code_dependencies(module: str, root: Path = ROOT) -> tuple[str, ...]:
    """Every project source file that importing `module` (and calling its functions) can run, as sorted
    paths relative to the project root."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]), root)
            if path is None or path in seen:
                continue
            seen.add(path)
            pending.extend(imported_modules(path))
    return tuple(sorted(path.relative_to(root).as_posix() for path in seen))
