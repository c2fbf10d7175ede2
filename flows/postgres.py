"""A PostgreSQL cluster in a folder, for the team stack on a machine without Docker (`make stack-test`, or
`edgepipe serve --backend postgres` with `--local-postgres`): `initdb`, a loopback port, and one database
per server (`prefect`, `mlflow`), each owned by a login role of its own that has no other rights.

PostgreSQL refuses to run as root; as root every command runs as `nobody` (the cluster's folder is made
for it). Passwords reach PostgreSQL on stdin or in a 0600 file, never on a command line (/proc/*/cmdline
is world-readable)."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

from components.errors import EdgepipeError

SUPERUSER = "postgres"
RUN_AS_WHEN_ROOT = ("nobody", "nogroup")


def pg_binary(name: str) -> str:
    """initdb, pg_ctl, postgres, psql: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None
    )
    if not found:
        raise EdgepipeError(
            f"PostgreSQL's `{name}` was not found; install it (Debian: apt-get install postgresql) or point "
            "the stack at a running server with POSTGRES_HOST/POSTGRES_PORT"
        )
    return found


@dataclass(frozen=True)
class DatabaseRole:
    """A login role owning one database: what one server (Prefect's or MLflow's) connects as."""

    name: str
    database: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def url(self, host: str, port: int, driver: str = "postgresql") -> str:
        return f"{driver}://{self.name}:{quote(self.password, safe='')}@{host}:{port}/{self.database}"


class LocalPostgres:
    """A cluster under `parent` (a fresh folder in the system's temp dir by default), on host:port."""

    def __init__(self, port: int, host: str = "127.0.0.1", parent: Path | None = None):
        self.host, self.port = host, port
        self.base = Path(tempfile.mkdtemp(prefix="edgepipe-pg-", dir=parent))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "postgres.log"
        self.superuser_password = secrets.token_urlsafe(24)
        self._as_user = {}
        if os.geteuid() == 0:
            user, group = RUN_AS_WHEN_ROOT
            shutil.chown(self.base, user, group)
            self._as_user = {"user": user, "group": group, "extra_groups": []}

    def _run(self, cmd: list[str], stdin: str | None = None, env: dict | None = None) -> str:
        done = subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.base,
            env={**os.environ, **(env or {})},
            **self._as_user,
        )
        if done.returncode != 0:
            raise EdgepipeError(
                f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def init(self) -> None:
        """initdb with password authentication (scram-sha-256) for every connection, local ones too."""
        pwfile = self.base / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        if self._as_user:
            shutil.chown(pwfile, *RUN_AS_WHEN_ROOT)
        try:
            self._run(
                [
                    pg_binary("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        # -k: the Unix socket in the cluster's folder (the default /var/run/postgresql needs root)
        options = f"-p {self.port} -h {self.host} -k {self.base}"
        self._run(
            [
                pg_binary("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([pg_binary("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, for fault tests); `start` recovers from the WAL."""
        pid = self.postmaster_pid()
        if pid and psutil.pid_exists(pid):
            postmaster = psutil.Process(pid)
            postmaster.kill()
            postmaster.wait(timeout=10)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; the SQL (and any password in it) goes on stdin."""
        return self._run(
            [pg_binary("psql"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"],
            stdin=sql,
            env={"PGPASSWORD": self.superuser_password},
        )  # fmt: skip

    def create_databases(self, roles: list[DatabaseRole]) -> None:
        """Each role logs in, owns its database and nothing else: no superuser, no CREATEDB/CREATEROLE, no
        access to the other databases (CONNECT revoked from PUBLIC)."""
        for role in roles:
            password = role.password.replace("'", "''")
            self.psql(
                f'CREATE ROLE "{role.name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                f"PASSWORD '{password}';\n"
                f'CREATE DATABASE "{role.database}" OWNER "{role.name}";\n'
                f'REVOKE ALL ON DATABASE "{role.database}" FROM PUBLIC;\n'
            )
            # PostgreSQL 15 no longer lets PUBLIC create in the public schema; the owner does
            self.psql(f'ALTER SCHEMA public OWNER TO "{role.name}";', database=role.database)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except EdgepipeError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
