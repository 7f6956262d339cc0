"""The local API's room routes (edge.rooms): operators start, stop, mark and change sessions, and read
their status, over the Unix socket like every operator route (:mod:`edge.observe.api` authorises them).

  GET  /api/v1/rooms                   every room: its session and each source's recording state
  POST /api/v1/rooms/{room}/start      {case_number, collector, subject, persons: [{name, role}],
                                        collector_no}
  POST /api/v1/rooms/{room}/mark       {note}
  POST /api/v1/rooms/{room}/change     {case_number | collector | collector_no | subject | persons}
  POST /api/v1/rooms/{room}/stop       {}
  POST /api/v1/room-sessions/{session}/documents?kind=笔录&name=NAME
                                       the document's bytes (PDF, JPEG or PNG; its type is told by its
                                       content); answers with its ``attached`` entry
  POST /api/v1/room-sessions/{session}/export
                                       answers with the session's disc image (ISO 9660), its SHA-256 in
                                       the header ``X-Image-SHA256``; the export is an ``exported`` entry

The caller is recorded as who did it (``by``: ``[api] accounts``, else the login name). A refusal (unknown
room, a second session, bad input) answers with its HTTP status and ``{"error": reason}``; the service has
put it on the ledger. Registered by the composition root with ``LocalApi(..., extensions=[...])``.
"""

from __future__ import annotations

import asyncio
import contextlib
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
ATTACH_CHUNK_BYTES = 1 << 20


def room_routes(service: RoomService) -> Callable[[web.Application], None]:
    """The extension that adds the room routes for `service` to the local API."""

    def extend(app: web.Application) -> None:
        app[ROOMS] = service
        add_route(app, "GET", "/api/v1/rooms", _status, Access.OPERATOR)
        for action in ("start", "mark", "change", "stop"):
            add_route(app, "POST", f"/api/v1/rooms/{{room}}/{action}", _action(action), Access.OPERATOR)
        add_route(app, "POST", "/api/v1/room-sessions/{session}/documents", _attach, Access.OPERATOR)
        add_route(app, "POST", "/api/v1/room-sessions/{session}/export", _export, Access.OPERATOR)

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


def _operator(request: web.Request) -> str | None:
    """Who asks (``by``), or None when the request did not come over the Unix socket from a known uid."""
    caller: Caller = request[CALLER]
    if caller.channel != "unix" or caller.uid is None:
        return None
    return tagger_name(request.app[SETTINGS], caller.uid)


async def _attach(request: web.Request) -> web.Response:
    by = _operator(request)
    if by is None:
        return _json({"error": "documents are attached over the Unix socket only"}, 403)
    session = request.match_info["session"][:MAX_ROOM_CHARS]
    chunks = request.content.iter_chunked(ATTACH_CHUNK_BYTES)
    try:
        attached = await request.app[ROOMS].attach(session, chunks, kind=request.query.get("kind"),
                                                   name=request.query.get("name"), by=by)
    except RoomRefused as exc:
        return _json({"error": str(exc)}, exc.status)
    return _json(attached)


async def _export(request: web.Request) -> web.StreamResponse:
    by = _operator(request)
    if by is None:
        return _json({"error": "sessions are exported over the Unix socket only"}, 403)
    session = request.match_info["session"][:MAX_ROOM_CHARS]
    try:
        disc = await request.app[ROOMS].export(session, by=by)
    except RoomRefused as exc:
        return _json({"error": str(exc)}, exc.status)
    # A read of evidence: logged with its caller, like a read of an item (the ledger has `exported`).
    log.info("local API: %s exported room session %s as a disc image (%s, %d bytes)",
             request[CALLER].describe(), session, disc.sha256, disc.size)
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-iso9660-image", "Content-Length": str(disc.size),
            "X-Image-SHA256": disc.sha256, "X-Volume-ID": disc.volume_id})
        await response.prepare(request)
        with open(disc.path, "rb") as image:
            while chunk := await asyncio.to_thread(image.read, ATTACH_CHUNK_BYTES):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        disc.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the session's work directory, when nothing else is in it
            disc.path.parent.rmdir()
