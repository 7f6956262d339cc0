"""The rows of an embedded index (SQLite) copied into an empty PostgreSQL index, as they are.

Which tables: every table of both schemas is looked up in :data:`COPIED_TABLES` or :data:`NOT_COPIED`, and a
table in neither stops the migration before anything is written (:class:`UnknownTable`): a table added by a
later release must be placed in one of them here, never skipped without anyone deciding it. The copy
itself is generic: the columns are read from both schemas and must be the same, rows are read in primary
key order and inserted with their own values (ids, sequence numbers, leaf indices), converted to the
target column's type where SQLite stores it differently (a boolean as 0/1).

Nothing is re-signed or re-numbered: the Merkle log's leaves, nodes and signed tree heads, the station
ledgers, the officer-list versions and the trail seals arrive byte for byte, so a station's receipt for
an old tree head still verifies and the new central's next head is consistent with it.

The target's append-only triggers stay in force for the copy: rows go in in the order the triggers ask
for (each ledger row extends its head, each leaf the log, each tree head the previous one, each
officer-list version the newest, each trail id is max + 1), the seals go in before the trail rows they
seal, and ``SET CONSTRAINTS ALL IMMEDIATE`` makes the "every trail row is sealed" check run per row
instead of queueing millions of checks for COMMIT. Every row goes in one transaction: an interrupted copy
leaves the target as empty as it was. A row the triggers refuse (a source whose history was cut or
edited below its own triggers) fails the copy, naming the table.

The rows go in as the receivers' role (the copy needs INSERT only, as a receiver does); the identity
sequences are then moved past the copied ids by the role that owns the tables (:func:`continue_identities`):
setval needs UPDATE on a sequence, which the runtime role never gets.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "COPIED_TABLES",
    "NOT_COPIED",
    "CopyRefused",
    "TableCopy",
    "UnknownTable",
    "compare_table",
    "continue_identities",
    "copy_tables",
    "plan_tables",
    "target_row_counts",
]

# Copied, in this order: parents before the rows that reference them (items before item_case...), the
# Merkle leaves before the nodes and heads over them, the seals before the trail rows they seal.
COPIED_TABLES: tuple[str, ...] = (
    "stations", "station_keys", "readers", "enrolment_events", "station_ledger", "station_checkpoints",
    "items", "item_case", "metadata_history", "officers", "devices", "cases", "rejections",
    "merkle_leaves", "merkle_nodes", "merkle_tree_heads", "merkle_head_timestamps",
    "console_accounts", "reader_grants", "station_units", "item_units", "item_sensitive",
    "item_sensitive_readers", "trail_seals", "access_log", "account_events", "grant_events",
    "station_unit_events", "sensitivity_events", "media_ranges",
    "officer_lists", "fleet_reports",
    # Lock extensions the bucket has not confirmed yet: the new central asks for them again.
    "lock_extensions_pending",
)

# Per-process or per-database state that is not the store's history, with why it stays behind.
NOT_COPIED: dict[str, str] = {
    "console_sessions": "live console sign-ins (credentials of the moment): everyone signs in again on the "
                        "new central",
    "schema_version": "the target database's own record of its schema migrations",
    # Only on PostgreSQL (the shared tus store of several receivers): an embedded store's uploads are
    # local files, and unfinished uploads are working state, not history (the stations resume them).
    "tus_uploads": "unfinished tus uploads of receivers sharing the database (working state, not history)",
    "tus_upload_parts": "the stored parts of those uploads (working state, not history)",
}

_BATCH_ROWS = 500


class CopyRefused(Exception):
    """The index cannot be copied (a schema difference, a row the target refuses); nothing was written."""


class UnknownTable(CopyRefused):
    """A table neither copied nor listed as not copied: the migrator must be taught it first."""


@dataclass(frozen=True)
class TableCopy:
    """One table to copy: its columns (the same on both sides), the source's primary key order, the
    target's column types and whether the target generates its id (an identity column)."""

    name: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    target_types: tuple[str, ...]
    identity_column: str | None


