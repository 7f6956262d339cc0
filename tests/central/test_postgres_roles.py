"""Least privilege on PostgreSQL (issue 13): the owner's URL applies the migrations, the receivers run as a
role that owns nothing and holds only edge_central_runtime's grants, so PostgreSQL itself refuses them
DROP, ALTER ... DISABLE TRIGGER, and UPDATE or DELETE of history; a schema the runtime cannot migrate is
refused at start with the owner's step; a single-role install keeps working, warned once."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from edge.central.auth import DEV_STATION_HEADER
from edge.central.cli import add_central_parser
from edge.central.config import CentralConfig, PostgresIndexConfig, load_central_config, parse_central_config
from edge.central.postgres import PostgresDatabase, RuntimeRoleError, SchemaBehind
from edge.central.postgres.migrations import RUNTIME_GROUP, known_migrations, owns_schema, schema_version
from edge.central.service import start_central
from edge.config.base import ConfigError
from edge.runtime.exit_codes import ExitCode
from tests.central.conftest import (
    FakeStation,
    enroll,
    free_port,
    register_over_http,
    start_http_central,
)
from tests.central.pg import (
    OWNER_PASSWORD_ENV,
    PostgresDatabaseUnderTest,
    SplitRoles,
)

INSUFFICIENT_PRIVILEGE = "42501"


def _refused(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> str:
    """The SQLSTATE PostgreSQL refuses ``statement`` with (nothing is changed: it fails)."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement.encode())
    return str(caught.value.sqlstate)


async def test_split_roles_start_register_and_the_runtime_cannot_tamper(
    tmp_path: Path, split_roles: SplitRoles, monkeypatch: pytest.MonkeyPatch, station: FakeStation,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=split_roles.index(monkeypatch))
    try:
        enroll(central.store_index, station)
        async with aiohttp.ClientSession() as session:
            status, doc = await register_over_http(session, central.url, station, station.acquire(b"x" * 999),
                                                   {DEV_STATION_HEADER: station.station_id})
        assert status == 201, doc
    finally:
        await central.running.stop()

    with split_roles.connect(split_roles.runtime, split_roles.runtime_password) as runtime:
        assert owns_schema(runtime) is False
        assert schema_version(runtime) == known_migrations()[-1].version
        # Refused by PostgreSQL's privileges (42501), before any trigger is asked: the rules cannot be
        # switched off, the history cannot be edited even by a statement the triggers would not see.
        for statement in ("DROP TABLE merkle_leaves", "ALTER TABLE merkle_leaves DISABLE TRIGGER ALL",
                          "ALTER TABLE items DISABLE TRIGGER items_no_change", "TRUNCATE merkle_leaves",
                          "UPDATE merkle_leaves SET entry = entry", "DELETE FROM merkle_leaves",
                          "UPDATE items SET size = size", "DELETE FROM items",
                          "INSERT INTO schema_version (version, name) VALUES (999, 'x')"):
            assert _refused(runtime, statement) == INSUFFICIENT_PRIVILEGE, statement
        # Control: what the receivers need is granted (a work queue's update and delete, the log read).
        runtime.execute("UPDATE lock_extensions_pending SET attempts = attempts + 1 WHERE false")
        runtime.execute("DELETE FROM console_sessions WHERE false")
        assert runtime.execute("SELECT count(*) FROM merkle_leaves").fetchone() == (1,)

    with split_roles.connect(split_roles.owner, split_roles.owner_password) as owner:
        # Control: the owner can (which is why the receivers must not be it); rolled back at once.
        with pytest.raises(_Rollback), owner.transaction():
            owner.execute("ALTER TABLE merkle_leaves DISABLE TRIGGER ALL")
            raise _Rollback
        granted = owner.execute(
            "SELECT privilege_type, table_name FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND privilege_type IN ('UPDATE', 'DELETE')", (RUNTIME_GROUP,)).fetchall()
    # Exactly the tables the code updates or deletes from (the audit in 0007_runtime_role.sql).
    assert {t for p, t in granted if p == "UPDATE"} == {
        "stations", "readers", "item_case", "officers", "devices", "cases", "console_accounts",
        "reader_grants", "station_units", "item_sensitive", "console_sessions", "fleet_reports",
        "tus_uploads", "lock_extensions_pending"}
    assert {t for p, t in granted if p == "DELETE"} == {
        "reader_grants", "item_sensitive", "item_sensitive_readers", "console_sessions", "tus_uploads",
        "lock_extensions_pending"}


class _Rollback(Exception):
    pass


def _run_central_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", *argv])
    status: int = args.func(args)
    return status


def _config_file(tmp_path: Path, index: dict[str, Any]) -> Path:
    entries = ", ".join(f'{key} = "{value}"' for key, value in index.items())
    path = tmp_path / ("owner.toml" if "owner_url" in index else "central.toml")
    path.write_text(
        f'[central]\nid = "central-pg"\nstore_dir = "{tmp_path / "store"}"\nindex = {{{entries}}}\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n'
        f'insecure_plain_http = true\n', encoding="utf-8")
    return path


