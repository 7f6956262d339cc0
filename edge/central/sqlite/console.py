"""What the auditor console keeps in the central's database: accounts, reader grants, units, sensitivity.

Tables (all in ``index.db``, created on open; an existing store gains them at its next open, and every
accepted item gets its unit from its manifest, see :func:`migrate`):

* ``console_accounts``: a password account (argon2id hash, optional TOTP secret, status, lockout state);
  ``account_events`` (append-only): created, password reset, TOTP enrolled/removed, disabled, enabled,
  signed in, sign-in failed, locked;
* ``reader_grants``: the role (reader/supervisor) and units of a reader name, whether it signs in with a
  certificate or an account; ``grant_events`` (append-only) says who granted what, when and why;
* ``station_units``: the unit a central administrator assigned to a station; ``station_unit_events``;
* ``item_units``: the unit of each accepted item, fixed at acceptance (see
  :func:`edge.central.sql.index.item_unit_for`);
* ``item_sensitive`` and ``item_sensitive_readers``: the current marking of sensitive items and the
  readers named on them; ``sensitivity_events`` (append-only): every marking and unmarking, by whom,
  when, why, naming whom, from where;
* ``media_ranges`` (append-only): every byte range the console served of an item, under the access-log
  row of its playback;
* ``console_sessions``: the live console sessions, keyed by an HMAC of their token (never the token),
  each row sealed with an HMAC under console.key (see :mod:`edge.central.console.sessions`); a row is
  deleted when its session ends.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from edge.central.sql.console import SqlConsoleStore
from edge.central.sqlite.trail import append_trail_row, key_fits_seals, seal_rows_made_before_the_seals
from edge.durable.sqlite import apply_schema

if TYPE_CHECKING:
    from edge.central.sqlite.database import SqliteDatabase

__all__ = [
    "SqliteConsoleStore",
    "create_schema",
    "migrate",
]

_COLUMN_RE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")

_APPEND_ONLY = ("account_events", "grant_events", "station_unit_events", "sensitivity_events", "media_ranges")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_accounts (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,       -- argon2id PHC string; never the password
    totp_secret TEXT,                  -- the RFC 6238 secret sealed with identity/console.key (sealed-v2:...)
    totp_last_step INTEGER,            -- the last time step accepted: a code is good once
    status TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    created_utc TEXT NOT NULL,
    updated_utc TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS account_events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    name TEXT NOT NULL,
    event TEXT NOT NULL,
    by TEXT,
    remote TEXT,
    detail TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS reader_grants (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('reader', 'supervisor')),
    units TEXT NOT NULL,               -- space-separated unit codes
    granted_utc TEXT NOT NULL,
    by TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS grant_events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT,
    units TEXT,
    by TEXT NOT NULL,
    reason TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS station_units (
    station TEXT PRIMARY KEY,
    unit_code TEXT NOT NULL,
    assigned_utc TEXT NOT NULL,
    by TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS station_unit_events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    station TEXT NOT NULL,
    unit_code TEXT NOT NULL,
    by TEXT NOT NULL,
    reason TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS item_units (
    item TEXT PRIMARY KEY REFERENCES items (item),
    unit_code TEXT,                    -- NULL: unknown; only supervisors see the item
    source TEXT NOT NULL CHECK (source IN ('station', 'manifest', 'none'))
) STRICT;
CREATE INDEX IF NOT EXISTS item_units_unit ON item_units (unit_code, item);
CREATE TABLE IF NOT EXISTS item_sensitive (
    item TEXT PRIMARY KEY REFERENCES items (item),
    marked_utc TEXT NOT NULL,
    by TEXT NOT NULL,
    reason TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS item_sensitive_readers (
    item TEXT NOT NULL REFERENCES item_sensitive (item) ON DELETE CASCADE,
    reader TEXT NOT NULL,
    PRIMARY KEY (item, reader)
) STRICT;
CREATE TABLE IF NOT EXISTS sensitivity_events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    item TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('marked', 'unmarked')),
    readers TEXT NOT NULL,             -- space-separated names (marked), empty (unmarked)
    by TEXT NOT NULL,
    reason TEXT NOT NULL,
    remote TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS media_ranges (
    id INTEGER PRIMARY KEY,
    access_id INTEGER NOT NULL,        -- the access_log row of the playback
    time TEXT NOT NULL,
    first_byte INTEGER NOT NULL,
    last_byte INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS media_ranges_access ON media_ranges (access_id);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_sha256 BLOB PRIMARY KEY CHECK (length(token_sha256) = 32),  -- never the token itself
    reader TEXT NOT NULL,
    method TEXT NOT NULL,
    cert_sha256 TEXT,                  -- the certificate a certificate sign-in was made with
    created_s REAL NOT NULL,           -- wall-clock seconds: the timers keep counting across a restart
    last_seen_s REAL NOT NULL,
    expires_s REAL NOT NULL,           -- created_s + the absolute lifetime at sign-in
    mac TEXT                           -- HMAC of the row under console.key's session subkey
) STRICT;
CREATE INDEX IF NOT EXISTS console_sessions_reader ON console_sessions (reader)
"""