def _source_tables(source: sqlite3.Connection) -> list[str]:
    rows = source.execute("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                          "ORDER BY name").fetchall()
    return [str(row[0]) for row in rows]


def _target_tables(target: psycopg.Connection[Any]) -> list[str]:
    rows = target.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                          "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()
    return [str(row[0]) for row in rows]


def _source_columns(source: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """(columns in order, primary key columns in key order; none: the rowid)."""
    info = source.execute(f'PRAGMA table_info("{table}")').fetchall()
    columns = [str(row[1]) for row in info]
    key = [str(row[1]) for row in sorted((row for row in info if row[5]), key=lambda row: int(row[5]))]
    return columns, key


def _target_columns(target: psycopg.Connection[Any], table: str) -> dict[str, tuple[str, bool]]:
    """{column: (data type, generated ALWAYS as identity)}."""
    rows = target.execute(
        "SELECT column_name, data_type, is_identity = 'YES' AND identity_generation = 'ALWAYS' "
        "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s "
        "ORDER BY ordinal_position", (table,)).fetchall()
    return {str(name): (str(kind), bool(identity)) for name, kind, identity in rows}


def plan_tables(source: sqlite3.Connection, target: psycopg.Connection[Any]) -> list[TableCopy]:
    """What to copy, checked against both schemas; raises :class:`UnknownTable` for a table the
    migrator does not know and :class:`CopyRefused` for a table whose columns differ."""
    in_source = set(_source_tables(source))
    in_target = set(_target_tables(target))
    known = set(COPIED_TABLES) | set(NOT_COPIED)
    for side, tables in (("source index", in_source), ("target database", in_target)):
        unknown = sorted(tables - known)
        if unknown:
            raise UnknownTable(
                f"the {side} has table(s) {', '.join(unknown)} that `edge central migrate` does not know: "
                "nothing was copied. A release that adds a table must list it in "
                "edge/central/migration/tables.py as copied (COPIED_TABLES) or as per-process state "
                "(NOT_COPIED); upgrade edge-evidence on this host to one that does")
    plans: list[TableCopy] = []
    for table in COPIED_TABLES:
        if table not in in_target:
            raise CopyRefused(f"table {table} is missing from the target database: its schema is not this "
                              "release's (the migration starts the schema itself; was it changed by hand?)")
        target_columns = _target_columns(target, table)
        if table not in in_source:
            # A store an earlier release made, whose schema this release has not brought up yet (which
            # also fills derived rows, such as each item's unit): the copy would lack them.
            raise CopyRefused(f"table {table} is missing from the source index: it was made by an earlier "
                              "release and not opened by this one yet. Run `edge central init --config FILE` "
                              "(or start the central once) to bring its schema up, stop it, then migrate")
        columns, key = _source_columns(source, table)
        if set(columns) != set(target_columns):
            only_source = sorted(set(columns) - set(target_columns))
            only_target = sorted(set(target_columns) - set(columns))
            raise CopyRefused(f"table {table}: the columns differ between the source and the target "
                              f"(only in the source: {', '.join(only_source) or 'none'}; only in the target: "
                              f"{', '.join(only_target) or 'none'}): nothing was copied")
        identity = next((name for name, (_, generated) in target_columns.items() if generated), None)
        plans.append(TableCopy(
            table, tuple(columns), tuple(key) if key else ("rowid",),
            tuple(target_columns[name][0] for name in columns), identity))
    return plans


def target_row_counts(target: psycopg.Connection[Any], plans: Sequence[TableCopy]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for plan in plans:
        row = target.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(plan.name))).fetchone()
        counts[plan.name] = int(row[0]) if row is not None else 0
    return counts


def _converter(target_type: str, table: str, column: str) -> Callable[[object], object]:
    """The source value as the target column takes it (and as the target gives it back)."""
    if target_type == "boolean":
        def to_bool(value: object) -> object:
            if value is None or isinstance(value, bool):
                return value
            if value in (0, 1):
                return bool(value)
            raise CopyRefused(f"table {table} column {column}: {str(value)[:40]!r} is not a boolean (0 or 1)")
        return to_bool
    if target_type == "bytea":
        return lambda value: bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else value
    if target_type == "double precision":
        return lambda value: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return lambda value: value


def _source_rows(source: sqlite3.Connection, plan: TableCopy) -> Iterator[tuple[object, ...]]:
    """The table's rows in primary key order (byte-wise for text, as SQLite compares), converted."""
    converters = [_converter(kind, plan.name, column) for kind, column in zip(plan.target_types, plan.columns,
                                                                                strict=True)]
    columns = ", ".join(f'"{column}"' for column in plan.columns)
    order = ", ".join(f'"{column}"' if column != "rowid" else "rowid" for column in plan.order_by)
    cursor = source.execute(f'SELECT {columns} FROM "{plan.name}" ORDER BY {order}')
    while batch := cursor.fetchmany(_BATCH_ROWS):
        for row in batch:
            yield tuple(convert(value) for convert, value in zip(converters, tuple(row), strict=True))


def _target_rows(target: psycopg.Connection[Any], plan: TableCopy) -> Generator[tuple[object, ...]]:
    """The target's rows in the source's order: text keys compared byte-wise (COLLATE "C")."""
    def key(column: str) -> sql.Composable:
        if column == "rowid":
            raise CopyRefused(f"table {plan.name} has no primary key to compare it by")
        kind = plan.target_types[plan.columns.index(column)]
        return (sql.SQL('{} COLLATE "C"').format(sql.Identifier(column)) if kind == "text"
                else sql.Identifier(column))
    query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(column) for column in plan.columns), sql.Identifier(plan.name),
        sql.SQL(", ").join(key(column) for column in plan.order_by))
    # A named (server-side) cursor: the rows stream, whatever the table's size.
    with target.cursor(name=f"compare_{plan.name}") as cursor:
        cursor.itersize = _BATCH_ROWS
        cursor.execute(query)
        for row in cursor:
            yield tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


