"""The agency's equipment at the central: its officer list, versioned and signed, and the stations' fleets.

Kept in ``<store>/equipment.db`` (SQLite, WAL), beside the index: ``edge central officers import`` writes a
new list version while the central runs, and the running central answers from the newest.

* ``officer_lists``: every version the central issued (never updated or deleted), each the signed envelope
  of :mod:`edge.equipment.officer_list` with its version, digest, time and who imported it.
* ``fleet_reports``: the latest report of each station (:mod:`edge.equipment.fleet_report`) with the
  central's time of receipt; a newer report replaces the station's previous one.

The endpoints (:func:`add_equipment_routes`): ``GET /v1/stations/{S}/officers?have=N`` and ``POST
/v1/stations/{S}/fleet`` for the station itself (mutual TLS), the same as the MQTT API's ``officers`` and
``fleet-report``; ``GET /v1/fleet`` for auditors (a reader certificate or a console session), every read
logged first, a reader of role ``reader`` seeing only the stations of its units. The fleet view flags a
recorder that the latest reports of two stations both list (``at_stations`` names them), and each station's
row says which officer list version it holds beside the newest issued (a station that lags shows).

Limit: one SQLite file per central store. Several receivers in front of one PostgreSQL (README, "Growing
past one machine") do not share it yet; run ``edge central officers import`` on each, or one receiver
answers the equipment endpoints.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.registration import Caller, RejectCode, Rejection
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.keys import StationKey
from edge.equipment.fleet_report import FleetReportError, check_report
from edge.equipment.officer_csv import OfficerRow
from edge.equipment.officer_list import (
    MAX_LIST_BYTES,
    OfficerListError,
    list_document,
    sign_list,
    verify_list,
)

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = [
    "EQUIPMENT_DB",
    "EquipmentStore",
    "IssuedList",
    "add_equipment_routes",
    "fleet_view",
    "officer_list_problems",
    "officers_answer",
]

log = logging.getLogger(__name__)

EQUIPMENT_DB = "equipment.db"
MAX_HAVE = 2**53 - 1

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS officer_lists (
        version INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        by TEXT NOT NULL,
        officers INTEGER NOT NULL,
        envelope BLOB NOT NULL           -- canonical JSON of the signed envelope
    )""",
    """CREATE TRIGGER IF NOT EXISTS officer_lists_append_only BEFORE UPDATE ON officer_lists
        BEGIN SELECT RAISE(ABORT, 'officer lists are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS officer_lists_no_delete BEFORE DELETE ON officer_lists
        BEGIN SELECT RAISE(ABORT, 'officer lists are append-only'); END""",
    """CREATE TABLE IF NOT EXISTS fleet_reports (
        station TEXT PRIMARY KEY,
        received TEXT NOT NULL,          -- central UTC time
        report BLOB NOT NULL             -- canonical JSON, checked
    )""",
)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IssuedList:
    """One version as the store holds it."""

    def __init__(self, version: int, sha256: str, issued_at: str, by: str, officers: int,
                 envelope: bytes) -> None:
        self.version = version
        self.sha256 = sha256
        self.issued_at = issued_at
        self.by = by
        self.officers = officers
        self.envelope = envelope

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "officers_sha256": self.sha256, "issued_at": self.issued_at,
                "by": self.by, "officers": self.officers}


