"""The agency's equipment at the central: its officer list, versioned and signed, and the stations' fleets.

Kept in the central's database behind :class:`edge.central.storage.EquipmentRows` (SQLite's ``index.db``
or PostgreSQL, whichever ``[central] index`` names): ``edge central officers import`` issues a new list
version while the central runs, and every receiver sharing the database answers from the newest.

* officer lists: every version the central issued (never updated or deleted, the database refuses it),
  each the signed envelope of :mod:`edge.equipment.officer_list` with its version, digest, time and who
  imported it. The version is one more than the newest, read and signed under the database's writer
  lock: two receivers (or a receiver and the command) never issue the same number.
* fleet reports: the latest report of each station (:mod:`edge.equipment.fleet_report`, version 2 from
  a station's fleet view or version 1 from an older station's assignments) with the central's time of
  receipt; a newer report replaces the station's previous one.

The endpoints (:func:`add_equipment_routes`): ``GET /v1/stations/{S}/officers?have=N`` and ``POST
/v1/stations/{S}/fleet`` for the station itself (mutual TLS), the same as the MQTT API's ``officers`` and
``fleet-report``; ``GET /v1/fleet`` for auditors (a reader certificate or a console session), every read
logged first, a reader of role ``reader`` seeing only the stations of its units. The fleet view flags a
recorder that the latest reports of two stations both list (``at_stations`` names those in the reader's
scope, ``other_stations`` counts the rest), and each station's
row says which officer list version it holds beside the newest issued (a station that lags shows). Each
recorder says whether it is ``overdue`` (:func:`is_overdue`: as its station said, or out past its due time
by the central's clock), counted per station and over the view; ``edge_central_recorders_overdue`` counts
them over every station.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import IssuedList, ReaderScope
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.registration import Caller, RejectCode, Rejection
from edge.central.storage import EquipmentRows
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.keys import StationKey
from edge.equipment.fleet_report import FleetReportError, check_report, report_time
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
    "EquipmentStore",
    "IssuedList",
    "add_equipment_routes",
    "fleet_view",
    "is_overdue",
    "officer_list_problems",
    "officers_answer",
    "overdue_count",
    "visible_stations",
]

log = logging.getLogger(__name__)

MAX_HAVE = 2**53 - 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EquipmentStore:
    """The officer lists and fleet reports of the central's database (:class:`EquipmentRows`): signs a new
    version, parses the reports. Used from the event loop, as the database is; the database owns the
    connection (closing it is the database's)."""

    def __init__(self, rows: EquipmentRows) -> None:
        self.rows = rows

    def issue(self, rows: list[OfficerRow], *, key: StationKey, central: str, by: str) -> IssuedList:
        """Sign ``rows`` as the next version (one more than the newest) and keep it; nothing is kept when
        the signed list is too large (:class:`OfficerListError`)."""

        def sign(version: int) -> IssuedList:
            issued_at = utc_now()
            document = list_document(rows, central=central, version=version, issued_at=issued_at)
            envelope = canonical_json(sign_list(document, key.sign, key.key_id))
            if len(envelope) > MAX_LIST_BYTES:
                raise OfficerListError(
                    f"the signed list has {len(envelope)} bytes; one answer to a station carries at most "
                    f"{MAX_LIST_BYTES} (README: the limits of the officer list)")
            return IssuedList(version, str(document["officers_sha256"]), issued_at, by,
                              len(document["officers"]), envelope)

        return self.rows.issue_officer_list(sign)

    def newest(self) -> IssuedList | None:
        return self.rows.newest_officer_list()

    def versions(self) -> list[IssuedList]:
        return self.rows.officer_lists()

    def keep_report(self, report: dict[str, Any]) -> None:
        self.rows.keep_fleet_report(report["station"], utc_now(), canonical_json(report))

    def reports(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(station, received, parse_json(report))
                for station, received, report in self.rows.fleet_reports()]


def officer_list_problems(
    rows: Iterable[tuple[object, object, object, object]], public_key: Ed25519PublicKey
) -> tuple[list[tuple[str, str]], int]:
    """`edge verify` of a central: every officer list version (``(version, sha256, officers, envelope)``
    as stored, by version) signed by ``public_key``, numbered 1, 2, 3, ... without a gap, its digest and
    officer count as the envelope says. Returns the problems as (where, what) and how many versions were
    checked."""
    problems: list[tuple[str, str]] = []
    checked = 0
    for expected, (version, digest, officers, envelope) in enumerate(rows, start=1):
        checked += 1
        where = f"officer list version {version}"
        if version != expected:
            problems.append((where, f"expected version {expected}: a version is missing"))
        if not isinstance(envelope, bytes):
            problems.append((where, "its envelope is not stored as bytes"))
            continue
        try:
            verified = verify_list(parse_json(envelope), public_key)
        except (OfficerListError, ValueError) as exc:
            problems.append((where, f"does not verify: {exc}"))
            continue
        if (verified.version, verified.sha256, len(verified.officers)) != (version, digest, officers):
            problems.append((where, "its row (version, digest, officers) differs from the signed list"))
    return problems, checked


def officers_answer(store: EquipmentStore, have: int) -> dict[str, Any]:
    """What a station gets for ``have`` (the version in force there): the newest signed list, or only its
    version when the station has it already (or the central has none: version 0)."""
    newest = store.newest()
    if newest is None:
        return {"version": 0, "list": None}
    if newest.version == have:
        return {"version": newest.version, "list": None}
    return {"version": newest.version, "list": parse_json(newest.envelope)}


def is_overdue(recorder: dict[str, Any], now: str) -> bool:
    """Overdue as the station said, or out past its due time by the central's clock (``now``, a report
    time): a station that stopped reporting does not hide a recorder that fell due since. A version 1
    report carries no due time, so its recorders are never overdue here."""
    if recorder["state"] == "overdue":
        return True
    due_at = recorder.get("due_at")
    return recorder["state"] == "out" and isinstance(due_at, str) and due_at <= now


def overdue_count(store: EquipmentStore, now: datetime | None = None) -> int:
    """Recorders overdue over every station's latest report (the central's metric)."""
    moment = report_time(now or datetime.now(UTC))
    return sum(is_overdue(recorder, moment) for _, _, report in store.reports()
               for recorder in report["recorders"])


def fleet_view(store: EquipmentStore, stations: set[str] | None, now: datetime | None = None
               ) -> dict[str, Any]:
    """Every recorder the latest reports list, with the station holding it; ``stations`` None: all. A
    serial in the latest reports of two stations is flagged, whatever the reader's scope: ``at_stations``
    names those in ``stations`` and ``other_stations`` counts the rest (counted, not shown). Each recorder
    says whether it is ``overdue`` (:func:`is_overdue`, at ``now``); each station and the whole view count
    the recorders by state and the overdue ones."""
    moment = report_time(now or datetime.now(UTC))
    holders: dict[str, list[str]] = {}
    shown: list[dict[str, Any]] = []
    station_rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for station, received, report in store.reports():
        for recorder in report["recorders"]:
            holders.setdefault(recorder["device_serial"], []).append(station)
        if stations is not None and station not in stations:
            continue
        station_counts: dict[str, int] = {}
        overdue = 0
        for recorder in report["recorders"]:
            late = is_overdue(recorder, moment)
            overdue += late
            station_counts[recorder["state"]] = station_counts.get(recorder["state"], 0) + 1
            counts[recorder["state"]] = counts.get(recorder["state"], 0) + 1
            shown.append({"station": station, **recorder, "overdue": late})
        station_rows.append({"station": station, "reported_at": report["at"], "received": received,
                             "report_version": report.get("version", 1),
                             "recorders": len(report["recorders"]), "counts": station_counts,
                             "overdue": overdue, "overdue_after_h": report.get("overdue_after_h"),
                             "officers_version": report.get("officers_version")})
    for recorder in shown:
        at = holders[recorder["device_serial"]]
        flagged = len(at) > 1
        # The flag counts every station, but only stations in scope are named: a reader of one unit
        # must not learn another unit's station ids (GET /v1/fleet and the console page both serve this).
        named = sorted(s for s in at if stations is None or s in stations)
        recorder["at_stations"] = named if flagged else None
        recorder["other_stations"] = len(at) - len(named) if flagged else 0
        recorder["flag"] = "seen_at_two_stations" if flagged else None
    shown.sort(key=lambda r: (not r["overdue"], r["device_serial"], r["station"]))
    newest = store.newest()
    return {"officers_version": None if newest is None else newest.version, "at": moment,
            "stations": station_rows, "counts": counts,
            "overdue": sum(r["overdue"] for r in shown), "recorders": shown,
            "flagged": sorted({r["device_serial"] for r in shown if r["flag"]})}


def visible_stations(parts: CentralParts, store: EquipmentStore, scope: ReaderScope) -> set[str] | None:
    """The stations whose fleets ``scope`` may see: None for all (a reader of every unit), else those of
    its units (the unit a station registered with)."""
    if scope.all_units:
        return None
    return {s for s, _, _ in store.reports() if parts.console.station_unit(s) in scope.units}


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

        caller = await self.parts.station_read(self.parts.auth.station, request)
        answer = await self.parts.write(station_officers, self.parts, self.store, caller,
                                        request.match_info["station"], _have(request))
        return json_response(answer, headers={"Cache-Control": "no-store"})

    async def fleet_report(self, request: web.Request) -> web.Response:
        from edge.central.app import json_response, read_json_body

        caller = await self.parts.station_read(self.parts.auth.station, request)
        doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        return json_response(await self.parts.write(station_fleet_report, self.parts, self.store, caller,
                                                    request.match_info["station"], doc))

    async def fleet(self, request: web.Request) -> web.Response:
        from edge.central.app import json_response
        from edge.central.console.scope import logged_read, reader_scope

        if request.query:
            raise Rejection(RejectCode.BAD_REQUEST, "GET /v1/fleet takes no query parameters")
        scope = await reader_scope(request)
        await logged_read(request, scope, "fleet", query="fleet")

        def view() -> dict[str, Any]:
            return fleet_view(self.store, visible_stations(self.parts, self.store, scope))

        return json_response(await self.parts.read(view), headers={"Cache-Control": "no-store"})


EQUIPMENT_STORE: web.AppKey[EquipmentStore] = web.AppKey("equipment_store", EquipmentStore)


def add_equipment_routes(app: web.Application, parts: CentralParts, stall_timeout_s: float) -> EquipmentStore:
    """The equipment endpoints, answering from the central's database (closed with it)."""
    store = EquipmentStore(parts.equipment)
    app[EQUIPMENT_STORE] = store
    endpoints = EquipmentEndpoints(parts, store, stall_timeout_s)
    app.router.add_get("/v1/stations/{station}/officers", endpoints.officers)
    app.router.add_post("/v1/stations/{station}/fleet", endpoints.fleet_report)
    app.router.add_get("/v1/fleet", endpoints.fleet)
    from edge.central.app import METRICS

    if METRICS in app:  # the recorders overdue agency-wide, read when scraped
        app[METRICS].watch_fleet(lambda: overdue_count(store))
    return store
