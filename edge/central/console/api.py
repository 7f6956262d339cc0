"""The console's JSON API under ``/console/api/`` and its pages under ``/console/``.

Every route but the page, its static files and the sign-in endpoints needs a console session
(:mod:`edge.central.console.scope`); every state-changing request (POST, DELETE) needs the session's CSRF
token in ``X-CSRF-Token`` and the ``X-Edge-Console`` header; every read of evidence goes through the scope
seam and is on the access log before it is served:

=========================================  ==================================================  ============
route                                      what                                                access log
=========================================  ==================================================  ============
``GET /console/api/items?case=&officer=``  search (also ``device``, ``station``, ``unit``,      ``search``
``...``                                    ``from``, ``to``, ``important``, ``limit``, ``after``)
``GET /console/api/items/{item}``          metadata, history, custody timeline, receipt check  ``item``
``GET /console/api/items/{item}/media``    the content inline with HTTP range requests          ``media`` (one
                                           (``?playback=ID``)                                   per playback)
``POST|DELETE .../{item}/sensitive``       mark / unmark sensitive (supervisors)                ``mark-...``
``GET /console/api/access-log?reader=``    the access log (also ``item``, ``what``, ``from``,   ``access-log``
                                           ``to``, ``before``, ``limit``)
``GET /console/api/fleet?station=&state=`` the agency's recorders, by station, overdue first     ``fleet``
                                           (:mod:`edge.central.console.fleet`)
=========================================  ==================================================  ============

**Media playback.** A ``<video>`` element fetches its source in several range requests (the start, the
``moov`` box at the end, then ahead as it plays). The page gives each playback a random id in the URL;
the first request of a playback appends one ``media`` row to the access log (before any byte is served),
and every range served for it, that first one included, is appended to ``media_ranges`` under that row
before it is sent. The access log shows one line per playback with the bytes its ranges covered (an
upper bound: a player may stop reading a range early). The object is hashed once per process (and again
when its file changes, or when the bucket's current version is another) before its first byte is served;
an object that does not hash to its name is never served. Content in an S3 bucket is streamed from it
by HTTP Range requests, logged exactly as a local file's (:mod:`edge.central.console.media`).

A reader (role ``reader``) sees its own rows of the access log; a supervisor every row, except rows about
items its scope may not see.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from edge.central.app import CentralParts, json_response, read_json_body
from edge.central.console.fleet import add_console_fleet_route
from edge.central.console.item_view import custody_timeline, receipt_check
from edge.central.console.media import VerifiedContent, content_range
from edge.central.console.scope import (
    SESSION_KEY,
    ReaderScope,
    logged_read,
    reader_scope,
    required_item,
    valid_item_id,
)
from edge.central.console.sessions import CSRF_HEADER, ConsoleSession
from edge.central.console.signin import require_same_origin
from edge.central.index import CentralIndexError, ItemRecord, Role, validate_reader_name
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.readside import _parse_time, encode_cursor, parse_item_query
from edge.central.registration import RejectCode, Rejection
from edge.custody.text import printable

__all__ = ["ConsoleApi", "add_console_api_routes", "media_type"]

log = logging.getLogger(__name__)

_PLAYBACK_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_LOG_PARAMETERS = ("reader", "item", "what", "from", "to", "before", "limit")
_MAX_REASON_CHARS = 500
_MAX_NAMED_READERS = 50

# What the page can show inline, by the stored file's extension (the original name's, as stored).
_MEDIA_TYPES = {
    "mp4": ("video", "video/mp4"),
    "mov": ("video", "video/quicktime"),
    "webm": ("video", "video/webm"),
    "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"),
    "png": ("image", "image/png"),
    "wav": ("audio", "audio/wav"),
    "mp3": ("audio", "audio/mpeg"),
    "m4a": ("audio", "audio/mp4"),
}


def media_type(record: ItemRecord) -> tuple[str, str]:
    """``(kind, MIME type)`` of an item for the page: video, image, audio, or other (not shown inline)."""
    original = record.manifest.get("original")
    name = original.get("name") if isinstance(original, dict) else None
    extension = name.rsplit(".", 1)[-1].lower() if isinstance(name, str) and "." in name else ""
    return _MEDIA_TYPES.get(extension, ("other", "application/octet-stream"))


def _require_csrf(request: web.Request) -> ConsoleSession:
    require_same_origin(request)
    session: ConsoleSession | None = request.get(SESSION_KEY)
    if session is None or not session.csrf_ok(request.headers.get(CSRF_HEADER)):
        raise Rejection(
            RejectCode.CSRF_REFUSED,
            f"a state-changing console request needs the session's {CSRF_HEADER} header",
        )
    return session


class ConsoleApi:
    """The handlers; one per application."""

    def __init__(self, parts: CentralParts) -> None:
        self.parts = parts
        self._content = VerifiedContent(parts.objects)

    async def search(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        await logged_read(request, scope, "search", query=request.query_string[:1000] or None)
        query = parse_item_query(request.query)
        page, cursor = await self.parts.read(self.parts.index.query_items, query, scope)
        return _no_store(json_response({"items": page, "next": encode_cursor(cursor) if cursor else None}))

    async def item(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        record = await required_item(request, scope, request.match_info["item"], "item")
        parts = self.parts
        kind, mime = media_type(record)
        return _no_store(json_response(await parts.read(self._item_document, record, scope, kind, mime)))

    def _item_document(self, record: ItemRecord, scope: ReaderScope, kind: str, mime: str) -> dict[str, Any]:
        """What the console shows of an item (reads the index and the console's store: a reader thread)."""
        parts = self.parts
        return {
                    "item": record.item,
                    "sha256": record.sha256,
                    "size": record.size,
                    "station": record.station,
                    "unit": parts.index.item_unit(record.item),
                    "acquired_utc": record.acquired_utc,
                    "accepted_utc": record.accepted_utc,
                    "officer_no": record.officer_no,
                    "device_serial": record.device_serial,
                    "manifest": record.manifest,
                    "case": parts.index.current_case(record.item),
                    "history": parts.index.metadata_history(record.item),
                    "sensitive": parts.console.sensitivity(record.item),
                    "timeline": custody_timeline(parts, record, scope),
                    "receipt": receipt_check(parts, record),
                    "media": {"kind": kind, "type": mime},
                    "may_mark": scope.role is Role.SUPERVISOR,
                }

    async def media(self, request: web.Request) -> web.StreamResponse:
        scope = await reader_scope(request)
        session = request[SESSION_KEY]
        item_id = request.match_info["item"]
        playback = request.query.get("playback", "")
        if not _PLAYBACK_RE.fullmatch(playback) or set(request.query) - {"playback"}:
            raise Rejection(
                RejectCode.BAD_REQUEST,
                "media needs ?playback=ID (16-64 letters, digits, - or _), one per playback",
            )
        key = f"{item_id}/{playback}"
        access_id = session.playbacks.get(key)
        if access_id is None:
            access_id = await logged_read(request, scope, "media", item=item_id[:64],
                                          query=f"playback={playback}")
            if len(session.playbacks) >= 1000:
                session.playbacks.pop(next(iter(session.playbacks)))
            session.playbacks[key] = access_id
        # Checked on every range: a marking made mid-playback stops it at the next request.
        index = self.parts.index
        visible = valid_item_id(item_id) and await self.parts.read(index.item_visible, item_id, scope)
        if not visible:
            raise Rejection(RejectCode.NOT_FOUND, f"no accepted item {item_id[:64]}")
        record = await self.parts.read(self.parts.index.item, item_id)
        assert record is not None
        content = await self._content.verified(record)
        wanted = content_range(request, record.size)
        if wanted.satisfiable and wanted.count > 0:
            try:
                await self.parts.write(self.parts.console.log_media_range, access_id, wanted.first,
                                       wanted.stop - 1)
            except self.parts.index.unit.errors as exc:
                log.error("media range of %s cannot be logged (%s); refused", record.item, exc)
                raise Rejection(
                    RejectCode.ACCESS_LOG_UNAVAILABLE,
                    "this read cannot be logged, so it is refused; try again later",
                ) from None
        _kind, mime = media_type(record)
        return await content.respond(request, wanted, {
            "Content-Type": mime,
            "Content-Disposition": "inline",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        })

    async def mark_sensitive(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        _require_csrf(request)
        if scope.role is not Role.SUPERVISOR:
            raise Rejection(RejectCode.FORBIDDEN, "only a supervisor marks items sensitive")
        doc = await read_json_body(request, stall_timeout_s=10.0)
        reason = _reason(doc)
        names = doc.get("readers") if isinstance(doc, dict) else None
        if not (isinstance(names, list) and 0 < len(names) <= _MAX_NAMED_READERS):
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"readers must name 1-{_MAX_NAMED_READERS} readers who may still see the item",
            )
        try:
            readers = [validate_reader_name(name) for name in names]
        except CentralIndexError as exc:
            raise Rejection(RejectCode.BAD_REQUEST, f"readers: {exc}") from None
        record = await required_item(request, scope, request.match_info["item"], "mark-sensitive")
        await self.parts.write(self.parts.console.mark_sensitive, record.item, readers, by=scope.reader,
                               reason=reason, remote=request.remote)
        log.warning(
            "reader %s marked item %s sensitive (readers %s): %s",
            scope.reader,
            record.item,
            " ".join(readers),
            printable(reason[:200]),
        )
        sensitive = await self.parts.read(self.parts.console.sensitivity, record.item)
        return json_response({"item": record.item, "sensitive": sensitive})

    async def unmark_sensitive(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        _require_csrf(request)
        if scope.role is not Role.SUPERVISOR:
            raise Rejection(RejectCode.FORBIDDEN, "only a supervisor unmarks sensitive items")
        reason = _reason(await read_json_body(request, stall_timeout_s=10.0))
        record = await required_item(request, scope, request.match_info["item"], "unmark-sensitive")
        try:
            await self.parts.write(self.parts.console.unmark_sensitive, record.item, by=scope.reader,
                                   reason=reason, remote=request.remote)
        except CentralIndexError as exc:
            raise Rejection(RejectCode.BAD_REQUEST, str(exc)) from None
        log.warning(
            "reader %s unmarked sensitive item %s: %s", scope.reader, record.item, printable(reason[:200])
        )
        return json_response({"item": record.item, "sensitive": None})

    async def access_log(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        await logged_read(request, scope, "access-log", query=request.query_string[:1000] or None)
        filters = _log_filters(request.query)
        if scope.role is not Role.SUPERVISOR:
            if filters.get("reader") not in (None, scope.reader):
                raise Rejection(RejectCode.FORBIDDEN, "a reader sees its own reads only")
            filters["reader"] = scope.reader
        limit = filters.pop("limit", 100)
        rows = await self.parts.read(self.parts.index.access_log, scope=scope, limit=limit, **filters)
        return _no_store(
            json_response({"rows": rows, "before": rows[-1]["id"] if len(rows) == limit else None})
        )


def _reason(doc: object) -> str:
    reason = doc.get("reason") if isinstance(doc, dict) else None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON_CHARS:
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"reason must say why in 1-{_MAX_REASON_CHARS} characters (it is recorded)",
        )
    return reason.strip()


def _log_filters(params: Any) -> dict[str, Any]:
    unknown = sorted(set(params) - set(_LOG_PARAMETERS))
    if unknown:
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"unknown query parameters {[u[:40] for u in unknown[:5]]!r}; "
            f"expected some of {', '.join(_LOG_PARAMETERS)}",
        )
    values: dict[str, str] = {}
    for name in _LOG_PARAMETERS:
        given = params.getall(name, [])
        if len(given) > 1 or (given and not (0 < len(given[0]) <= 200 and given[0].isprintable())):
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"query parameter {name} must be given once, 1-200 printable characters",
            )
        if given:
            values[name] = given[0]
    filters: dict[str, Any] = {
        "reader": values.get("reader"),
        "item": values.get("item"),
        "what": values.get("what"),
    }
    if "from" in values:
        filters["time_from"] = _parse_time(values["from"], "from")
    if "to" in values:
        filters["time_to"] = _parse_time(values["to"], "to")
    for name, key, low, high in (("before", "before_id", 1, 2**62), ("limit", "limit", 1, 1000)):
        if name in values:
            try:
                filters[key] = parse_ascii_uint(values[name], minimum=low, maximum=high)
            except AsciiNumberError as exc:
                raise Rejection(RejectCode.BAD_REQUEST, f"{name}: {exc}") from None
    return filters


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def add_console_api_routes(app: web.Application, parts: CentralParts) -> None:
    api = ConsoleApi(parts)
    app.router.add_get("/console/api/items", api.search)
    app.router.add_get("/console/api/items/{item}", api.item)
    app.router.add_get("/console/api/items/{item}/media", api.media)
    app.router.add_post("/console/api/items/{item}/sensitive", api.mark_sensitive)
    app.router.add_delete("/console/api/items/{item}/sensitive", api.unmark_sensitive)
    app.router.add_get("/console/api/access-log", api.access_log)
    add_console_fleet_route(app)