class EquipmentStore:
    """``equipment.db`` of a central store; safe to share between the event loop's handlers (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        for statement in SCHEMA:
            self.conn.execute(statement)

    @classmethod
    def of_store(cls, store_dir: Path) -> EquipmentStore:
        return cls(store_dir / EQUIPMENT_DB)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def issue(self, rows: list[OfficerRow], *, key: StationKey, central: str, by: str) -> IssuedList:
        """Sign ``rows`` as the next version (one more than the newest) and keep it."""
        with self._transaction() as conn:
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM officer_lists").fetchone()
            version = int(row[0]) + 1
            issued_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            document = list_document(rows, central=central, version=version, issued_at=issued_at)
            envelope = canonical_json(sign_list(document, key.sign, key.key_id))
            if len(envelope) > MAX_LIST_BYTES:
                raise OfficerListError(
                    f"the signed list has {len(envelope)} bytes; one answer to a station carries at most "
                    f"{MAX_LIST_BYTES} (README: the limits of the officer list)")
            conn.execute(
                "INSERT INTO officer_lists(version, sha256, issued_at, by, officers, envelope) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (version, document["officers_sha256"], issued_at, by, len(document["officers"]), envelope))
        return IssuedList(version, str(document["officers_sha256"]), issued_at, by,
                          len(document["officers"]), envelope)

    def newest(self) -> IssuedList | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT version, sha256, issued_at, by, officers, envelope FROM officer_lists "
                "ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else IssuedList(int(row[0]), str(row[1]), str(row[2]), str(row[3]),
                                                   int(row[4]), bytes(row[5]))

    def versions(self) -> list[IssuedList]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT version, sha256, issued_at, by, officers, envelope FROM officer_lists "
                "ORDER BY version").fetchall()
        return [IssuedList(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), bytes(r[5])) for r in rows]

    def keep_report(self, report: dict[str, Any]) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO fleet_reports(station, received, report) VALUES (?, ?, ?) ON CONFLICT(station) "
                "DO UPDATE SET received = excluded.received, report = excluded.report",
                (report["station"], utc_now(), canonical_json(report)))

    def reports(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self.conn.execute("SELECT station, received, report FROM fleet_reports ORDER BY station")
            return [(str(r[0]), str(r[1]), parse_json(bytes(r[2]))) for r in rows]


def officer_list_problems(path: Path, public_key: Ed25519PublicKey) -> tuple[list[tuple[str, str]], int]:
    """`edge central verify`: every version in ``path`` (an ``equipment.db``) signed by ``public_key``,
    numbered 1, 2, 3, ... without a gap, its digest and officer count as the envelope says. Returns the
    problems as (where, what) and how many versions were checked. Read-only."""
    problems: list[tuple[str, str]] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [(f"file {path.name}", f"cannot be opened: {exc}")], 0
    try:
        rows = conn.execute(
            "SELECT version, sha256, officers, envelope FROM officer_lists ORDER BY version").fetchall()
    except sqlite3.Error as exc:
        return [(f"file {path.name}", f"officer lists cannot be read: {exc}")], 0
    finally:
        conn.close()
    for expected, (version, digest, officers, envelope) in enumerate(rows, start=1):
        where = f"officer list version {version}"
        if version != expected:
            problems.append((where, f"expected version {expected}: a version is missing"))
        try:
            verified = verify_list(parse_json(bytes(envelope)), public_key)
        except (OfficerListError, ValueError) as exc:
            problems.append((where, f"does not verify: {exc}"))
            continue
        if (verified.version, verified.sha256, len(verified.officers)) != (version, digest, officers):
            problems.append((where, "its row (version, digest, officers) differs from the signed list"))
    return problems, len(rows)


def officers_answer(store: EquipmentStore, have: int) -> dict[str, Any]:
    """What a station gets for ``have`` (the version in force there): the newest signed list, or only its
    version when the station has it already (or the central has none: version 0)."""
    newest = store.newest()
    if newest is None:
        return {"version": 0, "list": None}
    if newest.version == have:
        return {"version": newest.version, "list": None}
    return {"version": newest.version, "list": parse_json(newest.envelope)}


def fleet_view(store: EquipmentStore, stations: set[str] | None) -> dict[str, Any]:
    """Every recorder the latest reports list, with the station holding it; ``stations`` None: all. A
    serial in the latest reports of two stations is flagged (``at_stations`` lists them), whatever the
    reader's scope: the reports of stations the reader may not see are counted, not shown."""
    holders: dict[str, list[str]] = {}
    shown: list[dict[str, Any]] = []
    station_rows: list[dict[str, Any]] = []
    for station, received, report in store.reports():
        for recorder in report["recorders"]:
            holders.setdefault(recorder["device_serial"], []).append(station)
        if stations is not None and station not in stations:
            continue
        station_rows.append({"station": station, "reported_at": report["at"], "received": received,
                             "recorders": len(report["recorders"]),
                             "officers_version": report.get("officers_version")})
        for recorder in report["recorders"]:
            shown.append({"station": station, **recorder})
    for recorder in shown:
        at = holders[recorder["device_serial"]]
        recorder["at_stations"] = sorted(at) if len(at) > 1 else None
        recorder["flag"] = "seen_at_two_stations" if len(at) > 1 else None
    shown.sort(key=lambda r: (r["device_serial"], r["station"]))
    newest = store.newest()
    return {"officers_version": None if newest is None else newest.version,
            "stations": station_rows, "recorders": shown,
            "flagged": sorted({r["device_serial"] for r in shown if r["flag"]})}


