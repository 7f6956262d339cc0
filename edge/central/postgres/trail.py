"""The seals of the console's append-only trails on PostgreSQL (the rules of edge.central.sqlite.trail).

SQLite computes a seal inside its AFTER INSERT trigger, with a function the central registers on its
connection. PostgreSQL cannot call back into the central, and handing it the key (a session setting)
would put the key where the database's superuser and its logs can read it; so here the central appends a
trail row and its seal itself, in one transaction (:func:`append_trail`): the row with ``RETURNING id``,
then the seal numbered ``max(seq) + 1`` (every transaction holds the writer lock, so the numbers are
serialised across receivers). A deferred constraint trigger of the schema (``0003_console.sql``)
refuses, at COMMIT, a trail row that has no seal, so an insert that forgot it fails instead of leaving a
row `edge verify` would name as inserted behind the central's back.

The sealed values are the row's columns (:data:`~edge.central.sqlite.trail.TRAIL_COLUMNS`) as a compact
JSON array (:func:`row_json`), computed by the same function when the row is written and when
`edge verify` checks it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from edge.central.sqlite.trail import BEGIN_TABLE, TRAIL_COLUMNS, TrailKeyHolder, TrailKeyUnusable, trail_mac

__all__ = ["PostgresTrailSealer", "append_trail", "row_json", "seal_unsealed_rows"]

log = logging.getLogger(__name__)

_NEXT_SEQ_SQL = "SELECT coalesce(max(seq), 0) + 1 FROM trail_seals"


def row_json(values: Sequence[object]) -> str:
    """The sealed text of a trail row's values (its columns in :data:`TRAIL_COLUMNS` order)."""
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


# The trail key of one central process (loaded from console.key, or handed over by the start).
PostgresTrailSealer = TrailKeyHolder


def _begun(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM trail_seals WHERE tbl = %s", (BEGIN_TABLE,)).fetchone()
    return row is not None


def _seal(conn: psycopg.Connection[Any], sealer: PostgresTrailSealer, table: str, row_id: int,
          values: Sequence[object]) -> None:
    row = conn.execute(_NEXT_SEQ_SQL).fetchone()
    assert row is not None
    seq = int(row[0])
    key = sealer.key()
    if key is None and _begun(conn):
        log.error("a %s row is refused: the console's trails are sealed, and the console key %s is not "
                  "usable to seal it (a NULL seal would be indistinguishable from tampering)", table,
                  sealer.key_path)
        raise TrailKeyUnusable(f"{sealer.key_path}: no usable console key to seal a {table} row")
    mac = None if key is None else trail_mac(key, seq, table, row_id, row_json(values))
    conn.execute("INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (%s, %s, %s, %s)",
                 (seq, table, row_id, mac))


def append_trail(conn: psycopg.Connection[Any], sealer: PostgresTrailSealer, table: str,
                 values: dict[str, object]) -> int:
    """Append one row to the trail ``table`` with its seal, in the caller's transaction; returns its id.
    ``values`` names every sealed column."""
    columns = TRAIL_COLUMNS[table]
    if set(values) != set(columns):
        raise ValueError(f"{table}: expected the columns {columns}, got {sorted(values)}")
    ordered = [values[column] for column in columns]
    # Table and column names come from TRAIL_COLUMNS, never from the caller's data.
    row = conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
        "RETURNING id", ordered,
    ).fetchone()
    assert row is not None
    row_id = int(row[0])
    _seal(conn, sealer, table, row_id, ordered)
    return row_id


def seal_unsealed_rows(conn: psycopg.Connection[Any], key: bytes) -> int:
    """Seal, once, trail rows without a seal (none in a database this code made, where every row is
    sealed as it is appended) and write the marker where the seals begin; the caller's transaction.
    Does nothing after the first time."""
    if _begun(conn):
        return 0
    sealed = 0
    for table, columns in TRAIL_COLUMNS.items():
        rows = conn.execute(
            f"SELECT t.id, {', '.join('t.' + c for c in columns)} FROM {table} t WHERE NOT EXISTS "
            "(SELECT 1 FROM trail_seals s WHERE s.tbl = %s AND s.row_id = t.id) ORDER BY t.id", (table,),
        ).fetchall()
        for row_id, *values in rows:
            seq_row = conn.execute(_NEXT_SEQ_SQL).fetchone()
            assert seq_row is not None
            seq = int(seq_row[0])
            conn.execute("INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (%s, %s, %s, %s)",
                         (seq, table, row_id, trail_mac(key, seq, table, int(row_id), row_json(values))))
            sealed += 1
    seq_row = conn.execute(_NEXT_SEQ_SQL).fetchone()
    assert seq_row is not None
    seq = int(seq_row[0])
    conn.execute("INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (%s, %s, 0, %s)",
                 (seq, BEGIN_TABLE, trail_mac(key, seq, BEGIN_TABLE, 0, "[]")))
    return sealed
