"""The local API's room routes (edge.rooms): operators start, stop, mark and change sessions, and read
their status, over the Unix socket like every operator route (:mod:`edge.observe.api` authorises them),
and with ``[api] room_page_over_tcp`` also over the loopback TCP listener for the room page (``/rooms/``,
:mod:`edge.roompage`), to the same callers, with the CSRF guard of :mod:`edge.observe.api`.

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
  GET  /rooms/...                      the room page's own files (no data in them: kiosk level)

The caller is recorded as who did it (``by``: ``[api] accounts``, else the login name), whichever
listener it came by. A refusal (unknown room, a second session, bad input) answers with its HTTP status
and ``{"error": reason}``; the service has put it on the ledger. Registered by the composition root with
``LocalApi(..., extensions=[...])``.

A read of the status carries case data (case numbers, the persons present, marks), so each is logged
with its caller. The room page reads it every 2 s: a line per read would be 1 800 lines an hour per open
page, which buries everything else. So a caller's first read of a set of sessions is logged at once,
and its further reads of the same set are counted and logged with that count at most once a minute (or
at once when the set changes): every read is accounted for, by whom and within a minute of when.
Answers are ``Cache-Control: no-store`` (the operator's browser keeps no copy of the case data on disk)
and ``nosniff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.custody.text import json_printable, printable
from edge.observe.api import CALLER, SETTINGS, Access, Caller, add_route, tagger_name
from edge.roompage import room_page_routes
from edge.rooms.service import RoomRefused, RoomService

log = logging.getLogger(__name__)

ROOMS = web.AppKey("rooms", RoomService)
MAX_ROOM_CHARS = 64
ATTACH_CHUNK_BYTES = 1 << 20
# A caller's repeated reads of the same sessions are logged at most this often (with their count).
READ_LOG_INTERVAL_S = 60.0
_READERS_KEPT = 256  # callers remembered for that (uids: few on a room PC; bounded all the same)
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass
class _Reads:
    sessions: tuple[str, ...]
    logged_at: float
    unlogged: int = 0


class ReadLog:
    """Logs reads of the rooms' sessions per caller: the first of a set of sessions at once, repeats
    counted and logged at most every ``interval_s``."""

    def __init__(self, interval_s: float = READ_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._readers: dict[tuple[str, int | None, str | None], _Reads] = {}

    def read(self, caller: Caller, sessions: tuple[str, ...]) -> None:
        key = (caller.channel, caller.uid, None if caller.uid is not None else caller.address)
        now = self.clock()
        seen = self._readers.get(key)
        if seen is not None and seen.sessions == sessions and now - seen.logged_at < self.interval_s:
            seen.unlogged += 1
            return
        repeats = "" if seen is None or not seen.unlogged else (
            f"; {seen.unlogged} more reads of ({', '.join(seen.sessions) or 'none recording'}) since the "
            "last line")
        log.info("local API: %s read the rooms' sessions (%s)%s", caller.describe(),
                 ", ".join(sessions) or "none recording", repeats)
        if seen is None and len(self._readers) >= _READERS_KEPT:
            self._readers.pop(next(iter(self._readers)))
        self._readers[key] = _Reads(sessions, now)


READ_LOG = web.AppKey("room_read_log", ReadLog)


def room_routes(service: RoomService) -> Callable[[web.Application], None]:
    """The extension that adds the room routes for `service`, and the room page, to the local API."""

    def extend(app: web.Application) -> None:
        app[ROOMS] = service
        app[READ_LOG] = ReadLog()
        add_route(app, "GET", "/api/v1/rooms", _status, Access.ROOM)
        for action in ("start", "mark", "change", "stop"):
            add_route(app, "POST", f"/api/v1/rooms/{{room}}/{action}", _action(action), Access.ROOM)
        for path, handler in room_page_routes():
            add_route(app, "GET", path, handler, Access.KIOSK)
        add_route(app, "POST", "/api/v1/room-sessions/{session}/documents", _attach, Access.OPERATOR)
        add_route(app, "POST", "/api/v1/room-sessions/{session}/export", _export, Access.OPERATOR)

    return extend


def _json(data: Any, status: int = 200) -> web.Response:
    text = json_printable(json.dumps(data, ensure_ascii=False))
    return web.Response(text=text, status=status, content_type="application/json", headers=API_HEADERS)


async def _status(request: web.Request) -> web.Response:
    status = request.app[ROOMS].status()
    sessions = tuple(r["session"]["room_session"] for r in status["rooms"] if r.get("session"))
    request.app[READ_LOG].read(request[CALLER], sessions)
    return _json(status)


def _action(action: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        caller: Caller = request[CALLER]
        if caller.uid is None:  # (authorised() admits no caller without a uid: never reached)
            return _json({"error": "the caller's local user is unknown"}, 403)
        by = tagger_name(request.app[SETTINGS], caller.uid)
        room = request.match_info["room"][:MAX_ROOM_CHARS]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _json({"error": "the body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "the body must be a JSON object"}, 400)
        service = request.app[ROOMS]
        log.info("local API: %s (%s) asks to %s room %s", caller.describe(), by, action, printable(room))
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
        # Its Content-Length (bounded there by the limit) is what the document books on the disk before any
        # byte is written (edge.rooms.documents.DocumentSpace).
        attached = await request.app[ROOMS].attach(session, chunks, kind=request.query.get("kind"),
                                                   name=request.query.get("name"), by=by,
                                                   expected_bytes=request.content_length)
    except RoomRefused as exc:
        return _json({"error": str(exc)}, exc.status)
    return _json(attached)


async def _export(request: web.Request) -> web.StreamResponse:
    by = _operator(request)
    if by is None:
        return _json({"error": "sessions are exported over the Unix socket only"}, 403)
    session = request.match_info["session"][:MAX_ROOM_CHARS]
    # Where the caller will write the image, it says how much room there is (edge room export does).
    output_free = request.query.get("output_free_bytes")
    try:
        disc = await request.app[ROOMS].export(session, by=by, output_free_bytes=output_free)
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