# Items already accepted when a store first opens with the console: their unit from the manifest.
_BACKFILL_ITEM_UNITS = """
INSERT INTO item_units (item, unit_code, source)
SELECT i.item, u.code, CASE WHEN u.code IS NULL THEN 'none' ELSE 'manifest' END
FROM items i
JOIN (SELECT item, CASE WHEN json_valid(manifest)
                         AND json_type(manifest, '$.source.unit_code') = 'text'
                         AND length(json_extract(manifest, '$.source.unit_code')) BETWEEN 1 AND 32
                        THEN json_extract(manifest, '$.source.unit_code') END AS code
      FROM items) u ON u.item = i.item
WHERE i.item NOT IN (SELECT item FROM item_units)
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the console tables and triggers if missing (idempotent; the caller's transaction)."""
    apply_schema(conn, _SCHEMA, append_only=_APPEND_ONLY)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(console_sessions)")}
    if "mac" not in columns:
        # Sessions of a central before the rows were sealed: kept, but none of them checks (no mac), so
        # each ends at its next use and its reader signs in again.
        conn.execute("ALTER TABLE console_sessions ADD COLUMN mac TEXT")


def migrate(conn: sqlite3.Connection) -> int:
    """Give every accepted item without one its unit (from its manifest); returns how many rows were made.

    A store made before the console had no ``item_units``: its items get the unit their signed manifest
    names (``source.unit_code``), or none (only supervisors see them) when it names none."""
    return conn.execute(_BACKFILL_ITEM_UNITS).rowcount


class SqliteConsoleStore(SqlConsoleStore):
    """The console's records in the tables of a :class:`SqliteDatabase` (its unit of work); the SQL is
    shared with PostgreSQL (:class:`edge.central.sql.console.SqlConsoleStore`)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    @property
    def conn(self) -> sqlite3.Connection:
        """The database's connection for the calling thread (:attr:`SqliteDatabase.conn`: a reader
        thread's own while it reads). Only this package uses it; tests use it to play the attacker."""
        return self._database.conn

    def __repr__(self) -> str:
        return f"SqliteConsoleStore(path={str(self._database.path) if self._database.path else None!r})"

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._database.transaction()

    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        return append_trail_row(self.conn, table, values)

    def _before_replacing_secret(self) -> None:
        # SQLite keeps a replaced row's bytes in the page's free space: zeroed from now on.
        self.conn.execute("PRAGMA secure_delete = ON")

    def seal_trails(self, trail_key: bytes) -> int:
        """Seal, once, the trail rows made before the seals (edge.central.sqlite.trail); from now on this
        connection seals its trail rows with ``trail_key`` (the key the start checked)."""
        self._database.use_trail_key(trail_key)
        with self.transaction():
            return seal_rows_made_before_the_seals(self.conn, trail_key)

    def trail_key_fits(self, trail_key: bytes) -> bool | None:
        """Whether ``trail_key`` is the one the trails were sealed with (None: nothing sealed yet)."""
        return key_fits_seals(self.conn, trail_key)

    def scrub_replaced(self) -> bool:
        """Copy the WAL into the database and truncate it, so that what a replaced row held is gone from
        the files; False when another connection's read kept part of the WAL (tried again next start)."""
        busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy is None or busy[0] == 0
