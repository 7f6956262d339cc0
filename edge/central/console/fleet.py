"""The console's fleet page API: ``GET /console/api/fleet?station=&state=``, the agency's recorders.

The same view as ``GET /v1/fleet`` (:func:`edge.central.equipment.fleet_view`: the latest report of each
station, overdue first, a recorder in the latest reports of two stations flagged), behind the same rules as
every console read: a signed-in session (401 otherwise), a grant (403), the read on the access log before it
is served (``fleet``, with its query), and a reader of role ``reader`` seeing only the stations of its units.
A station filter naming a station out of scope answers as a station with no recorders: whether another
unit's station exists does not leak.

Each recorder row gets, for the page: ``shown_state`` (``overdue`` when the central counts it overdue, else
the station's state) and ``overdue_by_s`` (seconds past its due time at the view's time, or null).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from edge.central.app import CENTRAL, json_response
from edge.central.console.scope import logged_read, reader_scope
from edge.central.equipment import EQUIPMENT_STORE, fleet_view, visible_stations
from edge.central.registration import RejectCode, Rejection

__all__ = ["FLEET_STATES", "add_console_fleet_route", "console_fleet"]

# What the state filter takes: the states of a version 2 report, ``in`` of a version 1 report.
FLEET_STATES = ("overdue", "out", "docked", "faulty", "away", "in")
_PARAMETERS = ("station", "state")
_STATION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _filters(params: Any) -> tuple[str | None, str | None]:
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        named = [u[:40] for u in unknown[:5]]
        raise Rejection(RejectCode.BAD_REQUEST,
                        f"unknown query parameters {named!r}; expected some of {', '.join(_PARAMETERS)}")
    values: dict[str, str | None] = {}
    for name in _PARAMETERS:
        given = params.getall(name, [])
        if len(given) > 1:
            raise Rejection(RejectCode.BAD_REQUEST, f"query parameter {name} must be given at most once")
        values[name] = given[0] if given and given[0] else None
    station, state = values["station"], values["state"]
    if station is not None and not _STATION.fullmatch(station):
        raise Rejection(RejectCode.BAD_REQUEST, "station: expected 1-64 characters A-Za-z0-9_.-")
    if state is not None and state not in FLEET_STATES:
        raise Rejection(RejectCode.BAD_REQUEST, f"state: expected one of {', '.join(FLEET_STATES)}")
    return station, state


def _overdue_by_s(recorder: dict[str, Any], at: str) -> int | None:
    due_at = recorder.get("due_at")
    if not recorder["overdue"] or not isinstance(due_at, str):
        return None
    try:
        late = datetime.strptime(at, _TIME_FORMAT) - datetime.strptime(due_at, _TIME_FORMAT)
    except ValueError:
        return None
    return max(0, int(late.total_seconds()))


def console_fleet(view: dict[str, Any], visible: set[str] | None, station: str | None, state: str | None
                  ) -> dict[str, Any]:
    """``view`` (a :func:`fleet_view` of the ``visible`` stations, None: all) for the page: each recorder's
    ``shown_state`` and ``overdue_by_s``, then only the recorders (and station rows) the filters name.
    Counts stay those of the whole scope. A recorder also at a station out of scope stays flagged;
    :func:`fleet_view` already names only the stations in scope (``other_stations`` counts the rest)."""
    for recorder in view["recorders"]:
        recorder["shown_state"] = "overdue" if recorder["overdue"] else recorder["state"]
        recorder["overdue_by_s"] = _overdue_by_s(recorder, view["at"])
    if station is not None:
        view["stations"] = [row for row in view["stations"] if row["station"] == station]
    view["recorders"] = [r for r in view["recorders"]
                         if (station is None or r["station"] == station)
                         and (state is None or r["shown_state"] == state)]
    view["filters"] = {"station": station, "state": state}
    return view


async def _fleet(request: web.Request) -> web.Response:
    scope = await reader_scope(request)
    await logged_read(request, scope, "fleet", query=request.query_string[:1000] or "fleet")
    station, state = _filters(request.query)
    store = request.app[EQUIPMENT_STORE]
    parts = request.app[CENTRAL]

    def view() -> dict[str, Any]:
        visible = visible_stations(parts, store, scope)
        return console_fleet(fleet_view(store, visible), visible, station, state)

    response = json_response(await parts.read(view))
    response.headers["Cache-Control"] = "no-store"
    return response


def add_console_fleet_route(app: web.Application) -> None:
    app.router.add_get("/console/api/fleet", _fleet)
