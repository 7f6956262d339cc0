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

__all__ = [
    "RUNTIME_GROUP",
    "Migration",
    "RuntimeRoleError",
    "SchemaBehind",
    "SchemaError",
    "apply_migrations",
    "check_runtime_role",
    "known_migrations",
    "owns_schema",
    "schema_version",
]

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Held while migrating; a constant distinct from the log writer's lock (0001_index_and_log.sql).
_MIGRATION_LOCK = 4242001300000000000


class SchemaError(Exception):
    """The database's schema cannot be used by this code (newer, or a migration failed)."""


class SchemaBehind(SchemaError):
    """The schema is older than this code and the connected role does not own it, so cannot migrate it: the
    owner's URL must be used (an operator's step, not a transient fault)."""


class RuntimeRoleError(SchemaError):
    """The runtime role is set up wrong for a least-privilege install (it owns the tables although an owner
    URL was given, or it is not a member of :data:`RUNTIME_GROUP`): an operator's step."""


# The NOLOGIN group migration 0007 grants the receivers' privileges to; the DBA grants it to the login role.
RUNTIME_GROUP = "edge_central_runtime"


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


def owns_schema(conn: psycopg.Connection[tuple[object, ...]]) -> bool | None:
    """Whether the connected role can act as the owner of any table or sequence in the current schema (it
    owns it, is a member of the role that does, or is a superuser): then it could ALTER, DISABLE TRIGGER
    or DROP. None for a schema with none of them (a database the central never touched)."""
    row = conn.execute(
        "SELECT bool_or(pg_has_role(current_user, c.relowner, 'MEMBER')) FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'S')"
    ).fetchone()
    value = None if row is None else row[0]
    return value if isinstance(value, bool) else None


def check_runtime_role(conn: psycopg.Connection[tuple[object, ...]],
                       migrations: list[Migration] | None = None, *, owner_given: bool) -> None:
    """Check, without changing anything, that a least-privilege runtime role may serve the database: it
    owns nothing, belongs to :data:`RUNTIME_GROUP` and the schema is this code's. Raises
    :class:`RuntimeRoleError`, :class:`SchemaBehind` or :class:`SchemaError` (newer than the code)."""
    migrations = known_migrations() if migrations is None else migrations
    newest = migrations[-1].version if migrations else 0
    role = conn.execute("SELECT current_user").fetchone()
    user = "?" if role is None else str(role[0])
    if owner_given and owns_schema(conn):
        raise RuntimeRoleError(
            f"the runtime role {user} owns (or may act as the owner of) the central's tables although "
            f"central.index.owner_url is given: the receivers must log in as a role that owns nothing "
            f"(GRANT {RUNTIME_GROUP} TO <runtime role>)")
    # Membership first: outside the group the role cannot even read schema_version.
    member = conn.execute(
        # CASE: pg_has_role raises for a role that does not exist, and AND may evaluate either side first.
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
        "THEN pg_has_role(current_user, %s, 'USAGE') ELSE false END",
        (RUNTIME_GROUP, RUNTIME_GROUP)).fetchone()
    if member is None or not member[0]:
        raise RuntimeRoleError(
            f"the runtime role {user} is not a member of {RUNTIME_GROUP}, which holds the central's "
            f"privileges: the DBA must run GRANT {RUNTIME_GROUP} TO {user}")
    current = schema_version(conn)
    if current < newest:
        raise SchemaBehind(
            f"the database's schema is at version {current}, this code needs {newest}, and the runtime role "
            f"{user} does not own the tables so cannot migrate them: run `edge central "
            f"migrate-schema` (or start the central once) with central.index.owner_url, the owner's URL, and "
            f"owner_password set, to apply the migrations")
    if current > newest:
        raise SchemaError(
            f"the database's schema is at version {current}, newer than this code's {newest}: refusing "
            f"to use it (upgrade the central; never run older code on a migrated database)")
