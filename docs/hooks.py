"""mkdocs hook: the reference pages are generated from the code at build time, not copied by hand.

A page holds a placeholder such as `<!-- generated: formats -->`; `on_page_markdown` replaces it with
Markdown made from the code: the format registry (`components/formats.py`), the params schema
(`components/config.py`), the validation report (`components/results.py`), the `edgepipe` CLI
(`flows/cli.py`, through Typer) and the stage table
(`dvc.yaml`, which a test keeps equal to `components/stages.py`). Only light modules are imported here:
never TensorFlow, Prefect or `components.stages`.
"""

from __future__ import annotations

import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PLACEHOLDER = re.compile(r"<!-- generated: ([a-z_]+) -->")
# A note for readers of the raw Markdown on GitHub, where the generated parts are missing; not for the site.
GITHUB_ONLY = re.compile(r"<!-- github-only -->.*?<!-- /github-only -->\n*", re.S)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    def expand(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown placeholder 'generated: {name}'")
        return GENERATORS[name]()

    return PLACEHOLDER.sub(expand, GITHUB_ONLY.sub("", markdown))


def _cell(text: object) -> str:
    """Text for one Markdown table cell: one line, pipes escaped, `<` outside code spans not read as HTML."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- export formats ----------------------------------------------------------------------------------------


def formats_markdown() -> str:
    from components.formats import FORMATS, RELEASE_FORMAT, registry_markdown

    converter_rows = [
        (
            f"`{fmt.name}`",
            fmt.container,
            fmt.description,
            ", ".join(f"`{key}={value}`" for key, value in fmt.converter.items()) or "converter defaults",
        )
        for fmt in FORMATS
    ]
    notes = [
        f"- `{fmt.name}` on `{target.name}`: {target.note}"
        for fmt in FORMATS
        for target in fmt.runtimes
        if target.note and not target.required
    ]
    return "\n".join(
        [
            registry_markdown(),
            f"The release file (registered in MLflow, packaged for microcontrollers): `{RELEASE_FORMAT}`.\n",
            "### What each file is and how it is converted\n",
            _table(("format", "container", "what it is for", "converter options"), converter_rows),
            "### Runtimes not required: known to fail on every model or on some (run every time, reported)\n",
            "\n".join(notes) + "\n",
        ]
    )


# --- params.yaml -------------------------------------------------------------------------------------------


def _is_section(annotation: object) -> bool:
    from pydantic import BaseModel

    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _constraints(metadata: list) -> list[str]:
    words = []
    for item in metadata:
        for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attribute, None) is not None:
                words.append(f"{symbol} {getattr(item, attribute)}")
        if getattr(item, "min_length", None) is not None:
            words.append(f"at least {item.min_length} character(s)")
        if getattr(item, "pattern", None):
            words.append(f"matches `{item.pattern}`")
    return words


def _type_name(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{_yaml_value(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        base, *metadata = args
        limits = _constraints([m for info in metadata for m in getattr(info, "metadata", [info])])
        return _type_name(base) + (f" ({', '.join(limits)})" if limits else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        key, value = args
        keys = "name" if key is str else _type_name(key)
        return f"map of {keys} → {_type_name(value)}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _field_comments(model: type) -> dict[str, str]:
    """The comments written beside or just above each field in the class body of `model`."""
    source = inspect.getsource(model)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"    (\w+)\s*:", line)
        if not match or match.group(1) not in model.model_fields:
            continue
        above, previous = [], number - 1
        while previous >= 1 and lines[previous - 1].strip().startswith("#"):
            above.insert(0, comments.get(previous, ""))
            previous -= 1
        found[match.group(1)] = " ".join([*above, comments.get(number, "")]).strip()
    return found


def _shipped_params() -> dict:
    import yaml

    path = ROOT / "params.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _shipped_comments() -> dict[str, str]:
    """The comment on each key's line in the shipped params.yaml, by dotted key. A comment that goes on
    over the next lines (`#   ...`, on their own or beside other keys) is joined to the key it began on."""
    path = ROOT / "params.yaml"
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing sections
    last = None  # the key whose comment a `#   ...` line continues
    for text in path.read_text().splitlines() if path.is_file() else []:
        code, _, comment = text.partition("#")
        continued = comment.startswith("   ")
        match = re.match(r"^( *)([A-Za-z_]\w*):", code)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            if comment and not continued:
                last = ".".join(k for _, k in stack)
                found[last] = comment.strip()
                continue
        if comment and continued and last:
            found[last] += " " + comment.strip()
        elif match or not text.strip():  # a key without a comment, or a blank line, ends it
            last = None
    return found


_ABSENT = object()


def _lookup(tree: object, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _sentences(*parts: str | None) -> str:
    """Join description fragments into one cell, each ending with a full stop."""
    kept = [" ".join(part.split()) for part in parts if part and part.strip()]
    return " ".join(text if text[-1] in ".!?)" else text + "." for text in kept)


def params_markdown() -> str:
    from components.config import Params

    shipped, shipped_comments = _shipped_params(), _shipped_comments()
    out: list[str] = []

    def section(model: type, prefix: str, level: int) -> None:
        out.append(f"{'#' * level} `{prefix}`\n")
        doc = model.__dict__.get("__doc__")  # the class's own docstring, not pydantic's BaseModel one
        if doc:
            out.append(_help_text(doc) + "\n")
        comments = _field_comments(model)
        rows, nested = [], []
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}"
            # the schema's own words first; else the comment on the key in the shipped params.yaml
            described = _sentences(field.description, comments.get(name)) or _sentences(
                shipped_comments.get(key)
            )
            if _is_section(field.annotation):
                nested.append((field.annotation, key))
                link = f"see [`{key}`](#{key.replace('.', '')})"
                rows.append((f"`{name}`", "section", link, "", described))
                continue
            kind = _type_name(field.annotation)
            limits = _constraints(field.metadata)
            if limits:
                kind += f" ({', '.join(limits)})"
            default = field.get_default(call_default_factory=True)
            value = _lookup(shipped, key)
            in_file = "—" if value is _ABSENT else f"`{_yaml_value(value)}`"
            rows.append((f"`{name}`", kind, f"`{_yaml_value(default)}`", in_file, described))
        out.append(_table(("key", "type", "default", "shipped params.yaml", "description"), rows))
        for child, key in nested:
            section(child, key, level + 1)

    top = [(n, f) for n, f in Params.model_fields.items() if not _is_section(f.annotation)]
    if top:  # top-level keys that are values, not sections (`task`)
        out.append("## Top-level keys\n")
        rows = []
        for name, field in top:
            value = _lookup(shipped, name)
            in_file = "—" if value is _ABSENT else f"`{_yaml_value(value)}`"
            described = _sentences(field.description, shipped_comments.get(name))
            default = f"`{_yaml_value(field.get_default())}`"
            rows.append((f"`{name}`", _type_name(field.annotation), default, in_file, described))
        out.append(_table(("key", "type", "default", "shipped params.yaml", "description"), rows))
    for name, field in Params.model_fields.items():
        if _is_section(field.annotation):
            section(field.annotation, name, 2)
    return "\n".join(out)


# --- the edgepipe command line ------------------------------------------------------------------------------


def _help_text(text: str | None) -> str:
    paragraphs = inspect.cleandoc(text or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _default(param) -> str:
    if param.required:
        return "required"
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return f"`{param.opts[0] if param.default else param.secondary_opts[0]}`"
    if param.default is None:
        return "—"
    return f"`{param.default}`"


def cli_markdown() -> str:
    import typer

    from flows.cli import app

    root = typer.main.get_command(app)
    out = [_help_text(root.help) + "\n"]

    def command(cmd, ctx, path: str, level: int) -> None:
        out.append(f"{'#' * level} `{path}`\n")
        out.append(_help_text(cmd.help) + "\n")
        out.append(f"```\n{cmd.get_usage(ctx)}\n```\n")
        rows = [
            (f"`{param.get_help_record(ctx)[0]}`", _default(param), param.help or "")
            for param in cmd.params
            if not getattr(param, "hidden", False)
        ]
        if rows:
            out.append(_table(("argument / option", "default", "help"), rows))
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    sub_ctx = sub.context_class(sub, info_name=name, parent=ctx)
                    command(sub, sub_ctx, f"{path} {name}", level + 1)

    ctx = root.context_class(root, info_name="edgepipe")
    for name in root.list_commands(ctx):
        sub = root.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            command(sub, sub.context_class(sub, info_name=name, parent=ctx), f"edgepipe {name}", 2)
    return "\n".join(out)


# --- the pipeline's stages ----------------------------------------------------------------------------------


def stages_markdown() -> str:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def files(entries: list) -> str:
        names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
        return ", ".join(f"`{n}`" for n in names) or "—"

    rows = []
    for name, stage in stages.items():
        deps = stage.get("deps", [])
        data = [d for d in deps if not d.endswith(".py")]
        rows.append(
            (
                f"`{name}`",
                ", ".join(f"`{p}`" for p in stage.get("params", [])) or "—",
                files(data),
                files(stage.get("outs", [])),
                files(stage.get("metrics", []) + stage.get("plots", [])),
                str(len(deps) - len(data)),
            )
        )
    header = ("stage", "params.yaml sections", "reads", "writes", "metrics and plots", "code files")
    return _table(header, rows)


# --- the validation report ---------------------------------------------------------------------------------


def results_markdown() -> str:
    from components.results import Artifact, Cell, GateVerdict, ValidationReport

    out = []
    for model in (ValidationReport, Artifact, Cell, GateVerdict):
        out.append(f"## `{model.__name__}`\n")
        doc = model.__dict__.get("__doc__")
        if doc:
            out.append(_help_text(doc) + "\n")
        comments = _field_comments(model)
        rows = [
            (f"`{name}`", _type_name(field.annotation), comments.get(name, ""))
            for name, field in model.model_fields.items()
        ]
        out.append(_table(("field", "type (null: left out of the file)", "meaning"), rows))
    return "\n".join(out)


GENERATORS = {
    "formats": formats_markdown,
    "results": results_markdown,
    "params": params_markdown,
    "cli": cli_markdown,
    "stages": stages_markdown,
}
