"""The central receiver's aiohttp application: tus uploads, station endpoints, the Merkle log, the read side.

Every endpoint lives under ``/v1``; every error is ``{"error": code, "detail": sentence}``. Station
endpoints act only for the calling station (its certificate's CN, or the development header); the read
side is for readers (auditors) and logs every read before serving it.

:func:`build_app` wires the parts from the configuration; :class:`CentralParts` is what it built, kept on
the application (``app[CENTRAL]``) for the service and for tests.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.central.auth import Authenticator
from edge.central.config import CentralConfig
from edge.central.identity import load_signing_key
from edge.central.index import CentralIndex
from edge.central.log import MerkleLog
from edge.central.log import create_schema as create_log_schema
from edge.central.objects import FileObjectStore
from edge.central.registration import HTTP_STATUS, Caller, Registrar, RejectCode, Rejection
from edge.central.tus import add_tus_routes, tus_purge_task
from edge.central.tus_store import TusUploadStore
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.keys import StationKey

__all__ = [
    "CENTRAL",
    "MAX_JSON_BODY_BYTES",
    "CentralParts",
    "build_app",
    "error_response",
    "json_response",
    "read_json_body",
]

log = logging.getLogger(__name__)

# A ledger segment of 10 000 entries is a few MiB; the body limit leaves room and no more.
MAX_JSON_BODY_BYTES = 32 << 20
# Expired incomplete uploads are looked for this often (bounded both ways around the expiry time).
_PURGE_MIN_INTERVAL_S = 60.0
_PURGE_MAX_INTERVAL_S = 3600.0


@dataclass
class CentralParts:
    """What :func:`build_app` assembled; closed with the application."""

    config: CentralConfig
    index: CentralIndex
    objects: FileObjectStore
    merkle: MerkleLog
    uploads: TusUploadStore
    registrar: Registrar
    auth: Authenticator
    signing_key: StationKey


CENTRAL = web.AppKey("central", CentralParts)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Canonical JSON (the same bytes every time for the same document)."""
    return web.Response(body=canonical_json(doc), status=status, content_type="application/json",
                        headers=headers)


def error_response(code: str, detail: str, status: int) -> web.Response:
    return json_response({"error": code, "detail": detail}, status=status)


def rejection_response(rejection: Rejection) -> web.Response:
    return error_response(str(rejection.code), rejection.detail, rejection.status)


_HTTP_EXCEPTIONS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    408: web.HTTPRequestTimeout,
    413: web.HTTPRequestEntityTooLarge,
    422: web.HTTPUnprocessableEntity,
    500: web.HTTPInternalServerError,
    503: web.HTTPServiceUnavailable,
}


def rejection_exception(rejection: Rejection) -> web.HTTPException:
    """The rejection as a raisable aiohttp exception with the JSON body (for callbacks that must raise)."""
    cls = _HTTP_EXCEPTIONS.get(rejection.status, web.HTTPForbidden)
    body = canonical_json({"error": str(rejection.code), "detail": rejection.detail}).decode("utf-8")
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=MAX_JSON_BODY_BYTES, actual_size=0, text=body,
                                             content_type="application/json")
    return cls(text=body, content_type="application/json")


