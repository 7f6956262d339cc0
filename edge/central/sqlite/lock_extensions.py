"""The pending object-lock extensions' table in ``index.db`` (:mod:`edge.central.sql.lock_extensions`; the
same table on PostgreSQL: ``edge/central/postgres/migrations/0006_lock_extensions.sql``)."""

from __future__ import annotations

import sqlite3

from edge.durable.sqlite import apply_schema

__all__ = ["create_schema"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lock_extensions_pending (
    item TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    until_utc TEXT NOT NULL,           -- fixed-width UTC text: text order is time order
    legal_hold INTEGER NOT NULL CHECK (legal_hold IN (0, 1)),
    requested_utc TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_utc TEXT,
    last_error TEXT
) STRICT
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the table if missing (idempotent; the caller's transaction). A work queue: not append-only."""
    apply_schema(conn, _SCHEMA)