def _have(request: web.Request) -> int:
    unknown = sorted(set(request.query) - {"have"})
    values = request.query.getall("have", [])
    if unknown or len(values) > 1:
        raise Rejection(RejectCode.BAD_REQUEST, "the only query parameter is have, given at most once")
    if not values:
        return 0
    try:
        return parse_ascii_uint(values[0], minimum=0, maximum=MAX_HAVE)
    except AsciiNumberError as exc:
        raise Rejection(RejectCode.BAD_REQUEST, f"have: {exc}") from None


def station_officers(parts: CentralParts, store: EquipmentStore, caller: Caller, station: str,
                     have: int) -> dict[str, Any]:
    if station != caller.station_id:
        raise parts.registrar.reject(
            Rejection(RejectCode.WRONG_STATION, f"station {caller.station_id} may fetch its own list only"),
            station=caller.station_id, remote=caller.remote)
    return officers_answer(store, have)


def station_fleet_report(parts: CentralParts, store: EquipmentStore, caller: Caller, station: str,
                         doc: object) -> dict[str, Any]:
    if station != caller.station_id:
        raise parts.registrar.reject(
            Rejection(RejectCode.WRONG_STATION, f"station {caller.station_id} may report its own fleet only"),
            station=caller.station_id, remote=caller.remote)
    try:
        report = check_report(doc, station=caller.station_id)
    except FleetReportError as exc:
        raise parts.registrar.reject(Rejection(RejectCode.BAD_REQUEST, f"fleet report: {exc}"),
                                     station=caller.station_id, remote=caller.remote) from None
    store.keep_report(report)
    return {"station": caller.station_id, "recorders": len(report["recorders"])}


class EquipmentEndpoints:
    def __init__(self, parts: CentralParts, store: EquipmentStore, stall_timeout_s: float) -> None:
        self.parts = parts
        self.store = store
        self.stall_timeout_s = stall_timeout_s

    async def officers(self, request: web.Request) -> web.Response:
        from edge.central.app import json_response

        caller = self.parts.auth.station(request)
        answer = station_officers(self.parts, self.store, caller, request.match_info["station"],
                                  _have(request))
        return json_response(answer, headers={"Cache-Control": "no-store"})

    async def fleet_report(self, request: web.Request) -> web.Response:
        from edge.central.app import json_response, read_json_body

        caller = self.parts.auth.station(request)
        doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        return json_response(station_fleet_report(self.parts, self.store, caller,
                                                  request.match_info["station"], doc))

    async def fleet(self, request: web.Request) -> web.Response:
        from edge.central.app import json_response
        from edge.central.console.scope import log_read, reader_scope

        if request.query:
            raise Rejection(RejectCode.BAD_REQUEST, "GET /v1/fleet takes no query parameters")
        scope = await reader_scope(request)
        log_read(request, scope, "fleet", query="fleet")
        stations = None
        if not scope.all_units:
            stations = {s for s, _, _ in self.store.reports()
                        if self.parts.console.station_unit(s) in scope.units}
        return json_response(fleet_view(self.store, stations), headers={"Cache-Control": "no-store"})


EQUIPMENT_STORE: web.AppKey[EquipmentStore] = web.AppKey("equipment_store", EquipmentStore)


def add_equipment_routes(app: web.Application, parts: CentralParts, stall_timeout_s: float) -> EquipmentStore:
    store = EquipmentStore.of_store(parts.config.layout.store_dir)
    app[EQUIPMENT_STORE] = store
    endpoints = EquipmentEndpoints(parts, store, stall_timeout_s)
    app.router.add_get("/v1/stations/{station}/officers", endpoints.officers)
    app.router.add_post("/v1/stations/{station}/fleet", endpoints.fleet_report)
    app.router.add_get("/v1/fleet", endpoints.fleet)

    async def close(_app: web.Application) -> Any:
        yield
        store.close()

    app.cleanup_ctx.append(close)
    return store
