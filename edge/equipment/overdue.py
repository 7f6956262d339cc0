"""Overdue recorders: one alert per assignment out longer than `[equipment] overdue_after_h`.

:func:`raise_overdue_alerts` writes, for each open assignment past its due time that has no alert yet, an
`overdue` ledger entry and its row in `overdue_alerts`, in one transaction: the row is what makes the
alert once per assignment, across ticks and restarts (a crash between the two cannot happen: they commit
together). The return closes it: :func:`close_overdue_alert`, called by the check-in
(:func:`edge.equipment.checkout.return_recorder`) in the transaction of its `returned` entry, which then
says how late the recorder came back (`"overdue": {"alerted_seq", "due_at", "late_s"}`).

The due time is the check-out time plus `overdue_after_h` as configured when the check runs: a changed
setting applies to recorders already out, from the next check.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from edge.custody.ledger import EntryType, LedgerEntry
from edge.equipment.fleet import parse_station_time
from edge.ingest.store import StationStore

__all__ = ["OverdueAlert", "close_overdue_alert", "create_overdue_schema", "open_overdue_alert",
           "raise_overdue_alerts"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS overdue_alerts (
        assignment INTEGER PRIMARY KEY,  -- assignments.id: one alert per assignment
        device_serial TEXT NOT NULL,
        officer_no TEXT NOT NULL,
        due_at TEXT NOT NULL,            -- station UTC time
        alerted_at TEXT NOT NULL,
        alerted_seq INTEGER NOT NULL,    -- its `overdue` ledger entry
        closed_at TEXT,                  -- the return, NULL while out
        closed_seq INTEGER               -- its `returned` entry
    )""",
)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ledger's


def create_overdue_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:  # execute, not executescript: no implicit commit
        conn.execute(statement)


@dataclass(frozen=True)
class OverdueAlert:
    assignment: int
    device_serial: str
    officer_no: str
    due_at: str
    alerted_at: str
    alerted_seq: int

    def on_return(self, returned_at: str) -> dict[str, object]:
        """What the `returned` entry says of the alert: which entry raised it, the due time, how late."""
        due, back = parse_station_time(self.due_at), parse_station_time(returned_at)
        late_s = None if due is None or back is None else round((back - due).total_seconds(), 3)
        return {"alerted_seq": self.alerted_seq, "due_at": self.due_at, "late_s": late_s}


def open_overdue_alert(conn: sqlite3.Connection, assignment: int) -> OverdueAlert | None:
    """The assignment's alert while it is open (raised, not yet closed by the return)."""
    create_overdue_schema(conn)
    row = conn.execute(
        "SELECT assignment, device_serial, officer_no, due_at, alerted_at, alerted_seq FROM overdue_alerts "
        "WHERE assignment = ? AND closed_at IS NULL", (assignment,)).fetchone()
    return None if row is None else OverdueAlert(int(row[0]), str(row[1]), str(row[2]), str(row[3]),
                                                 str(row[4]), int(row[5]))


def close_overdue_alert(conn: sqlite3.Connection, assignment: int, *, closed_at: str, seq: int) -> None:
    """Close the alert (the caller's transaction, that of the `returned` entry `seq`)."""
    conn.execute("UPDATE overdue_alerts SET closed_at = ?, closed_seq = ? WHERE assignment = ?",
                 (closed_at, seq, assignment))


def _due(checked_out: object, now: datetime, overdue_after: timedelta) -> bool:
    out_at = parse_station_time(str(checked_out))
    return out_at is not None and now >= out_at + overdue_after


def raise_overdue_alerts(store: StationStore, *, now: datetime,
                         overdue_after: timedelta) -> list[LedgerEntry]:
    """An `overdue` entry for each open assignment past due with no alert yet; the entries written."""
    conn = store.conn
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "assignments" not in tables:
        return []  # issue and return never ran on this store: nothing can be out
    query = ("SELECT a.id, a.officer_no, a.officer_name, a.unit_code, a.unit_name, a.device_serial, a.bay, "
             "a.checked_out, a.checked_out_seq FROM assignments a WHERE a.returned IS NULL AND NOT EXISTS "
             "(SELECT 1 FROM overdue_alerts o WHERE o.assignment = a.id) ORDER BY a.id")
    candidates = conn.execute(query) if "overdue_alerts" in tables else None
    if candidates is not None and not any(_due(row[7], now, overdue_after) for row in candidates):
        return []  # the common case, every check: no write transaction (and no fsync) for nothing
    written: list[LedgerEntry] = []
    with store.transaction():
        create_overdue_schema(conn)
        rows = conn.execute(query).fetchall()
        for (assignment, officer_no, officer_name, unit_code, unit_name, serial, bay, checked_out,
             checked_out_seq) in rows:
            out_at = parse_station_time(str(checked_out))
            if out_at is None:
                continue  # not a time the station writes: nothing to measure from
            due = out_at + overdue_after
            if now < due:
                continue
            due_text = due.strftime(TIME_FORMAT)
            entry = store.ledger.append(EntryType.OVERDUE, None, {
                "assignment": assignment, "officer_no": officer_no, "officer_name": officer_name,
                "unit_code": unit_code, "unit_name": unit_name, "device_serial": serial, "bay": bay,
                "checked_out": checked_out, "checked_out_seq": checked_out_seq, "due_at": due_text,
                "overdue_after_h": round(overdue_after.total_seconds() / 3600, 6),
                "out_for_s": round((now - out_at).total_seconds(), 3),
            })
            conn.execute(
                "INSERT INTO overdue_alerts(assignment, device_serial, officer_no, due_at, alerted_at, "
                "alerted_seq) VALUES (?, ?, ?, ?, ?, ?)",
                (assignment, serial, officer_no, due_text, entry.time, entry.seq))
            written.append(entry)
    return written
