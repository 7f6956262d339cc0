"""The station's own record of who held which recorder when: assignments, and the PIN lockout.

An assignment is opened at check-out (领用) and closed at check-in (归还), each in the transaction of its
ledger entry (`assigned`, `returned`). At most one open assignment per recorder (device serial) and per
officer, enforced by the database. Times are the station's UTC (the ledger's format), so that the
records of one station order themselves without trusting any recorder's clock.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Assignment", "AssignmentBook", "PinLockout", "clear_pin_failures"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS assignments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        officer_no TEXT NOT NULL,
        officer_name TEXT NOT NULL,
        unit_code TEXT NOT NULL,
        unit_name TEXT NOT NULL,
        device_serial TEXT NOT NULL,    -- the recorder's product serial (ZFY_INFO), read after login
        usb_serial TEXT NOT NULL,
        bay INTEGER,                    -- the bay it was taken from
        method TEXT NOT NULL,           -- card | pin
        checked_out TEXT NOT NULL,      -- station UTC time
        checked_out_seq INTEGER NOT NULL,
        returned TEXT,                  -- station UTC time, NULL while out
        returned_bay INTEGER,
        returned_seq INTEGER
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS assignments_open_recorder ON assignments(device_serial) "
    "WHERE returned IS NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS assignments_open_officer ON assignments(officer_no) "
    "WHERE returned IS NULL",
    "CREATE INDEX IF NOT EXISTS assignments_recorder_time ON assignments(device_serial, checked_out)",
    """CREATE TABLE IF NOT EXISTS officer_pin_failures (
        officer_no TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,      -- consecutive wrong PINs
        locked_until TEXT,              -- station UTC time, or NULL
        lockouts INTEGER NOT NULL DEFAULT 0  -- lockouts since the last right PIN (each one twice as long)
    )""",
)
# The longest a lockout grows to (unless `pin_lockout_s` is longer already).
MAX_LOCKOUT_S = 86400.0

_COLUMNS = ("id, officer_no, officer_name, unit_code, unit_name, device_serial, usb_serial, bay, method, "
            "checked_out, checked_out_seq, returned, returned_bay, returned_seq")


@dataclass(frozen=True)
class Assignment:
    id: int
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str
    device_serial: str
    usb_serial: str
    bay: int | None
    method: str
    checked_out: str
    checked_out_seq: int
    returned: str | None = None
    returned_bay: int | None = None
    returned_seq: int | None = None

    def public(self) -> dict[str, object]:
        return {
            "assignment": self.id, "officer_no": self.officer_no, "officer_name": self.officer_name,
            "unit_code": self.unit_code, "unit_name": self.unit_name, "device_serial": self.device_serial,
            "usb_serial": self.usb_serial, "bay": self.bay, "method": self.method,
            "checked_out": self.checked_out, "returned": self.returned, "returned_bay": self.returned_bay,
        }


def _assignment(row: tuple[object, ...]) -> Assignment:
    return Assignment(*row)  # type: ignore[arg-type]  # columns in field order, types from the schema


def _parse(time_text: str) -> datetime:
    return datetime.strptime(time_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AssignmentBook:
    """The `assignments` table. Writes only inside the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        for statement in SCHEMA:  # execute, not executescript: no implicit commit
            conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(officer_pin_failures)")}
        if "lockouts" not in columns:  # a store made before lockouts escalated
            conn.execute("ALTER TABLE officer_pin_failures ADD COLUMN lockouts INTEGER NOT NULL DEFAULT 0")

    def _one(self, where: str, args: tuple[object, ...]) -> Assignment | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM assignments WHERE {where}", args).fetchone()
        return None if row is None else _assignment(row)

    def open_for_recorder(self, device_serial: str) -> Assignment | None:
        return self._one("device_serial = ? AND returned IS NULL", (device_serial,))

    def open_for_officer(self, officer_no: str) -> Assignment | None:
        return self._one("officer_no = ? AND returned IS NULL", (officer_no,))

    def open_assignments(self) -> list[Assignment]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM assignments WHERE returned IS NULL ORDER BY id")
        return [_assignment(r) for r in rows]

    def of_recorder(self, device_serial: str) -> list[Assignment]:
        """Every assignment of a recorder, oldest first."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM assignments WHERE device_serial = ? ORDER BY checked_out, id",
            (device_serial,))
        return [_assignment(r) for r in rows]

    def open(self, *, officer_no: str, officer_name: str, unit_code: str, unit_name: str,
             device_serial: str, usb_serial: str, bay: int | None, method: str, checked_out: str,
             seq: int) -> Assignment:
        cursor = self.conn.execute(
            "INSERT INTO assignments(officer_no, officer_name, unit_code, unit_name, device_serial,"
            " usb_serial, bay, method, checked_out, checked_out_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (officer_no, officer_name, unit_code, unit_name, device_serial, usb_serial, bay, method,
             checked_out, seq),
        )
        assert cursor.lastrowid is not None
        found = self._one("id = ?", (cursor.lastrowid,))
        assert found is not None
        return found

    def close(self, assignment_id: int, *, returned: str, bay: int | None, seq: int) -> Assignment:
        self.conn.execute(
            "UPDATE assignments SET returned = ?, returned_bay = ?, returned_seq = ? WHERE id = ?",
            (returned, bay, seq, assignment_id))
        found = self._one("id = ?", (assignment_id,))
        assert found is not None
        return found


class PinLockout:
    """Consecutive wrong PINs per officer; after `max_failures` the officer's PIN is refused until
    `lockout_s` has passed (checked with the station's clock). Each further lockout before a right PIN lasts
    twice as long as the one before, up to a day (`MAX_LOCKOUT_S`): 5 guesses per 15 minutes would try
    every 4-digit PIN in about 10 days, at most 5 a day take decades. A right PIN (or a new PIN) clears the
    count and the lockouts."""

    def __init__(self, conn: sqlite3.Connection, *, max_failures: int, lockout_s: float) -> None:
        self.conn = conn
        self.max_failures = max_failures
        self.lockout_s = lockout_s

    def locked_until(self, officer_no: str, now: str) -> str | None:
        row = self.conn.execute("SELECT locked_until FROM officer_pin_failures WHERE officer_no = ?",
                                (officer_no,)).fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]) if _parse(str(row[0])) > _parse(now) else None

    def failed(self, officer_no: str, now: str) -> tuple[int, str | None]:
        """Count a wrong PIN (caller's transaction): (failures so far, locked_until or None)."""
        row = self.conn.execute(
            "SELECT failures, locked_until, lockouts FROM officer_pin_failures WHERE officer_no = ?",
            (officer_no,)).fetchone()
        failures, lockouts = 1, 0
        if row is not None:
            expired = row[1] is not None and _parse(str(row[1])) <= _parse(now)
            failures = 1 if expired else int(row[0]) + 1
            lockouts = int(row[2])
        locked = None
        if failures >= self.max_failures:
            lockouts += 1
            longest = max(self.lockout_s, MAX_LOCKOUT_S)
            seconds = min(self.lockout_s * 2.0 ** min(lockouts - 1, 32), longest)
            locked = _format(_parse(now) + timedelta(seconds=seconds))
        self.conn.execute(
            "INSERT INTO officer_pin_failures(officer_no, failures, locked_until, lockouts) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT(officer_no) DO UPDATE SET failures = excluded.failures, "
            "locked_until = excluded.locked_until, lockouts = excluded.lockouts",
            (officer_no, failures, locked, lockouts),
        )
        return failures, locked

    def succeeded(self, officer_no: str) -> None:
        clear_pin_failures(self.conn, officer_no)


def clear_pin_failures(conn: sqlite3.Connection, officer_no: str) -> None:
    """Forget an officer's wrong PINs and lockout (a right PIN, or a new PIN set; caller's transaction)."""
    conn.execute("DELETE FROM officer_pin_failures WHERE officer_no = ?", (officer_no,))
