"""The station's records of its recorders, read for the fleet view (:mod:`.fleet`) from state.db.

Over a read-only connection of its own (:class:`edge.observe.store_db.ReadOnlyStoreDb`), in a worker
thread, so that a read never runs inside the agent's transactions nor on its event loop. Each read is
bounded: the latest docking per recorder (the `sessions` table, grouped), the open assignments and each
recorder's last returned one (indexed), and the status each recorder reported at docking, taken from the
`device_authenticated` ledger entries. The ledger is scanned once from the start, then only past the
last entry seen (its primary key), keeping the newest reading per recorder: memory grows with the number
of recorders, never with the ledger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.equipment.fleet import (
    DockingRecord,
    FleetRecords,
    HolderRecord,
    StatusReading,
    parse_station_time,
)
from edge.ingest.store import SESSION_ORDER
from edge.observe.store_db import ReadOnlyStoreDb

__all__ = ["FleetRecordsReader", "read_dockings", "reading_of_entry"]

MAX_RECORDERS = 100_000  # readings kept; a ledger naming more recorders than this is not a fleet


def reading_of_entry(time_text: str, data_text: str) -> tuple[str, StatusReading] | None:
    """(device serial, reading) of a `device_authenticated` entry's JSON, None when it holds none."""
    try:
        data = json.loads(data_text)
    except ValueError:
        return None
    at = parse_station_time(time_text)
    if not isinstance(data, dict) or at is None:
        return None
    serial = data.get("device_serial")
    status = data.get("status")
    if not isinstance(serial, str) or not serial or not isinstance(status, dict):
        return None
    identity = data.get("identity")
    model = identity.get("id_code") if isinstance(identity, dict) else None
    firmware = status.get("firmware")
    return serial, StatusReading(
        at, status.get("battery_percent"), status.get("storage_free_bytes"),
        status.get("storage_total_bytes"),
        model if isinstance(model, str) and model else None,
        firmware if isinstance(firmware, str) and firmware else None)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def read_dockings(conn: sqlite3.Connection) -> tuple[dict[str, DockingRecord], dict[str, int]]:
    """The latest docking of each recorder (in the order the station recorded them, `started_seq`; never by
    the wall-clock `started`, which a clock stepped back reorders, nor by the rowid, which VACUUM
    renumbers), and how many it had here."""
    latest: dict[str, DockingRecord] = {}
    counts: dict[str, int] = {}
    rows = conn.execute(
        "SELECT device_serial, bay, started, ended, outcome, usb_serial, n FROM ("
        " SELECT device_serial, bay, started, ended, outcome, usb_serial,"
        f"  row_number() OVER (PARTITION BY device_serial ORDER BY {SESSION_ORDER}) AS rank,"
        "  count(*) OVER (PARTITION BY device_serial) AS n FROM sessions) WHERE rank = 1")
    for serial, bay, started, ended, outcome, usb_serial, n in rows:
        started_at = parse_station_time(str(started))
        if started_at is None:
            continue
        latest[str(serial)] = DockingRecord(
            bay if isinstance(bay, int) else None, started_at,
            parse_station_time(str(ended)) if ended is not None else None,
            None if outcome is None else str(outcome), None if usb_serial is None else str(usb_serial))
        counts[str(serial)] = int(n)
    return latest, counts


def _holder(row: Sequence[Any]) -> HolderRecord | None:
    assignment, officer_no, name, unit_code, unit_name, checked_out, returned, alerted = row
    out = parse_station_time(str(checked_out))
    if out is None:
        return None
    return HolderRecord(int(assignment), str(officer_no), str(name), str(unit_code), str(unit_name), out,
                        parse_station_time(str(returned)) if returned is not None else None,
                        parse_station_time(str(alerted)) if alerted is not None else None)


def read_assignments(conn: sqlite3.Connection, tables: set[str]
                     ) -> tuple[dict[str, HolderRecord], dict[str, HolderRecord]]:
    """(open assignment per recorder, its last returned one)."""
    if "assignments" not in tables:
        return {}, {}
    alerted = ("(SELECT alerted_at FROM overdue_alerts WHERE assignment = a.id)" if "overdue_alerts" in tables
               else "NULL")
    columns = (f"a.id, a.officer_no, a.officer_name, a.unit_code, a.unit_name, a.checked_out, a.returned, "
               f"{alerted}")
    open_rows = conn.execute(f"SELECT a.device_serial, {columns} FROM assignments a WHERE a.returned IS NULL")
    opened = {str(r[0]): h for r in open_rows if (h := _holder(r[1:])) is not None}
    returned_rows = conn.execute(
        f"SELECT device_serial, {columns} FROM (SELECT a.*, row_number() OVER (PARTITION BY a.device_serial "
        "ORDER BY a.returned DESC, a.id DESC) AS rank FROM assignments a WHERE a.returned IS NOT NULL) a "
        "WHERE rank = 1")
    last = {str(r[0]): h for r in returned_rows if (h := _holder(r[1:])) is not None}
    return opened, last


class FleetRecordsReader:
    """Reads :class:`~edge.equipment.fleet.FleetRecords` of one store (blocking: call in a thread)."""

    def __init__(self, store_dir: Path) -> None:
        self._db = ReadOnlyStoreDb(store_dir, name="fleet records reader")
        self._seen_seq = 0
        self._readings: dict[str, StatusReading] = {}

    def read(self, allowed: Sequence[str]) -> FleetRecords:
        return self._db.read(lambda conn: self._read(conn, allowed))

    def _scan_readings(self, conn: sqlite3.Connection) -> None:
        # Up to the head as it is now: an entry appended during the scan is read by the next one.
        head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM ledger").fetchone()[0])
        rows = conn.execute(
            "SELECT time, data FROM ledger WHERE seq > ? AND seq <= ? AND type = ? ORDER BY seq",
            (self._seen_seq, head, EntryType.DEVICE_AUTHENTICATED.value))
        for time_text, data_text in rows:  # iterated, not fetched whole: one docking's entry at a time
            found = reading_of_entry(str(time_text), str(data_text))
            if found is None:
                continue
            serial, reading = found
            if serial in self._readings or len(self._readings) < MAX_RECORDERS:
                self._readings[serial] = reading
        self._seen_seq = head

    def _read(self, conn: sqlite3.Connection, allowed: Sequence[str]) -> FleetRecords:
        tables = _tables(conn)
        if "ledger" in tables:
            self._scan_readings(conn)
        dockings, counts = read_dockings(conn) if "sessions" in tables else ({}, {})
        opened, last = read_assignments(conn, tables)
        return FleetRecords(tuple(allowed), dockings, counts, dict(self._readings), opened, last)

    def close(self) -> None:
        self._db.close()