async def read_json_body(request: web.Request, *, stall_timeout_s: float) -> object:
    """The request body parsed strictly as JSON; raises :class:`Rejection` (too large, stalled, not JSON).

    The body is read in pieces with a deadline per piece, so a client that stops sending cannot hold a
    connection (and a handler) open indefinitely; the size bound is enforced while reading.
    """
    declared = request.content_length
    if declared is not None and declared > MAX_JSON_BODY_BYTES:
        raise Rejection(RejectCode.TOO_LARGE, f"the request body declares {declared} bytes; at most "
                                              f"{MAX_JSON_BODY_BYTES} are accepted")
    pieces: list[bytes] = []
    received = 0
    while True:
        try:
            async with asyncio.timeout(stall_timeout_s):
                piece = await request.content.readany()
        except TimeoutError:
            raise Rejection(RejectCode.REQUEST_TIMEOUT, f"the request body stalled for {stall_timeout_s:g} s "
                                                        f"after {received} bytes") from None
        if not piece:
            break
        received += len(piece)
        if received > MAX_JSON_BODY_BYTES:
            raise Rejection(RejectCode.TOO_LARGE, f"the request body exceeds {MAX_JSON_BODY_BYTES} bytes")
        pieces.append(piece)
    raw = b"".join(pieces)
    if not raw:
        raise Rejection(RejectCode.BAD_REQUEST, "the request has no body; expected a JSON object")
    try:
        return parse_json(raw)
    except CanonicalJsonError as exc:
        raise Rejection(RejectCode.BAD_REQUEST, f"the body is not acceptable JSON: {exc}") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as ``{"error", "detail"}`` JSON, whoever raised it."""
    try:
        return await handler(request)
    except Rejection as rejection:
        return rejection_response(rejection)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = {404: RejectCode.NOT_FOUND, 413: RejectCode.TOO_LARGE}.get(exc.status, f"http_{exc.status}")
        detail = f"{request.method} {request.path[:200]}: {exc.reason}"
        if exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path[:200]}"
        response = error_response(str(code), detail, exc.status)
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path[:200])
        return error_response(RejectCode.INTERNAL_ERROR, "the central failed to handle this request; it was "
                                                         "logged", HTTP_STATUS[RejectCode.INTERNAL_ERROR])


class StationEndpoints:
    """``/v1/stations/{station}/...`` and ``/v1/log/...``."""

    def __init__(self, parts: CentralParts) -> None:
        self.parts = parts
        self.stall_timeout_s = parts.config.uploads.chunk_timeout_s

    async def identify(self, request: web.Request) -> str:
        """The tus layer's caller: an enrolled, active station, or an HTTP error with a JSON body."""
        try:
            return self.parts.auth.station(request).station_id
        except Rejection as rejection:
            raise rejection_exception(rejection) from None

    def _recorded(self, rejection: Rejection, caller: Caller) -> Rejection:
        return self.parts.registrar.reject(rejection, station=caller.station_id, remote=caller.remote)

    async def ledger_head(self, request: web.Request) -> web.Response:
        caller = self.parts.auth.station(request)
        try:
            return json_response(self.parts.registrar.ledger_head(caller, request.match_info["station"]))
        except Rejection as rejection:
            raise self._recorded(rejection, caller) from None

    async def post_ledger(self, request: web.Request) -> web.Response:
        caller = self.parts.auth.station(request)
        try:
            doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        except Rejection as rejection:
            raise self._recorded(rejection, caller) from None
        seq, hash_hex = await self.parts.registrar.accept_segment(caller, request.match_info["station"], doc)
        return json_response({"seq": seq, "hash": hash_hex})

    async def post_item(self, request: web.Request) -> web.Response:
        caller = self.parts.auth.station(request)
        try:
            doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        except Rejection as rejection:
            raise self._recorded(rejection, caller) from None
        registered = await self.parts.registrar.register_item(caller, request.match_info["station"], doc)
        # 201 for a new acceptance, 200 for a replay (same leaf, fresh proof).
        status = 200 if registered.replay else 201
        return json_response({"receipt": registered.receipt.to_dict()}, status=status)

    async def tree_head(self, request: web.Request) -> web.Response:
        self.parts.auth.station_or_reader(request)
        with self.parts.index.transaction():
            head = self.parts.merkle.tree_head()
        return json_response(head.to_dict())

    async def consistency(self, request: web.Request) -> web.Response:
        self.parts.auth.station_or_reader(request)
        first = _size_param(request, "first")
        second = _size_param(request, "second")
        size = self.parts.merkle.size()
        if not first <= second <= size:
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"expected 0 <= first <= second <= {size} (the log size), "
                f"found first={first} second={second}",
            )
        proof = self.parts.merkle.consistency_proof(first, second)
        return json_response({"first": first, "second": second, "proof": [h.hex() for h in proof]})

    async def inclusion(self, request: web.Request) -> web.Response:
        self.parts.auth.station_or_reader(request)
        item = request.query.get("item", "")
        receipt = self.parts.registrar.receipt_for(item) if item else None
        if receipt is None:
            raise Rejection(RejectCode.NOT_FOUND, f"no accepted item {item[:80]!r} in the log")
        return json_response(receipt.to_dict())


def _size_param(request: web.Request, name: str) -> int:
    values = request.query.getall(name, [])
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 19:
        raise Rejection(RejectCode.BAD_REQUEST, f"query parameter {name} must be given once as a tree size "
                                                f"(a non-negative integer), found {values[:2]!r}")
    return int(values[0])


def build_app(config: CentralConfig, *, signing_key: StationKey | None = None) -> web.Application:
    """The central application for ``config`` (its store directory must have been initialised)."""
    # Imported here so that importing this module does not need the read side's dependencies first.
    from edge.central.readside import add_read_routes

    layout = config.layout
    key = signing_key if signing_key is not None else load_signing_key(config)
    index = CentralIndex.open(layout.index_db)
    try:
        with index.transaction():
            create_log_schema(index.conn)
        merkle = MerkleLog(index.conn, key, config.central.id)
        objects = FileObjectStore(layout.objects_dir)
        uploads = TusUploadStore(layout.uploads_dir, max_size_bytes=config.uploads.max_size_bytes,
                                 expire_after_s=config.uploads.expire_incomplete_s)
    except BaseException:
        index.close()
        raise
    registrar = Registrar(index, objects, merkle, uploads)

    def record(rejection: Rejection, station: str | None, remote: str | None) -> None:
        registrar.reject(rejection, station=station, remote=remote)

    auth = Authenticator(index, dev_mode=config.server.insecure_plain_http, on_reject=record)
    parts = CentralParts(config, index, objects, merkle, uploads, registrar, auth, key)
    app = web.Application(client_max_size=MAX_JSON_BODY_BYTES, middlewares=[error_middleware])
    app[CENTRAL] = parts
    stations = StationEndpoints(parts)
    add_tus_routes(app, uploads, identify=stations.identify, chunk_timeout_s=config.uploads.chunk_timeout_s)
    app.router.add_get("/v1/stations/{station}/ledger/head", stations.ledger_head)
    app.router.add_post("/v1/stations/{station}/ledger", stations.post_ledger)
    app.router.add_post("/v1/stations/{station}/items", stations.post_item)
    app.router.add_get("/v1/log/tree-head", stations.tree_head)
    app.router.add_get("/v1/log/consistency", stations.consistency)
    app.router.add_get("/v1/log/inclusion", stations.inclusion)
    add_read_routes(app, parts)
    expire_s = config.uploads.expire_incomplete_s
    interval_s = min(_PURGE_MAX_INTERVAL_S, max(_PURGE_MIN_INTERVAL_S, expire_s / 10))
    app.cleanup_ctx.append(tus_purge_task(uploads, interval_s))
    app.cleanup_ctx.append(_close_index(index))
    if config.server.insecure_plain_http:
        log.warning("INSECURE DEVELOPMENT MODE: the central serves plain HTTP and believes the station and "
                    "reader names in request headers; anyone who can reach it can register evidence")
    return app


def _close_index(index: CentralIndex) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                index.close()
            except sqlite3.Error:
                log.exception("closing the index failed")

    return context