def copy_tables(source: sqlite3.Connection, target: psycopg.Connection[Any], plans: Sequence[TableCopy],
                progress: Callable[[str, int], None]) -> dict[str, int]:
    """Copy every planned table in one transaction of ``target`` (autocommit outside it); returns the rows
    copied per table. ``progress(table, rows so far)`` is called every batch. Raises
    :class:`CopyRefused` (the target rolled back to empty)."""
    copied: dict[str, int] = {}
    current = ""
    try:
        with target.transaction():
            # The writer lock every central transaction takes first (edge.central.postgres.database).
            target.execute("SELECT edge_log_writer_lock()")
            target.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for plan in plans:
                current = plan.name
                copied[plan.name] = 0
                overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if plan.identity_column else sql.SQL("")
                insert = sql.SQL("INSERT INTO {} ({}){} VALUES ({})").format(
                    sql.Identifier(plan.name),
                    sql.SQL(", ").join(sql.Identifier(column) for column in plan.columns), overriding,
                    sql.SQL(", ").join(sql.Placeholder() * len(plan.columns)))
                batch: list[tuple[object, ...]] = []
                with target.cursor() as cursor:
                    for row in _source_rows(source, plan):
                        batch.append(row)
                        if len(batch) >= _BATCH_ROWS:
                            cursor.executemany(insert, batch)
                            copied[plan.name] += len(batch)
                            batch.clear()
                            progress(plan.name, copied[plan.name])
                    if batch:
                        cursor.executemany(insert, batch)
                        copied[plan.name] += len(batch)
                progress(plan.name, copied[plan.name])
    except psycopg.Error as exc:
        diag = exc.diag.message_primary or str(exc)
        raise CopyRefused(f"table {current}: the target refused a row ({diag.strip()}); the copy was rolled "
                          "back, the target database is as empty as it was") from None
    return copied


def continue_identities(owner: psycopg.Connection[Any], plans: Sequence[TableCopy]) -> list[str]:
    """Move each identity column's sequence past the ids the copy inserted (they were given explicitly,
    so the sequence still stands at 1), never back; returns the tables whose sequence moved.

    ``owner`` must be the role that owns the tables: setval needs UPDATE on the sequence, which the
    receivers' runtime role never gets (it draws ids with USAGE only). Idempotent: a rerun after a copy
    committed without this step completes it."""
    moved: list[str] = []
    for plan in plans:
        if plan.identity_column is None:
            continue
        # pg_sequences.last_value is NULL until the sequence has given a value: then any copied id moves it.
        row = owner.execute(sql.SQL(
            "SELECT setval(seq, copied) FROM (SELECT pg_get_serial_sequence(%s, %s)::regclass AS seq, "
            "(SELECT max({}) FROM {}) AS copied) AS wanted WHERE copied IS NOT NULL AND copied > coalesce(("
            "SELECT last_value FROM pg_sequences "
            "WHERE format('%%I.%%I', schemaname, sequencename)::regclass = seq), 0)").format(
                sql.Identifier(plan.identity_column), sql.Identifier(plan.name)),
            (plan.name, plan.identity_column)).fetchone()
        if row is not None:
            moved.append(plan.name)
    return moved


def compare_table(source: sqlite3.Connection, target: psycopg.Connection[Any], plan: TableCopy) -> str | None:
    """None when the target holds exactly the source's rows of the table, else where they first differ.
    Both sides stream (the target's rows through a server-side cursor, in a read transaction)."""
    with target.transaction():
        target_rows = _target_rows(target, plan)
        try:
            return _first_difference(_source_rows(source, plan), target_rows, plan)
        finally:
            target_rows.close()


def _first_difference(source_rows: Iterator[tuple[object, ...]], target_rows: Iterator[tuple[object, ...]],
                      plan: TableCopy) -> str | None:
    position = 0
    while True:
        mine, theirs = next(source_rows, None), next(target_rows, None)
        if mine is None and theirs is None:
            return None
        position += 1
        if mine == theirs:
            continue
        if theirs is None:
            return f"row {position} of the source is missing from the target"
        if mine is None:
            return f"the target has more rows than the source's {position - 1}"
        keys = {column: mine[plan.columns.index(column)] for column in plan.order_by if column != "rowid"}
        shown = ", ".join(f"{column}={str(value)[:40]}" for column, value in keys.items())
        return f"row {position} ({shown}) differs between the source and the target"
