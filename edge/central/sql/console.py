"""The console's store in SQL, shared by both backends: :class:`SqlConsoleStore` (the
:class:`edge.central.storage.ConsoleStore` protocol) written once, in the ``?`` placeholders of SQLite.

A backend subclasses it with its connection (SQLite's own; PostgreSQL's through
:class:`edge.central.postgres.qmark.QmarkConnection`, which speaks the same placeholders and rows) and
what differs between the engines: how a trail row gets its seal (:meth:`SqlConsoleStore._append_trail`:
a trigger in SQLite, the central itself in PostgreSQL), how a replaced secret is scrubbed from the files,
and how the seals begin. The tables are the ones of ``edge/central/sqlite/console.py`` and
``edge/central/postgres/migrations/0003_console.sql``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from edge.central.index import (
    AccountRecord,
    CentralIndexError,
    ReaderGrant,
    Role,
    validate_reader_name,
    validate_station_id,
    validate_unit_code,
)
from edge.custody.ledger import station_time_now

__all__ = ["SqlConnection", "SqlConsoleStore"]

# The marker seal where the seals begin (edge.central.sqlite.trail.BEGIN_TABLE; repeated here so that this
# module does not import a backend).
_BEGIN_TABLE = "(seals begin)"


class SqlConnection(Protocol):
    """What the store needs of a connection: ``execute``/``executemany`` with ``?`` placeholders, rows
    readable by index and by column name (``sqlite3.Row``), cursors with ``rowcount``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


def _units_text(units: Iterable[str]) -> str:
    return " ".join(sorted({validate_unit_code(u) for u in units}))


class SqlConsoleStore(ABC):
    """The console's records in the tables of one database; methods run their own transactions."""

    @property
    @abstractmethod
    def conn(self) -> SqlConnection:
        """The backend's connection for the calling thread (its reader threads read on their own)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[object]:
        """The database's unit of work (never await inside it)."""

    @abstractmethod
    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        """Append a row to one of the sealed trails, with its seal, in the caller's transaction; its id."""

    @abstractmethod
    def _before_replacing_secret(self) -> None:
        """Make the bytes of a replaced secret unreadable in the database's files (where the engine can)."""

    @abstractmethod
    def scrub_replaced(self) -> bool:
        """Make what replaced rows held unreadable in the database's files; False: try again later."""

    @abstractmethod
    def seal_trails(self, trail_key: bytes) -> int:
        """Seal, once, the trail rows made before the seals; from now on seal with ``trail_key`` (the key
        the start checked). Returns how many rows were sealed."""

    @abstractmethod
    def trail_key_fits(self, trail_key: bytes) -> bool | None:
        """Whether ``trail_key`` is the one the trails were sealed with (None: nothing sealed yet)."""

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
        self._append_trail("account_events", {"time": station_time_now(), "name": name, "event": event,
                                              "by": by, "remote": remote, "detail": detail})

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
        self._before_replacing_secret()
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

    def trail_seals_state(self) -> tuple[bool, bool]:
        """(the start of the seals is recorded, some trail row or marker is sealed with a key)."""
        begun = self.conn.execute("SELECT 1 FROM trail_seals WHERE tbl = ?", (_BEGIN_TABLE,)).fetchone()
        keyed = self.conn.execute("SELECT 1 FROM trail_seals WHERE mac IS NOT NULL LIMIT 1").fetchone()
        return begun is not None, keyed is not None

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
            self._append_trail("grant_events", {"time": now, "name": name, "role": str(role),
                                                "units": units_text, "by": by, "reason": reason})
        grant = self.grant_of(name)
        assert grant is not None
        return grant

    def revoke_grant(self, name: str, *, by: str, reason: str) -> None:
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute("DELETE FROM reader_grants WHERE name = ?", (name,))
            if done.rowcount != 1:
                raise CentralIndexError(f"{name} has no grant")
            self._append_trail("grant_events", {"time": now, "name": name, "role": None, "units": None,
                                                "by": by, "reason": reason})

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
            self._append_trail("station_unit_events", {"time": now, "station": station, "unit_code": unit,
                                                       "by": by, "reason": reason})

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
            self._append_trail("sensitivity_events", {
                "time": now, "item": item, "action": "marked", "readers": " ".join(names), "by": by,
                "reason": reason, "remote": remote})

    def unmark_sensitive(self, item: str, *, by: str, reason: str, remote: str | None) -> None:
        if not reason.strip():
            raise CentralIndexError("unmarking an item needs a reason (it is recorded)")
        now = station_time_now()
        with self.transaction():
            self.conn.execute("DELETE FROM item_sensitive_readers WHERE item = ?", (item,))
            done = self.conn.execute("DELETE FROM item_sensitive WHERE item = ?", (item,))
            if done.rowcount != 1:
                raise CentralIndexError(f"item {item} is not marked sensitive")
            self._append_trail("sensitivity_events", {
                "time": now, "item": item, "action": "unmarked", "readers": "", "by": by, "reason": reason,
                "remote": remote})

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
                "DELETE FROM console_sessions WHERE token_sha256 NOT IN (SELECT token_sha256 FROM "
                "console_sessions ORDER BY created_s DESC, token_sha256 DESC LIMIT ?)",
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
            return bool(self.conn.execute(
                "UPDATE console_sessions SET last_seen_s = ?, mac = ? WHERE token_sha256 = ? "
                "AND last_seen_s = ?", (last_seen_s, mac, key, last_seen_before_s)).rowcount == 1)

    def end_session(self, key: bytes) -> bool:
        with self.transaction():
            return bool(self.conn.execute("DELETE FROM console_sessions WHERE token_sha256 = ?",
                                          (key,)).rowcount == 1)

    def end_sessions_of(self, reader: str) -> int:
        with self.transaction():
            return int(self.conn.execute("DELETE FROM console_sessions WHERE reader = ?", (reader,)).rowcount)

    def purge_sessions(self, *, idle_before_s: float, now_s: float) -> int:
        """Delete the sessions idle since before ``idle_before_s`` or expired at ``now_s``."""
        with self.transaction():
            return int(self.conn.execute(
                "DELETE FROM console_sessions WHERE last_seen_s < ? OR expires_s <= ?",
                (idle_before_s, now_s)).rowcount)

    def session_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM console_sessions").fetchone()[0])

    # -- media ranges ---------------------------------------------------------------------------

    def log_media_range(self, access_id: int, first_byte: int, last_byte: int) -> None:
        """One served byte range of a playback (its own transaction; raises when it cannot be kept)."""
        with self.transaction():
            self._append_trail("media_ranges", {"access_id": access_id, "time": station_time_now(),
                                                "first_byte": first_byte, "last_byte": last_byte})


