"""What the auditor console keeps in the central's database: accounts, reader grants, units, sensitivity.

Tables (all in ``index.db``, created on open; an existing store gains them at its next open, and every
accepted item gets its unit from its manifest, see :func:`migrate`):

* ``console_accounts``: a password account (argon2id hash, optional TOTP secret, status, lockout state);
  ``account_events`` (append-only): created, password reset, TOTP enrolled/removed, disabled, enabled,
  signed in, sign-in failed, locked;
* ``reader_grants``: the role (reader/supervisor) and units of a reader name, whether it signs in with a
  certificate or an account; ``grant_events`` (append-only) says who granted what, when and why;
* ``station_units``: the unit a central administrator assigned to a station; ``station_unit_events``;
* ``item_units``: the unit of each accepted item, fixed at acceptance (see :func:`item_unit_for`);
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
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from edge.central.index import (
    AccountRecord,
    CentralIndexError,
    ReaderGrant,
    ReaderScope,
    Role,
    validate_reader_name,
    validate_station_id,
    validate_unit_code,
)
from edge.central.sqlite.trail import BEGIN_TABLE, key_fits_seals, seal_rows_made_before_the_seals
from edge.custody.ledger import station_time_now
from edge.durable.sqlite import apply_schema

if TYPE_CHECKING:
    from edge.central.sqlite.database import SqliteDatabase

__all__ = [
    "SqliteConsoleStore",
    "create_schema",
    "item_unit_for",
    "migrate",
    "scope_clause",
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


def item_unit_for(conn: sqlite3.Connection, station: str, manifest: dict[str, Any]) -> tuple[str | None, str]:
    """``(unit, source)`` of an item being accepted: the unit the central's administrator assigned to its
    station (``station``), else the unit its signed manifest names (``manifest``: the recorder's identity,
    as the station signed it), else none (``none``: only supervisors see it).

    The administrator's assignment comes first because access rests on it: a recorder's identity text is
    only as good as the recorder. Fixed at acceptance: reassigning a station later moves no evidence."""
    row = conn.execute("SELECT unit_code FROM station_units WHERE station = ?", (station,)).fetchone()
    if row is not None:
        return str(row[0]), "station"
    source = manifest.get("source")
    code = source.get("unit_code") if isinstance(source, dict) else None
    try:
        return validate_unit_code(code), "manifest"
    except CentralIndexError:
        return None, "none"


def _units_text(units: Iterable[str]) -> str:
    return " ".join(sorted({validate_unit_code(u) for u in units}))


class SqliteConsoleStore:
    """The console's records in the tables of a :class:`SqliteDatabase` (its unit of work)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        self.conn = database.conn

    def __repr__(self) -> str:
        return f"SqliteConsoleStore(path={str(self._database.path) if self._database.path else None!r})"

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._database.transaction()

    # -- accounts -------------------------------------------------------------------------------

    def account(self, name: str) -> AccountRecord | None:
        row = self.conn.execute(
            "SELECT name, password_hash, totp_secret, totp_last_step, status, failed_attempts, locked_until "
            "FROM console_accounts WHERE name = ?", (name,),
        ).fetchone()
        if row is None:
            return None
        return AccountRecord(row["name"], row["password_hash"], row["totp_secret"], row["totp_last_step"],
                             row["status"], row["failed_attempts"], row["locked_until"])

    def _event(self, name: str, event: str, *, by: str | None = None, remote: str | None = None,
               detail: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO account_events (time, name, event, by, remote, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (station_time_now(), name, event, by, remote, detail),
        )

    def create_account(self, name: str, password_hash: str, *, by: str) -> None:
        validate_reader_name(name)
        now = station_time_now()
        with self.transaction():
            if self.account(name) is not None:
                raise CentralIndexError(f"account {name} exists; reset its password with "
                                        "`edge central account reset-password`")
            self.conn.execute(
                "INSERT INTO console_accounts (name, password_hash, status, created_utc, updated_utc) "
                "VALUES (?, ?, 'active', ?, ?)", (name, password_hash, now, now),
            )
            self._event(name, "created", by=by)

    def _update(self, name: str, assignments: str, args: tuple[Any, ...], event: str, *, by: str | None,
                remote: str | None = None, detail: str | None = None) -> None:
        with self.transaction():
            done = self.conn.execute(
                f"UPDATE console_accounts SET {assignments}, updated_utc = ? WHERE name = ?",
                (*args, station_time_now(), name),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"there is no account {name}")
            self._event(name, event, by=by, remote=remote, detail=detail)

    def set_password(self, name: str, password_hash: str, *, by: str) -> None:
        """A new password; it also clears a lockout (an administrator reset it)."""
        self._update(name, "password_hash = ?, failed_attempts = 0, locked_until = NULL", (password_hash,),
                     "password_reset", by=by)

    def set_totp(self, name: str, secret: str | None, *, by: str) -> None:
        self._update(name, "totp_secret = ?, totp_last_step = NULL", (secret,),
                     "totp_enrolled" if secret else "totp_removed", by=by)

    def totp_secrets(self) -> list[tuple[str, str]]:
        """``(name, stored text)`` of every account with a TOTP secret (sealed, or plain from an older
        central)."""
        return [(row[0], row[1]) for row in self.conn.execute(
            "SELECT name, totp_secret FROM console_accounts WHERE totp_secret IS NOT NULL ORDER BY name")]

    def accounts_without_totp(self) -> list[str]:
        """The accounts with no TOTP secret (a start names those the enrolment record says have one)."""
        return [row[0] for row in self.conn.execute(
            "SELECT name FROM console_accounts WHERE totp_secret IS NULL ORDER BY name")]

    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool:
        """Replace a plain TOTP secret by its sealed text, if it is still ``stored_before``; recorded.

        SQLite keeps a replaced row's bytes in the page's free space and in the WAL: secure_delete zeroes
        the free space (for this connection from now on), :meth:`scrub_replaced` empties the WAL."""
        self.conn.execute("PRAGMA secure_delete = ON")
        with self.transaction():
            done = self.conn.execute(
                "UPDATE console_accounts SET totp_secret = ?, updated_utc = ? "
                "WHERE name = ? AND totp_secret = ?",
                (sealed, station_time_now(), name, stored_before),
            )
            if done.rowcount != 1:
                return False
            self._event(name, "totp_sealed", by=by,
                        detail="the secret stored by an older central was sealed under a new enrolment id")
            return True

    def record_totp_refused(self, name: str, *, remote: str | None, detail: str) -> None:
        """A sign-in's sealed TOTP secret refused (put back from a backup, moved, damaged): recorded."""
        with self.transaction():
            self._event(name, "totp_refused", remote=remote, detail=detail)

    def seal_trails(self, trail_key: bytes) -> int:
        """Seal, once, the trail rows made before the seals (edge.central.sqlite.trail); from now on this
        connection seals its trail rows with ``trail_key`` (the key the start checked)."""
        self._database.use_trail_key(trail_key)
        with self.transaction():
            return seal_rows_made_before_the_seals(self.conn, trail_key)

    def trail_key_fits(self, trail_key: bytes) -> bool | None:
        """Whether ``trail_key`` is the one the trails were sealed with (None: nothing sealed yet)."""
        return key_fits_seals(self.conn, trail_key)

    def trail_seals_state(self) -> tuple[bool, bool]:
        """(the start of the seals is recorded, some trail row or marker is sealed with a key)."""
        begun = self.conn.execute("SELECT 1 FROM trail_seals WHERE tbl = ?", (BEGIN_TABLE,)).fetchone()
        keyed = self.conn.execute("SELECT 1 FROM trail_seals WHERE mac IS NOT NULL LIMIT 1").fetchone()
        return begun is not None, keyed is not None

    def scrub_replaced(self) -> bool:
        """Copy the WAL into the database and truncate it, so that what a replaced row held is gone from
        the files; False when another connection's read kept part of the WAL (tried again next start)."""
        busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy is None or busy[0] == 0

    def set_account_active(self, name: str, active: bool, *, by: str, reason: str) -> None:
        status = "active" if active else "disabled"
        self._update(name, "status = ?, failed_attempts = 0, locked_until = NULL", (status,),
                     "enabled" if active else "disabled", by=by, detail=reason)

    def record_sign_in(self, name: str, *, ok: bool, remote: str | None, now: str, lock_after: int,
                       lock_until: str, totp_step: int | None = None, counts: bool = True) -> bool:
        """Record a sign-in attempt of an existing account.

        While the account is locked (its ``locked_until`` is after ``now``) every attempt is refused and
        recorded, right or wrong, and counts for nothing. A success clears the failure count and, with
        ``totp_step``, spends that step: returns False (and records a failure) when the step was already
        used, so a code is good once. A failure counts; the ``lock_after``-th in a row locks the account
        until ``lock_until``. A failure with ``counts`` False (the console: a wrong password, which an
        outsider can send at will) is recorded but neither counts nor locks, so nobody who lacks the
        password can keep an account locked. One transaction, so two attempts at once cannot both spend
        one code.
        Times are UTC in the ledger's text format (comparable as text)."""
        with self.transaction():
            record = self.account(name)
            if record is None:
                return False
            if record.locked_until is not None and record.locked_until > now:
                self._event(name, "refused_locked", remote=remote,
                            detail=f"locked until {record.locked_until}")
                return False
            if ok and totp_step is not None and record.totp_last_step is not None \
                    and totp_step <= record.totp_last_step:
                ok = False
                detail: str | None = "TOTP code already used"
            else:
                detail = None
            if ok:
                self.conn.execute(
                    "UPDATE console_accounts SET failed_attempts = 0, locked_until = NULL, "
                    "totp_last_step = coalesce(?, totp_last_step), updated_utc = ? WHERE name = ?",
                    (totp_step, now, name),
                )
                self._event(name, "signed_in", remote=remote)
                return True
            failures = record.failed_attempts + (1 if counts else 0)
            lock = counts and failures >= lock_after
            self.conn.execute(
                "UPDATE console_accounts SET failed_attempts = ?, locked_until = ?, updated_utc = ? "
                "WHERE name = ?",
                (0 if lock else failures, lock_until if lock else None, now, name),
            )
            self._event(name, "sign_in_failed", remote=remote, detail=detail)
            if lock:
                self._event(name, "locked", remote=remote, detail=f"{failures} failed sign-ins in a row; "
                                                                  f"locked until {lock_until}")
            return False

    def account_events(self, name: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(
            "SELECT time, name, event, by, remote, detail FROM account_events WHERE name = ? ORDER BY id",
            (name,))]

    # -- grants ---------------------------------------------------------------------------------

    def grant(self, name: str, role: Role, units: Iterable[str], *, by: str, reason: str) -> ReaderGrant:
        validate_reader_name(name)
        role = Role(role)
        units_text = _units_text(units)
        if role is Role.READER and not units_text:
            raise CentralIndexError(f"a reader sees the items of its units: name at least one unit for "
                                    f"{name}")
        if not reason.strip():
            raise CentralIndexError("a grant needs a reason (it is kept with the grant)")
        now = station_time_now()
        with self.transaction():
            self.conn.execute(
                "INSERT INTO reader_grants (name, role, units, granted_utc, by) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET role = excluded.role, units = excluded.units, "
                "granted_utc = excluded.granted_utc, by = excluded.by",
                (name, str(role), units_text, now, by),
            )
            self.conn.execute(
                "INSERT INTO grant_events (time, name, role, units, by, reason) VALUES (?, ?, ?, ?, ?, ?)",
                (now, name, str(role), units_text, by, reason),
            )
        grant = self.grant_of(name)
        assert grant is not None
        return grant

    def revoke_grant(self, name: str, *, by: str, reason: str) -> None:
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute("DELETE FROM reader_grants WHERE name = ?", (name,))
            if done.rowcount != 1:
                raise CentralIndexError(f"{name} has no grant")
            self.conn.execute(
                "INSERT INTO grant_events (time, name, role, units, by, reason) "
                "VALUES (?, ?, NULL, NULL, ?, ?)",
                (now, name, by, reason),
            )

    def grant_of(self, name: str) -> ReaderGrant | None:
        row = self.conn.execute(
            "SELECT name, role, units, granted_utc, by FROM reader_grants WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        try:
            role = Role(row["role"])
        except ValueError:
            raise CentralIndexError(f"reader {name}: damaged grant row (role {row['role']!r})") from None
        return ReaderGrant(row["name"], role, frozenset(row["units"].split()), row["granted_utc"], row["by"])

    def grant_events(self, name: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT time, name, role, units, by, reason FROM grant_events"
        args: tuple[str, ...] = ()
        if name is not None:
            sql, args = sql + " WHERE name = ?", (name,)
        return [dict(row) for row in self.conn.execute(sql + " ORDER BY id", args)]

    # -- station units --------------------------------------------------------------------------

    def assign_station_unit(self, station: str, unit: str, *, by: str, reason: str) -> None:
        """The unit a station belongs to; items it sends from now on belong to it (earlier ones keep
        theirs)."""
        validate_station_id(station)
        validate_unit_code(unit)
        now = station_time_now()
        with self.transaction():
            self.conn.execute(
                "INSERT INTO station_units (station, unit_code, assigned_utc, by) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (station) DO UPDATE SET unit_code = excluded.unit_code, "
                "assigned_utc = excluded.assigned_utc, by = excluded.by",
                (station, unit, now, by),
            )
            self.conn.execute(
                "INSERT INTO station_unit_events (time, station, unit_code, by, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (now, station, unit, by, reason),
            )

    def station_unit(self, station: str) -> str | None:
        row = self.conn.execute("SELECT unit_code FROM station_units WHERE station = ?",
                                (station,)).fetchone()
        return None if row is None else str(row[0])

    # -- sensitivity ----------------------------------------------------------------------------

    def mark_sensitive(self, item: str, readers: Iterable[str], *, by: str, reason: str,
                       remote: str | None) -> None:
        """Mark (or re-mark, with a new list of named readers) an item sensitive; recorded with who and
        why."""
        names = sorted({validate_reader_name(r) for r in readers})
        if not names:
            raise CentralIndexError("name at least one reader who may still see the sensitive item")
        if not reason.strip():
            raise CentralIndexError("marking an item sensitive needs a reason (it is recorded)")
        now = station_time_now()
        with self.transaction():
            if self.conn.execute("SELECT 1 FROM items WHERE item = ?", (item,)).fetchone() is None:
                raise CentralIndexError(f"no accepted item {item}")
            self.conn.execute("DELETE FROM item_sensitive_readers WHERE item = ?", (item,))
            self.conn.execute(
                "INSERT INTO item_sensitive (item, marked_utc, by, reason) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (item) DO UPDATE SET marked_utc = excluded.marked_utc, by = excluded.by, "
                "reason = excluded.reason", (item, now, by, reason),
            )
            self.conn.executemany("INSERT INTO item_sensitive_readers (item, reader) VALUES (?, ?)",
                                  [(item, name) for name in names])
            self.conn.execute(
                "INSERT INTO sensitivity_events (time, item, action, readers, by, reason, remote) "
                "VALUES (?, ?, 'marked', ?, ?, ?, ?)", (now, item, " ".join(names), by, reason, remote),
            )

    def unmark_sensitive(self, item: str, *, by: str, reason: str, remote: str | None) -> None:
        if not reason.strip():
            raise CentralIndexError("unmarking an item needs a reason (it is recorded)")
        now = station_time_now()
        with self.transaction():
            self.conn.execute("DELETE FROM item_sensitive_readers WHERE item = ?", (item,))
            done = self.conn.execute("DELETE FROM item_sensitive WHERE item = ?", (item,))
            if done.rowcount != 1:
                raise CentralIndexError(f"item {item} is not marked sensitive")
            self.conn.execute(
                "INSERT INTO sensitivity_events (time, item, action, readers, by, reason, remote) "
                "VALUES (?, ?, 'unmarked', '', ?, ?, ?)", (now, item, by, reason, remote),
            )

    def sensitivity(self, item: str) -> dict[str, Any] | None:
        """``{"marked_utc", "by", "reason", "readers": [...]}`` of a sensitive item, None otherwise."""
        row = self.conn.execute("SELECT marked_utc, by, reason FROM item_sensitive WHERE item = ?",
                                (item,)).fetchone()
        if row is None:
            return None
        readers = [r[0] for r in self.conn.execute(
            "SELECT reader FROM item_sensitive_readers WHERE item = ? ORDER BY reader", (item,))]
        return {"marked_utc": row["marked_utc"], "by": row["by"], "reason": row["reason"], "readers": readers}

    def sensitivity_events(self, item: str) -> list[dict[str, Any]]:
        return [
            {**dict(row), "readers": row["readers"].split()}
            for row in self.conn.execute(
                "SELECT time, item, action, readers, by, reason, remote FROM sensitivity_events "
                "WHERE item = ? ORDER BY id", (item,))
        ]

    # -- console sessions (by token hash) ----------------------------------------------------------

    def put_session(self, key: bytes, reader: str, method: str, cert_sha256: str | None, *, created_s: float,
                    expires_s: float, max_sessions: int, mac: str) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO console_sessions (token_sha256, reader, method, cert_sha256, created_s, "
                "last_seen_s, expires_s, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, reader, method, cert_sha256, created_s, created_s, expires_s, mac),
            )
            self.conn.execute(
                "DELETE FROM console_sessions WHERE rowid NOT IN "
                "(SELECT rowid FROM console_sessions ORDER BY created_s DESC, rowid DESC LIMIT ?)",
                (max_sessions,),
            )

    def session(self, key: bytes) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT reader, method, cert_sha256, created_s, last_seen_s, expires_s, mac "
            "FROM console_sessions WHERE token_sha256 = ?", (key,),
        ).fetchone()
        return dict(row) if row is not None else None

    def touch_session(self, key: bytes, last_seen_s: float, *, mac: str, last_seen_before_s: float) -> bool:
        """The session's last request moved to ``last_seen_s``, with the row's new seal ``mac``, if it was
        still ``last_seen_before_s`` (a later touch is never undone); whether it was."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE console_sessions SET last_seen_s = ?, mac = ? WHERE token_sha256 = ? "
                "AND last_seen_s = ?", (last_seen_s, mac, key, last_seen_before_s)).rowcount == 1

    def end_session(self, key: bytes) -> bool:
        with self.transaction():
            return self.conn.execute("DELETE FROM console_sessions WHERE token_sha256 = ?",
                                     (key,)).rowcount == 1

    def end_sessions_of(self, reader: str) -> int:
        with self.transaction():
            return self.conn.execute("DELETE FROM console_sessions WHERE reader = ?", (reader,)).rowcount

    def purge_sessions(self, *, idle_before_s: float, now_s: float) -> int:
        """Delete the sessions idle since before ``idle_before_s`` or expired at ``now_s``."""
        with self.transaction():
            return self.conn.execute("DELETE FROM console_sessions WHERE last_seen_s < ? OR expires_s <= ?",
                                     (idle_before_s, now_s)).rowcount

    def session_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM console_sessions").fetchone()[0])

    # -- media ranges ---------------------------------------------------------------------------

    def log_media_range(self, access_id: int, first_byte: int, last_byte: int) -> None:
        """One served byte range of a playback (its own transaction; raises when it cannot be kept)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO media_ranges (access_id, time, first_byte, last_byte) VALUES (?, ?, ?, ?)",
                (access_id, station_time_now(), first_byte, last_byte),
            )


def scope_clause(scope: ReaderScope, item_column: str = "i.item") -> tuple[str, list[Any]]:
    """The SQL condition (and its arguments) true for the items ``scope`` may see, for any query whose
    rows carry an item id in ``item_column``: every listing, search, statistic or package of the console
    adds it to its WHERE clause, so what a reader may not see is never read out of the database.

    Visible: the item's unit is one of the reader's (a supervisor: any unit, even unknown), and the item
    is not marked sensitive or ``scope.reader`` is named on it."""
    if not _COLUMN_RE.fullmatch(item_column):
        raise ValueError(f"not a column reference: {item_column!r}")
    args: list[Any] = []
    if scope.all_units:
        unit_sql = "1"
    else:
        units = sorted(scope.units)
        if not units:
            return "0", []
        unit_sql = (f"(SELECT unit_code FROM item_units WHERE item = {item_column}) "
                    f"IN ({', '.join('?' * len(units))})")
        args.extend(units)
    sensitive_sql = (f"(NOT EXISTS (SELECT 1 FROM item_sensitive WHERE item = {item_column}) OR EXISTS "
                     f"(SELECT 1 FROM item_sensitive_readers WHERE item = {item_column} AND reader = ?))")
    args.append(scope.reader)
    return f"({unit_sql} AND {sensitive_sql})", args
