"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary folder, a free port.

``initdb`` refuses to run as root and CI runs as root, so under root the server runs as the unprivileged
user ``postgres`` (made by Debian's postgresql-common) through ``runuser``; otherwise as the user running
the tests. Authentication: ``trust`` on the unix socket only, in a folder of mode 0700 owned by the
server's user (only that user and root can reach it: the fixture's administration), and
``scram-sha-256`` with a password on 127.0.0.1 (what a central is configured with: URL without the
password, the password from a secret reference). ``fsync`` is off: a test server need not survive power
loss. One server per test session (per xdist worker); each test gets a fresh database cloned from
``template0``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from edge.central.postgres.migrations import RUNTIME_GROUP
from tests.prerequisites import require

SUPERUSER = "edge_test"


def postgres_bindir() -> Path | None:
    """Where Debian keeps initdb and pg_ctl (``pg_config --bindir``, diverted by postgresql-common)."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(done.stdout.strip())
        if done.returncode == 0 and (candidate / "initdb").is_file():
            return candidate
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path
    port: int
    password: str = field(repr=False)  # never in a benchmark's output or a failure
    # How the fixture runs pg_ctl (as the server's user), for a test that restarts the server.
    pg_ctl: tuple[str, ...] = ()
    data_dir: Path = Path()
    options: str = ""
    log_file: Path = Path()

    def restart(self) -> None:
        """Restart the server (``-m fast``: every session is cut, as a crash or a failover would) and wait
        until it accepts connections again, on the same port."""
        # -l: the restarted server must not inherit this call's pipes (the call would wait for it to end).
        done = subprocess.run([*self.pg_ctl, "-D", str(self.data_dir), "-l", str(self.log_file), "-m", "fast",
                               "-w", "-t", "120", "-o", self.options, "restart"],
                              capture_output=True, text=True, check=False, timeout=180)
        assert done.returncode == 0, done.stderr + done.stdout

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """Over the unix socket (trust): the fixture's own administration."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """What a central is configured with: TCP, no password in it."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@contextlib.contextmanager
def running_postgres(max_connections: int = 40) -> Iterator[PostgresServer]:
    """A server for as long as the block runs: the session fixture's, and a benchmark's
    (tests/bench/central_load.py), which is no pytest session. Outside pytest a failure raises pytest's
    ``Failed`` with the server's log, as inside."""
    bindir = postgres_bindir()
    require(bindir is not None, "needs PostgreSQL's initdb and pg_ctl (Debian: postgresql)")
    assert bindir is not None
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = None
        require(account is not None, "needs the user postgres to run the server as (Debian: postgresql)")
        assert account is not None
        prefix = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="edge-pg-"))  # in /tmp: traversable by the server's user
    password = secrets.token_urlsafe(18)
    pwfile = folder / "superuser.pw"
    pwfile.write_text(password + "\n")
    if as_root:
        os.chown(folder, account.pw_uid, account.pw_gid)  # type: ignore[union-attr]
        os.chown(pwfile, account.pw_uid, account.pw_gid)  # type: ignore[union-attr]
    os.chmod(folder, 0o700)
    data = folder / "data"
    port = _free_port()
    logfile = folder / "server.log"

    def run(*argv: str) -> None:
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = logfile.read_text(errors="replace") if logfile.exists() else ""
            pytest.fail(f"{argv[0]} failed ({done.returncode}): {done.stderr}{done.stdout}\n{log}")

    run(str(bindir / "initdb"), "-D", str(data), "--no-sync", "-U", SUPERUSER, "-E", "UTF8",
        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
    pwfile.unlink()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
               f"-c max_connections={max_connections}")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "-o", options, "start")
    try:
        yield PostgresServer(folder, port, password, (*prefix, str(bindir / "pg_ctl")), data, options,
                             logfile)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, check=False, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class PostgresDatabaseUnderTest:
    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    @property
    def password(self) -> str:
        return self.server.password

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the socket (autocommit): the attacker with database access."""
        return psycopg.connect(self.server.admin_conninfo(self.name), autocommit=True)


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[PostgresDatabaseUnderTest]:
    """A fresh, empty database for one test (cloned from template0), dropped afterwards."""
    with fresh_database(pg_server) as database:
        yield database


@contextlib.contextmanager
def fresh_database(pg_server: PostgresServer) -> Iterator[PostgresDatabaseUnderTest]:
    """A fresh, empty database (cloned from template0) for as long as the block runs. STRATEGY file_copy:
    with fsync off, copying the template's files is quicker than WAL-logging them (measured here: about
    0.4 s of setup a test instead of 1 s, the migrations included)."""
    name = f"edge_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY file_copy".encode())
    try:
        yield PostgresDatabaseUnderTest(pg_server, name)
    finally:
        with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


OWNER_PASSWORD_ENV = "EDGE_TEST_PG_OWNER_PASSWORD"
RUNTIME_PASSWORD_ENV = "EDGE_TEST_PG_RUNTIME_PASSWORD"


@dataclass(frozen=True)
class SplitRoles:
    """A database owned by ``owner`` (a login role without superuser or CREATEROLE, as an agency DBA would
    make it), and ``runtime``, a login role that is a member of edge_central_runtime and owns nothing."""

    database: PostgresDatabaseUnderTest
    owner: str
    runtime: str
    owner_password: str = field(repr=False)
    runtime_password: str = field(repr=False)

    def url(self, role: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.database.server.port}/{self.database.name}"

    def connect(self, role: str, password: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(role), password=password, autocommit=True)

    def index(self, monkeypatch: pytest.MonkeyPatch, *, with_owner: bool = True) -> dict[str, Any]:
        monkeypatch.setenv(OWNER_PASSWORD_ENV, self.owner_password)
        monkeypatch.setenv(RUNTIME_PASSWORD_ENV, self.runtime_password)
        index: dict[str, Any] = {"type": "postgresql", "url": self.url(self.runtime),
                                 "password": f"env:{RUNTIME_PASSWORD_ENV}"}
        if with_owner:
            index |= {"owner_url": self.url(self.owner), "owner_password": f"env:{OWNER_PASSWORD_ENV}"}
        return index


@pytest.fixture
def split_roles(pg_server: PostgresServer) -> Iterator[SplitRoles]:
    suffix = uuid.uuid4().hex[:10]
    owner, runtime = f"edge_owner_{suffix}", f"edge_runtime_{suffix}"
    owner_password, runtime_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as admin:
        for role, password in ((owner, owner_password), (runtime, runtime_password)):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                             sql.Literal(password)))
        # The DBA's steps (README): the group (the owner may not create roles), granted to the runtime login.
        admin.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_GROUP}') "
                      f"THEN CREATE ROLE {RUNTIME_GROUP} NOLOGIN; END IF; END $$".encode())
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(RUNTIME_GROUP),
                                                       sql.Identifier(runtime)))
    try:
        with fresh_database(pg_server) as database:
            with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as admin:
                # PostgreSQL 15: the public schema belongs to the database's owner, who may create in it.
                admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database.name),
                                                                              sql.Identifier(owner)))
            yield SplitRoles(database, owner, runtime, owner_password, runtime_password)
    finally:
        with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}, {}").format(sql.Identifier(owner),
                                                                       sql.Identifier(runtime)))
