"""The local API's room routes (edge.rooms): operators start, stop, mark and change sessions, and read
their status, over the Unix socket like every operator route (:mod:`edge.observe.api` authorises them).

  GET  /api/v1/rooms                   every room: its session and each source's recording state
  POST /api/v1/rooms/{room}/start      {case_number, collector, subject, persons: [{name, role}],
                                        collector_no}
  POST /api/v1/rooms/{room}/mark       {note}
  POST /api/v1/rooms/{room}/change     {case_number | collector | collector_no | subject | persons}
  POST /api/v1/rooms/{room}/stop       {}

The caller is recorded as who did it (``by``: ``[api] accounts``, else the login name). A refusal (unknown
room, a second session, bad input) answers with its HTTP status and ``{"error": reason}``; the service has
put it on the ledger. Registered by the composition root with ``LocalApi(..., extensions=[...])``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edge.custody.text import json_printable
from edge.observe.api import CALLER, SETTINGS, Access, Caller, add_route, tagger_name
from edge.rooms.service import RoomRefused, RoomService

log = logging.getLogger(__name__)

ROOMS = web.AppKey("rooms", RoomService)
MAX_ROOM_CHARS = 64


def room_routes(service: RoomService) -> Callable[[web.Application], None]:
    """The extension that adds the room routes for `service` to the local API."""

    def extend(app: web.Application) -> None:
        app[ROOMS] = service
        add_route(app, "GET", "/api/v1/rooms", _status, Access.OPERATOR)
        for action in ("start", "mark", "change", "stop"):
            add_route(app, "POST", f"/api/v1/rooms/{{room}}/{action}", _action(action), Access.OPERATOR)

    return extend


def _json(data: Any, status: int = 200) -> web.Response:
    text = json_printable(json.dumps(data, ensure_ascii=False))
    return web.Response(text=text, status=status, content_type="application/json")


async def _status(request: web.Request) -> web.Response:
    status = request.app[ROOMS].status()
    # The answer carries case data (case numbers, the persons present, marks): its read is logged with
    # its caller, like a read of an item.
    sessions = [r["session"]["room_session"] for r in status["rooms"] if r.get("session")]
    log.info("local API: %s read the rooms' sessions (%s)", request[CALLER].describe(),
             ", ".join(sessions) or "none recording")
    return _json(status)


def _action(action: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        caller: Caller = request[CALLER]
        if caller.channel != "unix" or caller.uid is None:
            return _json({"error": "room sessions are run over the Unix socket only"}, 403)
        by = tagger_name(request.app[SETTINGS], caller.uid)
        room = request.match_info["room"][:MAX_ROOM_CHARS]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _json({"error": "the body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "the body must be a JSON object"}, 400)
        service = request.app[ROOMS]
        try:
            if action == "start":
                session = await service.start(room, body, by=by)
                return _json(session.to_json())
            if action == "mark":
                if set(body) != {"note"}:
                    return _json({"error": 'a mark is {"note": text}, nothing else'}, 400)
                mark = await service.mark(room, body["note"], by=by)
                return _json(mark.to_json())
            if action == "change":
                return _json(await service.change(room, body, by=by))
            return _json(await service.stop(room, by=by))
        except RoomRefused as exc:
            return _json({"error": str(exc)}, exc.status)

    return handler