def test_a_schema_behind_is_refused_at_start_with_the_owner_step(
    tmp_path: Path, split_roles: SplitRoles, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_owner = _config_file(tmp_path, split_roles.index(monkeypatch))
    assert _run_central_cli("init", "--config", str(with_owner)) == 0
    newest = known_migrations()[-1]
    runtime_only = _config_file(tmp_path, split_roles.index(monkeypatch, with_owner=False))
    admin = split_roles.database.admin()
    # The schema one version behind the code (as after upgrading the central's package).
    admin.execute("DELETE FROM schema_version WHERE version = %s", (newest.version,))
    capsys.readouterr()
    assert _run_central_cli("run", "--config", str(runtime_only)) == ExitCode.CONFIG
    _, err = capsys.readouterr()
    assert f"at version {newest.version - 1}" in err and "central.index.owner_url" in err
    assert split_roles.runtime_password not in err and split_roles.owner_password not in err

    admin.close()
    # The owner's step the message names, and without the owner's URL it is refused.
    assert _run_central_cli("migrate-schema", "--config", str(runtime_only)) == ExitCode.CONFIG
    assert _run_central_cli("migrate-schema", "--config", str(with_owner)) == ExitCode.OK
    # Control: the schema current again, the same runtime-only configuration starts.
    asyncio.run(_start_and_stop(load_central_config(runtime_only)))


async def _start_and_stop(config: CentralConfig) -> None:
    running = await start_central(config)
    assert running.url.startswith("http://127.0.0.1:")
    await running.stop()


def test_an_empty_database_the_runtime_cannot_create_names_the_owner_step(split_roles: SplitRoles) -> None:
    runtime_url = split_roles.url(split_roles.runtime)
    with pytest.raises(SchemaBehind, match="migrate-schema") as caught:
        PostgresDatabase.open(runtime_url, password=split_roles.runtime_password)
    assert split_roles.runtime_password not in str(caught.value)
    # Control: once the owner migrated (as `edge central migrate-schema` does), the runtime alone opens it.
    PostgresDatabase.open(runtime_url, password=split_roles.runtime_password,
                          owner_url=split_roles.url(split_roles.owner),
                          owner_password=split_roles.owner_password).close()
    PostgresDatabase.open(runtime_url, password=split_roles.runtime_password).close()


def test_the_runtime_must_own_nothing_and_be_in_the_group(
    split_roles: SplitRoles, pg_database: PostgresDatabaseUnderTest,
) -> None:
    # An owner URL with a runtime role that owns the tables (the superuser) is refused.
    with pytest.raises(RuntimeRoleError, match="owns"):
        PostgresDatabase.open(pg_database.url, password=pg_database.password, owner_url=pg_database.url,
                              owner_password=pg_database.password)
    # A runtime login outside edge_central_runtime is refused with the DBA's GRANT.
    with split_roles.database.admin() as admin:
        admin.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(RUNTIME_GROUP),
                                                         sql.Identifier(split_roles.runtime)))
    arguments: dict[str, Any] = {"password": split_roles.runtime_password,
                                 "owner_url": split_roles.url(split_roles.owner),
                                 "owner_password": split_roles.owner_password}
    with pytest.raises(RuntimeRoleError, match=f"GRANT {RUNTIME_GROUP} TO {split_roles.runtime}"):
        PostgresDatabase.open(split_roles.url(split_roles.runtime), **arguments)
    # Control: granted, the same open succeeds.
    with split_roles.database.admin() as admin:
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(RUNTIME_GROUP),
                                                       sql.Identifier(split_roles.runtime)))
    PostgresDatabase.open(split_roles.url(split_roles.runtime), **arguments).close()


def test_a_single_role_install_keeps_working_and_is_warned_once(
    pg_database: PostgresDatabaseUnderTest, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge.central.postgres.database"):
        for _ in range(2):
            database = PostgresDatabase.open(pg_database.url, password=pg_database.password)
            # Migrated by the runtime role itself, as before: the schema is this code's.
            assert schema_version(database.conn) == known_migrations()[-1].version
            database.close()
    warnings = [r.getMessage() for r in caplog.records if "not least-privilege" in r.getMessage()]
    assert len(warnings) == 1 and pg_database.name in warnings[0]
    assert pg_database.password not in caplog.text


def test_the_owner_url_must_carry_no_password() -> None:
    def index(owner_url: str) -> str:
        return (f'[central]\nid = "central-hq"\nstore_dir = "/srv/central"\nindex = {{type = "postgresql", '
                f'url = "postgresql://edge@db/central", owner_url = "{owner_url}", '
                f'owner_password = "env:{OWNER_PASSWORD_ENV}"}}\n')

    with pytest.raises(ConfigError) as caught:
        parse_central_config(index("postgresql://owner:s3cret-pw@db/central"), "central.toml")
    assert "owner_url" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    # Control: without the password in it, the owner's URL is accepted.
    config = parse_central_config(index("postgresql://owner@db/central"), "central.toml")
    assert isinstance(config.central.index, PostgresIndexConfig)
    assert config.central.index.owner_url == "postgresql://owner@db/central"
