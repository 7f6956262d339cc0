"""The read side for readers (auditors): queries, content, manifest, metadata history, receipts.

Every read goes through the console's scope seam (:mod:`edge.central.console.scope`): a reader sees only
the items its role, units and the sensitive markings allow; another item answers 404 like one that does
not exist, and a search leaves it out in the database query. Every read is first appended to the
index's ``access_log`` (who, what, which item or query, when, from where) in a transaction of its own;
a read that cannot be logged is refused (503), because "every retrieval logged" is a rule, not a best
effort. Content is streamed from the object store and hashed on the way out: a response whose bytes do
not hash to the item's SHA-256 is cut off before it completes, so a damaged object is never served as if
it were the evidence.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from aiohttp import web

from edge.central.console.scope import logged_read, reader_scope, required_item
from edge.central.index import (
    CentralIndexError,
    ItemQuery,
    ItemRecord,
    validate_station_id,
    validate_unit_code,
)
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.registration import RejectCode, Rejection
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.ingest.store import stored_extension

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["QUERY_PARAMETERS", "ReadSide", "add_read_routes", "parse_item_query"]

log = logging.getLogger(__name__)

QUERY_PARAMETERS = ("case", "officer", "device", "station", "unit", "important", "from", "to", "limit",
                    "after")
_DEFAULT_LIMIT = 100
_MAX_LIMIT = 1000
_MAX_PARAM_CHARS = 200
_STREAM_CHUNK_BYTES = 1 << 20
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _bad(detail: str) -> Rejection:
    return Rejection(RejectCode.BAD_REQUEST, detail)


def _parse_time(text: str, name: str) -> str:
    """An ISO-8601 date or date-time with a zone, as the ledger's UTC time format (comparable as text)."""
    try:
        if _DATE_RE.fullmatch(text):
            moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(f"{name} must be an ISO-8601 date or date-time, found {text[:60]!r}") from None
    if moment.tzinfo is None:
        raise _bad(f"{name} {text[:60]!r} has no time zone; add Z or an offset such as +08:00")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_cursor(cursor: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(canonical_json(list(cursor))).decode("ascii").rstrip("=")


def _decode_cursor(text: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = parse_json(raw)
    except (binascii.Error, ValueError, CanonicalJsonError):
        doc = None
    if not (isinstance(doc, list) and len(doc) == 2 and all(isinstance(v, str) for v in doc)):
        raise _bad("after is not a cursor this central returned (use the 'next' value as it came)")
    return doc[0], doc[1]


def parse_item_query(params: Any) -> ItemQuery:
    """An :class:`ItemQuery` from request query parameters (a multidict); raises :class:`Rejection`."""
    unknown = sorted(set(params) - set(QUERY_PARAMETERS))
    if unknown:
        expected = ", ".join(QUERY_PARAMETERS)
        raise _bad(f"unknown query parameters {unknown[:5]!r}; expected some of {expected}")
    values: dict[str, str] = {}
    for name in QUERY_PARAMETERS:
        given = params.getall(name, [])
        if len(given) > 1:
            raise _bad(f"query parameter {name} is given {len(given)} times; give it once")
        if given:
            value = given[0]
            if not value or len(value) > _MAX_PARAM_CHARS or not value.isprintable():
                raise _bad(f"query parameter {name} must be 1-{_MAX_PARAM_CHARS} printable characters")
            values[name] = value
    limit = _DEFAULT_LIMIT
    if "limit" in values:
        try:
            limit = parse_ascii_uint(values["limit"], minimum=1, maximum=_MAX_LIMIT)
        except AsciiNumberError as exc:
            raise _bad(f"limit must be an integer 1-{_MAX_LIMIT}: {exc}") from None
    if "station" in values:
        try:
            validate_station_id(values["station"])
        except CentralIndexError as exc:
            raise _bad(f"station: {exc}") from None
    if "unit" in values:
        try:
            validate_unit_code(values["unit"])
        except CentralIndexError as exc:
            raise _bad(f"unit: {exc}") from None
    important: bool | None = None
    if "important" in values:
        if values["important"] not in ("true", "false"):
            raise _bad(f"important must be true or false, found {values['important'][:20]!r}")
        important = values["important"] == "true"
    time_from = _parse_time(values["from"], "from") if "from" in values else None
    time_to = _parse_time(values["to"], "to") if "to" in values else None
    if time_from is not None and time_to is not None and time_from >= time_to:
        raise _bad(f"from ({values['from']}) must be before to ({values['to']})")
    return ItemQuery(
        case_number=values.get("case"),
        officer_no=values.get("officer"),
        device_serial=values.get("device"),
        station=values.get("station"),
        time_from=time_from,
        time_to=time_to,
        limit=limit,
        after=_decode_cursor(values["after"]) if "after" in values else None,
        unit=values.get("unit"),
        important=important,
    )


def _digest_headers(sha256_hex: str) -> dict[str, str]:
    b64 = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
    # Repr-Digest is RFC 9530; Digest (RFC 3230) for older clients.
    return {"Repr-Digest": f"sha-256=:{b64}:", "Digest": f"sha-256={b64}", "ETag": f'"{sha256_hex}"'}


class ReadSide:
    """Handlers of the read endpoints."""

    def __init__(self, parts: CentralParts) -> None:
        self.parts = parts

    async def _item(self, request: web.Request, what: str) -> ItemRecord:
        """The item of the path, if the reader's scope may see it; the read logged first (404 if not)."""
        scope = await reader_scope(request)
        return await required_item(request, scope, request.match_info["item"], what)

    async def query(self, request: web.Request) -> web.Response:
        scope = await reader_scope(request)
        await logged_read(request, scope, "query", query=request.query_string[:1000] or None)
        query = parse_item_query(request.query)
        page, cursor = await self.parts.read(self.parts.index.query_items, query, scope)
        return _json({"items": page, "next": encode_cursor(cursor) if cursor else None})

    async def item(self, request: web.Request) -> web.Response:
        record = await self._item(request, "item")
        receipt = await self.parts.registrar.receipt(record.item)
        case, history = await self.parts.read(self._case_and_history, record.item)
        return _json({
            "item": record.item,
            "sha256": record.sha256,
            "size": record.size,
            "station": record.station,
            "accepted_utc": record.accepted_utc,
            "manifest": record.manifest,
            "case": case,
            "history": history,
            "receipt": receipt.to_dict() if receipt else None,
        })

    async def manifest(self, request: web.Request) -> web.Response:
        record = await self._item(request, "manifest")
        # The bytes exactly as the station signed them (canonical JSON), not a re-serialisation.
        return web.Response(body=record.manifest_text.encode("utf-8"), content_type="application/json")

    async def history(self, request: web.Request) -> web.Response:
        record = await self._item(request, "history")
        case, history = await self.parts.read(self._case_and_history, record.item)
        return _json({"item": record.item, "case": case, "history": history})

    def _case_and_history(self, item: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.parts.index.current_case(item), self.parts.index.metadata_history(item)

    async def receipt(self, request: web.Request) -> web.Response:
        record = await self._item(request, "receipt")
        receipt = await self.parts.registrar.receipt(record.item)
        if receipt is None:
            raise Rejection(RejectCode.NOT_FOUND, f"no receipt for item {record.item}")
        return _json(receipt.to_dict())

    async def content(self, request: web.Request) -> web.StreamResponse:
        record = await self._item(request, "content" if request.method == "GET" else "content-head")
        objects = self.parts.objects
        try:
            stream: BinaryIO = await asyncio.to_thread(objects.open, record.sha256)
        except FileNotFoundError:
            log.error("item %s: object %s is missing from the object store", record.item, record.sha256)
            raise Rejection(RejectCode.STORE_DAMAGED, f"the content of item {record.item} is missing from "
                                                      "the object store; run `edge verify`") from None
        original = record.manifest.get("original")
        name = original.get("name") if isinstance(original, dict) else None
        extension = stored_extension(name) if isinstance(name, str) else "bin"
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{record.item}.{extension}"',
            "Cache-Control": "no-store",
            **_digest_headers(record.sha256),
        })
        response.content_length = record.size
        try:
            await response.prepare(request)
            if request.method == "HEAD":
                # Headers only: a body written after a HEAD would desynchronise a kept-alive connection.
                await response.write_eof()
                return response
            digest = hashlib.sha256()
            read = 0
            # The last chunk is held back until the whole object hashed right, so that a damaged object
            # ends in a truncated response (the client notices), never in a complete one.
            held = b""
            while chunk := await asyncio.to_thread(stream.read, _STREAM_CHUNK_BYTES):
                read += len(chunk)
                if read > record.size:
                    break
                digest.update(chunk)
                if held:
                    await response.write(held)
                held = chunk
            if read != record.size or digest.hexdigest() != record.sha256:
                log.error("item %s: object %s does not hash to its name while being served (%d bytes read); "
                          "the response was cut off; run `edge verify`", record.item, record.sha256, read)
                if request.transport is not None:
                    request.transport.close()
                return response
            if held:
                await response.write(held)
            await response.write_eof()
        finally:
            stream.close()
        return response


def _json(doc: Any) -> web.Response:
    return web.Response(body=canonical_json(doc), content_type="application/json")


def add_read_routes(app: web.Application, parts: CentralParts) -> None:
    read = ReadSide(parts)
    app.router.add_get("/v1/items", read.query)
    app.router.add_get("/v1/items/{item}", read.item)
    app.router.add_get("/v1/items/{item}/content", read.content)
    app.router.add_get("/v1/items/{item}/manifest", read.manifest)
    app.router.add_get("/v1/items/{item}/history", read.history)
    app.router.add_get("/v1/items/{item}/receipt", read.receipt)
