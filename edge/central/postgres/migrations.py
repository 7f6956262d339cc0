"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied in order at start.

Each file is applied once and recorded in ``schema_version``; the pending ones are applied in one
transaction, so a failed migration leaves the database as it was. Concurrent starters (several receivers
started together) are serialised by an advisory lock: one applies, the others then find it applied. A
database whose version is newer than the newest file this code knows is refused: older code must never
write to a schema whose rules it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

__all__ = ["Migration", "SchemaError", "apply_migrations", "known_migrations", "schema_version"]

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Held while migrating; a constant distinct from the log writer's lock (0001_index_and_log.sql).
_MIGRATION_LOCK = 4242001300000000000


class SchemaError(Exception):
    """The database's schema cannot be used by this code (newer, or a migration failed)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def known_migrations() -> list[Migration]:
    """The migrations shipped with this code, by version; versions run 1, 2, 3... without gaps."""
    found: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise SchemaError(f"migration files must be numbered 1, 2, 3...: expected {expected:04d}, "
                              f"found {migration.version:04d}_{migration.name}.sql")
    return found


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The newest migration applied to the database (0 for a database this code never touched)."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    version = None if row is None else row[0]
    if not isinstance(version, int):
        raise SchemaError(f"schema_version holds a damaged version {version!r}")
    return version


def apply_migrations(
    conn: psycopg.Connection[tuple[object, ...]], migrations: list[Migration] | None = None
) -> int:
    """Bring the database (``conn`` in autocommit mode) to the newest known version; returns it.

    Raises :class:`SchemaError` when the database is newer than the code, or when a migration fails
    (then none of the pending ones is applied)."""
    migrations = known_migrations() if migrations is None else migrations
    newest = migrations[-1].version if migrations else 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_utc timestamptz NOT NULL DEFAULT now())"
        )
        current = schema_version(conn)
        if current > newest:
            raise SchemaError(
                f"the database's schema is at version {current}, newer than this code's {newest}: refusing "
                f"to use it (upgrade the central; never run older code on a migrated database)"
            )
        for migration in migrations[current:]:
            try:
                with conn.transaction():  # a savepoint: the error names the failing file
                    conn.execute(migration.sql.encode("utf-8"))
                    conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
            except psycopg.Error as exc:
                raise SchemaError(f"migration {migration.version:04d}_{migration.name}.sql failed: "
                                  f"{exc}") from exc
    return max(current, newest)
