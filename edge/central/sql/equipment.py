"""The agency's equipment records in SQL, shared by both backends: :class:`SqlEquipmentRows` (the
:class:`edge.central.storage.EquipmentRows` protocol) written once, in SQLite's ``?`` placeholders.

The tables are ``officer_lists`` (append-only, a version one more than the newest: both refused by the
database otherwise) and ``fleet_reports`` (one row per station, replaced by its next report), in
``edge/central/sqlite/equipment.py`` and ``edge/central/postgres/migrations/0004_equipment.sql``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from edge.central.index import CentralIndexError, IssuedList
from edge.central.sql.console import SqlConnection

__all__ = ["SqlEquipmentRows"]

_COLUMNS = "version, sha256, issued_at, by, officers, envelope"


def _issued(row: Any) -> IssuedList:
    return IssuedList(int(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]), bytes(row[5]))


class SqlEquipmentRows(ABC):
    """Officer-list versions and fleet reports in the tables of one database."""

    @property
    @abstractmethod
    def conn(self) -> SqlConnection:
        """The backend's connection for the calling thread (its reader threads read on their own)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[object]:
        """The database's unit of work, under its writer lock (never await inside it)."""

    def issue_officer_list(self, sign: Callable[[int], IssuedList]) -> IssuedList:
        with self.transaction():
            # Read under the writer lock the transaction holds: no other issuer can take the same number
            # (and the table's insert trigger refuses any number but the next).
            row = self.conn.execute("SELECT COALESCE(MAX(version), 0) FROM officer_lists").fetchone()
            version = int(row[0]) + 1
            issued = sign(version)
            if issued.version != version:
                raise CentralIndexError(f"officer list version {issued.version} refused: the next version "
                                        f"is {version}")
            self.conn.execute(
                f"INSERT INTO officer_lists ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (issued.version, issued.sha256, issued.issued_at, issued.by, issued.officers,
                 issued.envelope))
        return issued

    def newest_officer_list(self) -> IssuedList | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM officer_lists ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else _issued(row)

    def officer_lists(self) -> list[IssuedList]:
        return [_issued(row) for row in self.conn.execute(
            f"SELECT {_COLUMNS} FROM officer_lists ORDER BY version").fetchall()]

    def keep_fleet_report(self, station: str, received_utc: str, report: bytes) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO fleet_reports (station, received, report) VALUES (?, ?, ?) "
                "ON CONFLICT (station) DO UPDATE SET received = excluded.received, report = excluded.report",
                (station, received_utc, report))

    def fleet_reports(self) -> list[tuple[str, str, bytes]]:
        return [(str(row[0]), str(row[1]), bytes(row[2])) for row in self.conn.execute(
            "SELECT station, received, report FROM fleet_reports ORDER BY station").fetchall()]
