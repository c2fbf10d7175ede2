"""docker/: the image and the compose stack, checked without a Docker engine (there is none on the development
machine or in CI). compose.yaml validates against the Compose specification's JSON schema (tests/data), every
command the stack runs exists in this venv and accepts every flag the stack passes, the settings it passes
through the environment are real Prefect/MLflow settings, the services agree with each other (hosts, ports,
databases, pool), no secret is written in the files, and the Dockerfile keeps its promises."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from conftest import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SCHEMA_FILE = PROJECT_ROOT / "tests" / "data" / "compose-spec.json"
VENV_BIN = Path(sys.executable).parent

COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
IMAGE = "edgepipe:latest"
EDGEPIPE_SERVICES = sorted(name for name, s in SERVICES.items() if s.get("image") == IMAGE)

# Values docker compose would take from docker/.env; the password is a made-up test value.
TEST_ENV = {"POSTGRES_PASSWORD": "pw-from-env-0123", "POSTGRES_USER": "edgepipe-test", "EDGEPIPE_UID": "1000"}


# ---------------------------------------------------------------------------------------------------- helpers


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        present = name in env if op in ("-", "?") else bool(env.get(name))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise KeyError(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    pattern = r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}"
    return re.sub(pattern, substitute, value)


def variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def environment(service: dict, env: dict[str, str] = TEST_ENV) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def image_entrypoint() -> list[str]:
    entrypoints = [json.loads(args) for keyword, args in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    return entrypoints[-1]


def argv(service: dict) -> list[str]:
    """What the container runs: the service's entrypoint (else the image's) followed by its command."""
    entrypoint = service.get("entrypoint")
    command = service.get("command") or []
    entrypoint = image_entrypoint() if entrypoint is None else entrypoint
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return [interpolate(str(word), TEST_ENV) for word in entrypoint + command]


def split_argv(words: list[str]) -> tuple[list[str], list[str]]:
    """(executable + subcommand words, --flags): subcommands are the words before the first option."""
    first_option = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    flags = [word.split("=", 1)[0] for word in words[first_option:] if word.startswith("--")]
    return words[:first_option], flags


def option_value(words: list[str], flag: str) -> str:
    assert flag in words, f"{flag} not in {words}"
    return words[words.index(flag) + 1]


@functools.cache
def help_text(*command: str) -> str:
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1", TERM="dumb")
    result = subprocess.run(
        [str(VENV_BIN / command[0]), *command[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, f"{' '.join(command)} --help failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def healthcheck_code(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3]


def urls_in(text: str) -> list[str]:
    return re.findall(r"https?://[^\s'\"]+", text)


# ------------------------------------------------------------------------------------- schema and structure


def test_schema_file_is_the_one_documented_in_tests_data_readme():
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    readme = (SCHEMA_FILE.parent / "README.md").read_text()
    assert f"sha256 of `compose-spec.json` (this file): `{digest}`" in readme


def test_compose_file_validates_against_the_compose_spec_schema():
    schema = json.loads(SCHEMA_FILE.read_text())
    # validator_for() does not recognise the schema's "https://json-schema.org/draft-07/schema" spelling and
    # would silently fall back to the latest draft, so the draft is picked from $schema here.
    assert "draft-07" in schema["$schema"]
    validator_class = jsonschema.Draft7Validator
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []

    # The schema is strict: a misspelt key or an unknown depends_on condition is an error.
    typo = {**COMPOSE, "services": {**SERVICES, "postgres": {**SERVICES["postgres"], "helthcheck": {}}}}
    assert not validator.is_valid(typo)
    worker = {**SERVICES["worker"], "depends_on": {"prefect-server": {"condition": "healthy"}}}
    assert not validator.is_valid({**COMPOSE, "services": {**SERVICES, "worker": worker}})


def test_the_stack_has_its_services_and_one_edgepipe_image_built_from_the_dockerfile():
    assert {"postgres", "prefect-server", "mlflow-server", "worker", "deploy"} <= set(SERVICES)
    assert EDGEPIPE_SERVICES == ["deploy", "mlflow-server", "prefect-server", "worker"]
    for name in EDGEPIPE_SERVICES:
        build = SERVICES[name]["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == PROJECT_ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
    assert SERVICES["deploy"]["restart"] == "no"
    assert "version" not in COMPOSE  # obsolete in the Compose specification


def test_healthchecks_and_depends_on_service_healthy_only_on_services_with_a_healthcheck():
    for name in ("postgres", "prefect-server", "mlflow-server", "worker"):
        assert "healthcheck" in SERVICES[name], name
    for name, service in SERVICES.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, (name, dependency)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits for {dependency}'s healthcheck"
    assert SERVICES["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["mlflow-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["deploy"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


def test_python_healthchecks_compile_and_call_the_port_and_health_path_of_their_own_server():
    from mlflow.server.security_utils import HEALTH_ENDPOINTS

    for name in EDGEPIPE_SERVICES:
        if "healthcheck" in SERVICES[name]:
            compile(healthcheck_code(SERVICES[name]), f"<{name} healthcheck>", "exec")
    prefect_port = option_value(argv(SERVICES["prefect-server"]), "--port")
    assert urls_in(healthcheck_code(SERVICES["prefect-server"])) == [
        f"http://127.0.0.1:{prefect_port}/api/health"
    ]
    mlflow_port = option_value(argv(SERVICES["mlflow-server"]), "--port")
    assert urls_in(healthcheck_code(SERVICES["mlflow-server"])) == [f"http://127.0.0.1:{mlflow_port}/health"]
    # MLflow answers /health whatever the Host header (it is exempt from --allowed-hosts)
    assert "/health" in HEALTH_ENDPOINTS


# ------------------------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("name", EDGEPIPE_SERVICES)
def test_command_executable_is_a_console_script_of_the_venv(name):
    executable = argv(SERVICES[name])[0]
    assert executable in {"prefect", "mlflow", "edgepipe"}
    assert executable in {ep.name for ep in entry_points(group="console_scripts")}
    assert (VENV_BIN / executable).is_file()


@pytest.mark.parametrize("name", [n for n in EDGEPIPE_SERVICES if argv(SERVICES[n])[0] == "edgepipe"])
def test_edgepipe_subcommand_and_its_options_exist_in_the_typer_app(name):
    import typer

    from flows.cli import app

    words, flags = split_argv(argv(SERVICES[name]))
    command = typer.main.get_command(app)
    # Typer vendors click (typer._click): groups are recognised by their `commands`, not by click.Group.
    for word in words[1:]:  # walk nested groups (`edgepipe data add`)
        subcommands = getattr(command, "commands", None)
        assert subcommands is not None, f"`{command.name}` has no subcommands, `{word}` in {name}"
        assert word in subcommands, f"`edgepipe {word}` (service {name}) is not a command of flows.cli"
        command = subcommands[word]
    assert getattr(command, "commands", None) is None, f"{' '.join(words)} is a group, not a command"
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    assert set(flags) <= options, f"{' '.join(words)} has no option {sorted(set(flags) - options)}"


@pytest.mark.parametrize(
    "name", [n for n in EDGEPIPE_SERVICES if argv(SERVICES[n])[0] in {"prefect", "mlflow"}]
)
def test_server_and_worker_commands_accept_every_flag_the_stack_passes(name):
    words, flags = split_argv(argv(SERVICES[name]))
    assert flags, name
    text = help_text(*words)
    assert text.startswith(f"Usage: {' '.join(words)}"), text[:200]
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert missing == [], f"`{' '.join(words)} --help` does not list {missing}"


def test_the_commands_are_the_ones_the_stack_needs():
    from prefect.workers.process import ProcessWorker

    assert argv(SERVICES["prefect-server"])[:3] == ["prefect", "server", "start"]
    assert argv(SERVICES["mlflow-server"])[:2] == ["mlflow", "server"]
    worker = argv(SERVICES["worker"])
    assert worker[:3] == ["prefect", "worker", "start"]
    assert option_value(worker, "--type") == ProcessWorker.type
    # the worker polls the pool the deployment is registered on, and its healthcheck asks for that pool
    pool = option_value(worker, "--pool")
    assert option_value(argv(SERVICES["deploy"]), "--pool") == pool
    assert argv(SERVICES["deploy"])[:2] == ["edgepipe", "deploy"]
    assert f"/work_pools/{pool}'" in healthcheck_code(SERVICES["worker"])
    assert "--with-healthcheck" in worker  # the 127.0.0.1:8080/health its healthcheck calls
    # servers listen on every interface of their container (the compose network), not its loopback
    for name in ("prefect-server", "mlflow-server"):
        assert option_value(argv(SERVICES[name]), "--host") == "0.0.0.0"
    assert option_value(argv(SERVICES["mlflow-server"]), "--artifacts-destination") == "/mlartifacts"


# ----------------------------------------------------------------------------- environment and consistency


def test_every_prefect_variable_is_a_prefect_setting_and_takes_effect(monkeypatch):
    import prefect.settings

    dockerfile_env = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "ENV")
    sources = {name: environment(SERVICES[name]) for name in EDGEPIPE_SERVICES}
    sources["Dockerfile"] = dict(re.findall(r"(PREFECT_\w+)=(\S+)", dockerfile_env))
    checked = 0
    for source, env in sources.items():
        for key, value in env.items():
            if not key.startswith("PREFECT_"):
                continue
            setting = getattr(prefect.settings, key)  # AttributeError: "... is not a Prefect setting"
            monkeypatch.setenv(key, value)
            actual = setting.value_from(prefect.settings.Settings())
            monkeypatch.delenv(key)
            if value in ("true", "false"):
                assert actual is (value == "true"), (source, key, actual)
            else:
                assert str(actual) == value, (source, key, actual)
            checked += 1
    assert checked >= 5


def test_mlflow_server_takes_its_postgres_backend_from_the_environment():
    from mlflow.cli import server

    option = next(p for p in server.params if p.name == "backend_store_uri")
    env = environment(SERVICES["mlflow-server"])
    assert option.envvar in env  # MLFLOW_BACKEND_STORE_URI: the password stays off the command line
    url = make_url(env[option.envvar])
    assert url.drivername == "postgresql"  # psycopg2, installed by the Dockerfile
    assert "--backend-store-uri" not in argv(SERVICES["mlflow-server"])


def test_database_urls_point_at_the_postgres_service_and_the_databases_its_init_script_creates():
    sql = (DOCKER / "postgres-init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", sql, flags=re.IGNORECASE))
    mounts = SERVICES["postgres"]["volumes"]
    assert any(
        (COMPOSE_FILE.parent / m.split(":")[0]).resolve() == DOCKER / "postgres-init.sql"
        and m.split(":")[1].startswith("/docker-entrypoint-initdb.d/")
        for m in mounts
    )
    urls = {
        "prefect-server": make_url(
            environment(SERVICES["prefect-server"])["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
        ),
        "mlflow-server": make_url(environment(SERVICES["mlflow-server"])["MLFLOW_BACKEND_STORE_URI"]),
    }
    assert urls["prefect-server"].drivername == "postgresql+asyncpg"  # Prefect needs the async driver
    assert {url.database for url in urls.values()} == created == {"prefect", "mlflow"}
    postgres_env = environment(SERVICES["postgres"])
    for url in urls.values():
        assert (url.host, url.port) == ("postgres", 5432)
        assert url.username == postgres_env["POSTGRES_USER"] == TEST_ENV["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"] == TEST_ENV["POSTGRES_PASSWORD"]


def test_worker_and_deploy_reach_the_servers_by_service_name_and_port(monkeypatch):
    from components.registry import tracking_uri

    prefect_port = option_value(argv(SERVICES["prefect-server"]), "--port")
    mlflow_port = option_value(argv(SERVICES["mlflow-server"]), "--port")
    for name in ("worker", "deploy"):
        assert environment(SERVICES[name])["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api"
        assert SERVICES[name]["working_dir"] == "/project"
        assert "..:/project" in SERVICES[name]["volumes"]
    tracking = environment(SERVICES["worker"])["MLFLOW_TRACKING_URI"]
    assert tracking == f"http://mlflow-server:{mlflow_port}"
    # the pipeline's own lookup picks it up, and MLflow accepts that Host header (it answers 403 otherwise)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    assert tracking_uri(PROJECT_ROOT) == tracking
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = option_value(argv(SERVICES["mlflow-server"]), "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, f"mlflow-server:{mlflow_port}")
    assert is_allowed_host_header(allowed, f"127.0.0.1:{mlflow_port}")  # the browser, via the published port
    assert not is_allowed_host_header(allowed, f"attacker.example:{mlflow_port}")


# ------------------------------------------------------------------------------------------ exposure, secrets


def test_ports_are_published_on_127_0_0_1_only():
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
                published[name] = f"{port['published']}:{port['target']}"
            else:
                host_ip, _, rest = str(port).partition(":")
                assert host_ip == "127.0.0.1" and rest.count(":") == 1, (name, port)
                published[name] = rest
    assert published == {"prefect-server": "4200:4200", "mlflow-server": "5000:5000"}
    assert option_value(argv(SERVICES["prefect-server"]), "--port") == "4200"
    assert option_value(argv(SERVICES["mlflow-server"]), "--port") == "5000"
    assert "postgres" not in published and "expose" not in SERVICES["postgres"]


def test_no_secret_is_written_in_the_compose_file_or_the_env_example():
    text = COMPOSE_FILE.read_text()
    # every value of a *PASSWORD* / *SECRET* / *TOKEN* variable is one ${...} reference, never a literal
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", str(value)), (name, key)
    # with the ${...} references taken out, nothing is left after a `password:` / `password=`
    literal = re.compile(r"password[ \t]*[=:][ \t]*[^\s#]", flags=re.IGNORECASE)
    assert not literal.search(re.sub(r"\$\{[^}]*\}", "", text))
    assert literal.search("POSTGRES_PASSWORD: hunter2") and literal.search("?password=hunter2")
    # a password inside a URL (environment or command) is the variable's value, so never a literal
    urls = 0
    for service in SERVICES.values():
        for value in [*environment(service).values(), *argv(service)]:
            if "://" in value and "@" in value:
                assert make_url(value).password == TEST_ENV["POSTGRES_PASSWORD"], value
                urls += 1
    assert urls == 2
    # ... and a required variable: compose stops when it is unset
    references = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(references) == 3 and all(ref.startswith(":?") for ref in references)
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        environment(SERVICES["postgres"], env={})
    # .env.example documents every variable the compose file reads, and holds no password
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert variables(text) <= set(example)
    assert example["POSTGRES_PASSWORD"] == ""
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ------------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_base_image_is_pinned_by_exact_tag():
    bases = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert bases and len(set(bases)) == 1, bases  # every stage on the same base
    image, _, tag = bases[0].partition(":")
    assert image == "python"
    assert re.fullmatch(r"3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", tag), tag
    assert "latest" not in tag
    postgres = SERVICES["postgres"]["image"]
    assert re.fullmatch(r"postgres:\d+\.\d+(-\w+)?", postgres), postgres


def test_dockerfile_runs_as_a_non_root_user_that_owns_its_volumes():
    instructions = dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    # numeric uid:gid from the build argument (default 1000), the ids the user and its group are created with
    assert users and users[-1] == "${EDGEPIPE_UID}:${EDGEPIPE_UID}"
    assert ("ARG", "EDGEPIPE_UID=1000") in instructions
    assert SERVICES["worker"]["build"]["args"]["EDGEPIPE_UID"] == "${EDGEPIPE_UID:-1000}"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r'groupadd --gid "\$\{EDGEPIPE_UID\}" (\w+)', runs)
    user = re.search(r'useradd [^&]*--uid "\$\{EDGEPIPE_UID\}" [^&]*?(\w+)\s*&&', runs).group(1)
    assert user == "edgepipe"
    # named volumes start as a copy of the image's folder, owner included: the user must own the mount points
    owned = re.search(rf"install -d -o {user} -g {user} ([^&]+)", runs).group(1).split()
    for name in EDGEPIPE_SERVICES:
        for volume in SERVICES[name].get("volumes", []):
            assert interpolate(volume, TEST_ENV).split(":")[1] in owned, (name, volume)
    # `prefect server start` copies its UI into PREFECT_UI_STATIC_DIRECTORY (site-packages belongs to root)
    ui_dir = re.search(
        r"PREFECT_UI_STATIC_DIRECTORY=(\S+)", runs + " ".join(a for k, a in instructions if k == "ENV")
    )
    assert ui_dir and ui_dir.group(1) in owned
    assert "HEALTHCHECK" not in {keyword for keyword, _ in instructions}  # per service, in compose.yaml
    assert image_entrypoint() == ["edgepipe"]


def test_dockerfile_installs_the_lock_then_the_project_without_dependencies():
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    joined = " ".join(runs)
    assert "uv pip sync --system requirements.lock" in joined
    makefile_uv = re.search(r'"uv==([\d.]+)"', (PROJECT_ROOT / "Makefile").read_text()).group(1)
    assert re.search(rf'"uv=={re.escape(makefile_uv)}"', joined)  # the uv the Makefile uses
    assert re.search(r"uv pip install --system --no-deps \.", joined)
    lock = dict(
        line.split("==", 1)
        for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    )
    # the PostgreSQL drivers: psycopg2 (mlflow server) pinned here, asyncpg (prefect server) from the lock
    assert re.search(r'"psycopg2-binary==\d+\.\d+\.\d+"', joined)
    assert "asyncpg" in lock or re.search(r'"asyncpg==\d+\.\d+\.\d+"', joined)
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    copies = [args for keyword, args in instructions if keyword == "COPY"]
    assert any(c.startswith("requirements.lock") for c in copies)


def test_dockerfile_apt_installs_the_runtime_libraries_and_leaves_no_lists_or_build_tools():
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    apt = [run for run in runs if "apt-get install" in run]
    assert len(apt) == 1
    (apt,) = apt
    assert "--no-install-recommends" in apt
    packages = set(re.search(r"apt-get install ([^&]+)", apt).group(1).split()) - {
        "-y",
        "--no-install-recommends",
    }
    assert {"git", "libglib2.0-0", "libgomp1"} <= packages
    assert not packages & {"build-essential", "gcc", "g++", "make", "cmake", "python3-dev", "libpq-dev"}
    assert "rm -rf /var/lib/apt/lists/*" in apt  # in the same layer, so the lists never land in the image
    assert all("pip install" not in run or "--no-cache-dir" in run or "uv " in run for run in runs)


# -------------------------------------------------------------------------------------------- build context


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(regex(pattern.lstrip("!").strip("/")).fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy_or_secret():
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")  # BuildKit's per-Dockerfile ignore file
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and line[0] != "#"]
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert {"requirements.lock", "pyproject.toml", "README.md", "components", "flows"} <= set(sources)
    for source in sources:
        path = PROJECT_ROOT / source
        assert path.exists(), source
        files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
        assert files, source
        for file in files:
            if "__pycache__" not in file.parts:
                assert not dockerignore_excludes(file.relative_to(PROJECT_ROOT).as_posix(), patterns), file
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/raw/0/a.png",
        "models/export/model.tflite",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/x",
        "mlflow.db",
        "docker/.env",
        "flows/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(heavy, patterns), heavy
