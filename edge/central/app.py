"""The central receiver's aiohttp application: tus uploads, station endpoints, the Merkle log, the read side.

Every endpoint lives under ``/v1``; every error is ``{"error": code, "detail": sentence}`` (with
``Tus-Resumable`` under ``/v1/uploads``), including the refusals aiohttp makes itself (see
:mod:`edge.central.http_server`); a final refusal (``registration.SIGNED_REFUSALS``) adds ``"refusal"``,
signed by the central, which is all a station takes as final. Station endpoints act only for the
calling station (its certificate's CN, or the development header): ``/v1/log/inclusion`` answers a
station only for its own items, with the same 404 whether another station's item exists or not. The read
side is for readers (auditors) and logs every read before serving it.

Bounds (``[server]`` in the configuration): at most ``max_concurrent_requests`` requests in progress and
``max_buffered_body_mb`` of JSON bodies held in memory together (503 with ``Retry-After`` beyond either),
each JSON body at most ``max_json_body_mb``; numbers in query strings are ASCII digits only
(:mod:`edge.central.numbers`). A client that disconnects mid-request is logged as such (INFO, no
traceback, status 499 in the access log), never as an internal error.

:func:`build_app` wires the parts from the configuration; :class:`CentralParts` is what it built, kept on
the application (``app[CENTRAL]``) for the service and for tests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from aiohttp import web

from edge.central.auth import Authenticator, require_client_certificate
from edge.central.backends import open_central_database
from edge.central.config import CentralConfig, ConfigError, PostgresIndexConfig
from edge.central.health import PUBLIC_ROUTES, Readiness, add_health_routes
from edge.central.http_server import (
    CLIENT_GONE,
    add_response_headers,
    client_is_gone,
    hold_body,
    request_middleware,
)
from edge.central.identity import load_signing_key
from edge.central.limits import BodyBudget, HttpBounds, RequestLimiter, UploadWriteSlots
from edge.central.lock_extensions import lock_extension_task
from edge.central.log import MerkleLog
from edge.central.metrics import CentralMetrics
from edge.central.mqtt_ingest_store import MqttIngestStore
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.object_stores import open_object_store
from edge.central.objects import FileObjectStore, ObjectStore, ObjectStoreError
from edge.central.registration import HTTP_STATUS, Caller, Registrar, RejectCode, Rejection
from edge.central.retention import RetentionPolicy
from edge.central.revocation import crl_seconds_left
from edge.central.storage import CentralDatabase, ConsoleStore, EquipmentRows, Index, Readers
from edge.central.timestamp import TimeStamper, keep_tsa_roots, load_tsa_roots, timestamp_task
from edge.central.tus import TusRequestError, add_tus_routes, tus_purge_task
from edge.central.tus_store import TusUploadStore
from edge.central.upload_sources import CombinedUploadSource
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.checkpoint_note import checkpoint_text, sign_note
from edge.custody.errors import CanonicalJsonError
from edge.custody.keys import StationKey
from edge.custody.receipt import TreeHead
from edge.pki.names import IdentityError

if TYPE_CHECKING:
    from edge.central.postgres.tus_shared_store import SharedTusStore

__all__ = [
    "BOUNDS",
    "CENTRAL",
    "METRICS",
    "MQTT_RECEIVER",
    "READINESS",
    "TUS_BASE_PATH",
    "UPLOAD_WRITES",
    "CentralParts",
    "build_app",
    "error_response",
    "json_response",
    "read_json_body",
]

log = logging.getLogger(__name__)

TUS_BASE_PATH = "/v1/uploads"
# Expired uploads are looked for this often (bounded both ways around the shorter expiry time).
_PURGE_MIN_INTERVAL_S = 60.0
_PURGE_MAX_INTERVAL_S = 3600.0


_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass
class CentralParts:
    """What :func:`build_app` assembled; closed with the application."""

    config: CentralConfig
    index: Index
    objects: ObjectStore
    merkle: MerkleLog
    # Local files (one receiver), or PostgreSQL and the bucket when the central runs on both (several).
    uploads: TusUploadStore | SharedTusStore
    registrar: Registrar
    auth: Authenticator
    signing_key: StationKey
    console: ConsoleStore
    # The agency's officer lists and the stations' fleet reports (edge.central.equipment).
    equipment: EquipmentRows
    # The MQTT receiver's transfers ([mqtt] configured), None otherwise; registration resolves "mqtt:"
    # uploads in it (edge.central.upload_sources).
    mqtt_transfers: MqttIngestStore | None = None

    @property
    def file_objects(self) -> FileObjectStore:
        """The object store when it is the local folder (tests and the console's file playback reach
        into it); TypeError for any other."""
        if not isinstance(self.objects, FileObjectStore):
            raise TypeError(f"the object store is {self.objects!r}, not a local folder")
        return self.objects

    async def read(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``work(*args, **kwargs)``, reads of the index or the console's store for the console, the read
        side, auditors and the receiver's own rounds, off the event loop
        (:meth:`edge.central.storage.UnitOfWork.run_reads`, :attr:`Readers.CONSOLE`)."""
        return await self.index.unit.run_reads(functools.partial(work, *args, **kwargs), Readers.CONSOLE)

    async def station_read(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """:meth:`read` for a station's request (its authentication, its ledger, the MQTT API and
        commands), in the stations' own reader threads (:attr:`Readers.STATIONS`): auditors' slow reads
        never hold the threads a station waits for."""
        return await self.index.unit.run_reads(functools.partial(work, *args, **kwargs), Readers.STATIONS)

    async def write(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``work(*args, **kwargs)``, which opens its transactions itself, on the database's writer
        (:meth:`edge.central.storage.UnitOfWork.run_writes`)."""
        return await self.index.unit.run_writes(functools.partial(work, *args, **kwargs))


CENTRAL = web.AppKey("central", CentralParts)
BOUNDS = web.AppKey("central-bounds", HttpBounds)
METRICS = web.AppKey("central-metrics", CentralMetrics)
READINESS = web.AppKey("central-readiness", Readiness)
# The tus upload writes in progress ([uploads] station_max_writes, max_upload_connections).
UPLOAD_WRITES = web.AppKey("central-upload-writes", UploadWriteSlots)
# The MQTT receiver ([mqtt] configured): its connection and counts, for tests and the service.
MQTT_RECEIVER: web.AppKey[Any] = web.AppKey("central-mqtt-receiver")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Canonical JSON (the same bytes every time for the same document)."""
    return web.Response(body=canonical_json(doc), status=status, content_type="application/json",
                        headers=headers)


def error_response(code: str, detail: str, status: int) -> web.Response:
    return json_response({"error": code, "detail": detail}, status=status)


def rejection_document(rejection: Rejection) -> dict[str, Any]:
    """The JSON body of a refusal (HTTP, and the MQTT API's replies, which carry the same status)."""
    if rejection.refusal is None:
        return {"error": str(rejection.code), "detail": rejection.detail}
    # A final refusal carries the central's signature: a station takes nothing else as final.
    return {"error": str(rejection.code), "detail": rejection.detail, "refusal": rejection.refusal}


def rejection_response(rejection: Rejection) -> web.Response:
    return json_response(rejection_document(rejection), status=rejection.status)


def _busy(bounds: HttpBounds, what: str) -> Rejection:
    return Rejection(RejectCode.SERVER_BUSY, f"the central holds {bounds.budget.max_bytes} bytes of request "
                                             f"bodies, its configured maximum, and cannot take {what} now; "
                                             f"retry after {bounds.limiter.retry_after_s} s")


async def read_json_body(request: web.Request, *, stall_timeout_s: float) -> object:
    """The request body parsed strictly as JSON; raises :class:`Rejection` (too large, stalled, not JSON,
    no room in the body budget).

    The body is read in pieces with a deadline per piece, so a client that stops sending cannot hold a
    connection (and a handler) open indefinitely; the size bound and the application's body budget
    (:class:`~edge.central.limits.BodyBudget`, held until the request ends) are enforced while reading.
    """
    bounds = request.app[BOUNDS]
    max_bytes = bounds.max_json_body_bytes
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise Rejection(RejectCode.TOO_LARGE, f"the request body declares {declared} bytes; at most "
                                              f"{max_bytes} are accepted")
    if declared is not None and not hold_body(request, bounds.budget, declared):
        raise _busy(bounds, f"a body of {declared} bytes")
    held = declared or 0
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
        if received > max_bytes:
            raise Rejection(RejectCode.TOO_LARGE, f"the request body exceeds {max_bytes} bytes")
        if received > held:
            # A chunked body declares no length: hold its bytes as they come.
            if not hold_body(request, bounds.budget, received - held):
                raise _busy(bounds, f"{received} bytes of this body")
            held = received
        pieces.append(piece)
    raw = b"".join(pieces)
    if not raw:
        raise Rejection(RejectCode.BAD_REQUEST, "the request has no body; expected a JSON object")
    try:
        return parse_json(raw)
    except CanonicalJsonError as exc:
        raise Rejection(RejectCode.BAD_REQUEST, f"the body is not acceptable JSON: {exc}") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(request: web.Request, response: web.Response) -> web.Response:
    """Finish a refusal: ``Retry-After`` on 503, and no keep-alive when the body was left unread."""
    if response.status == 503:
        response.headers.setdefault("Retry-After", str(request.app[BOUNDS].limiter.retry_after_s))
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as ``{"error", "detail"}`` JSON, whoever raised it; a vanished client is not an error."""
    try:
        return await handler(request)
    except Rejection as rejection:
        return _refusal(request, rejection_response(rejection))
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
        return _refusal(request, response)
    except ConnectionError as exc:
        if not client_is_gone(request):
            # Not our client's connection (a backend's, say): a real failure.
            return _internal_error(request)
        request[CLIENT_GONE] = True
        log.info("%s %s from %s: the client disconnected before the answer (%s)", request.method,
                 request.path[:200], request.remote, exc)
        # Never sent (the connection is gone); aiohttp drops it quietly.
        return error_response("client_gone", "the connection ended during the request", 400)
    except Exception as exc:
        if isinstance(exc, request.app[CENTRAL].index.unit.errors):
            # The database failed (lost connection, server restarting): the transaction was rolled back
            # whole, nothing half-written; the client retries. Logged with its cause, never answered with it.
            log.exception("the index failed under %s %s", request.method, request.path[:200])
            return _refusal(request, error_response(
                RejectCode.INDEX_UNAVAILABLE, "the central's database is unavailable; nothing of this "
                "request was kept: retry later", HTTP_STATUS[RejectCode.INDEX_UNAVAILABLE]))
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    log.exception("internal error in %s %s", request.method, request.path[:200])
    return error_response(RejectCode.INTERNAL_ERROR, "the central failed to handle this request; it was "
                                                     "logged", HTTP_STATUS[RejectCode.INTERNAL_ERROR])


class StationEndpoints:
    """``/v1/stations/{station}/...`` and ``/v1/log/...``."""

    def __init__(self, parts: CentralParts, metrics: CentralMetrics) -> None:
        self.parts = parts
        self.metrics = metrics
        self.stall_timeout_s = parts.config.uploads.chunk_timeout_s

    async def identify(self, request: web.Request) -> str:
        """The tus layer's caller: an enrolled, active station, or a tus refusal with a JSON body."""
        try:
            return (await self.parts.station_read(self.parts.auth.station, request)).station_id
        except Rejection as rejection:
            raise TusRequestError(rejection.status, str(rejection.code), rejection.detail) from None

    async def _recorded(self, rejection: Rejection, caller: Caller) -> Rejection:
        return await self.parts.registrar.rejected(rejection, station=caller.station_id, remote=caller.remote)

    async def ledger_head(self, request: web.Request) -> web.Response:
        caller = await self.parts.station_read(self.parts.auth.station, request)
        try:
            answer = await self.parts.registrar.ledger_head(caller, request.match_info["station"])
            return json_response(answer)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None

    async def post_ledger(self, request: web.Request) -> web.Response:
        caller = await self.parts.station_read(self.parts.auth.station, request)
        try:
            doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        await self.parts.registrar.accept_segment(caller, request.match_info["station"], doc)
        # The accepted head, witnessed (signed) by the central, and the log's tree head.
        return json_response(await self.parts.registrar.ledger_answer(caller))

    async def post_item(self, request: web.Request) -> web.Response:
        caller = await self.parts.station_read(self.parts.auth.station, request)
        try:
            doc = await read_json_body(request, stall_timeout_s=self.stall_timeout_s)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        started = time.monotonic()
        try:
            registered = await self.parts.registrar.register_item(caller, request.match_info["station"], doc)
        finally:
            self.metrics.receipt_seconds.observe(time.monotonic() - started)
        # 201 for a new acceptance, 200 for a replay (same leaf, fresh proof).
        status = 200 if registered.replay else 201
        return json_response({"receipt": registered.receipt.to_dict()}, status=status)

    async def tree_head(self, request: web.Request) -> web.Response:
        await self.parts.station_read(self.parts.auth.station_or_reader, request)
        head = await self.parts.write(self._tree_head_now)
        return json_response(head.to_dict())

    def _tree_head_now(self) -> TreeHead:
        """The log's signed tree head, signing one when the newest does not cover the log (the writer's)."""
        with self.parts.index.transaction():
            return self.parts.merkle.tree_head()

    async def checkpoint(self, request: web.Request) -> web.Response:
        """The latest tree head as a C2SP tlog-checkpoint signed note (text/plain), for outside witnesses."""
        await self.parts.station_read(self.parts.auth.station_or_reader, request)
        head = await self.parts.write(self._tree_head_now)
        note = sign_note(checkpoint_text(head.origin, head.tree_size, head.root), head.origin,
                         self.parts.signing_key)
        return web.Response(text=note, content_type="text/plain", charset="utf-8")

    async def consistency(self, request: web.Request) -> web.Response:
        await self.parts.station_read(self.parts.auth.station_or_reader, request)
        first = _size_param(request, "first")
        second = _size_param(request, "second")
        size = await self.parts.station_read(self.parts.merkle.size)
        if not first <= second <= size:
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"expected 0 <= first <= second <= {size} (the log size), "
                f"found first={first} second={second}",
            )
        proof = await self.parts.station_read(self.parts.merkle.consistency_proof, first, second)
        return json_response({"first": first, "second": second, "proof": [h.hex() for h in proof]})

    async def inclusion(self, request: web.Request) -> web.Response:
        principal = await self.parts.station_read(self.parts.auth.station_or_reader, request)
        item = request.query.get("item", "")
        receipt = await self.parts.registrar.receipt(item) if item else None
        if receipt is not None and principal.kind == "reader":
            # A reader's scope as on the read side: an item it may not see answers like a missing one.
            from edge.central.console.scope import log_read, scope_of

            scope = await self.parts.read(scope_of, self.parts, principal.name)
            await self.parts.write(log_read, request, scope, "inclusion", item=item[:64])
            if not await self.parts.read(self.parts.index.item_visible, item, scope):
                receipt = None
        if receipt is not None and principal.kind == "station":
            # A station learns about its own items only; another station's item answers exactly like an
            # item that does not exist, so the answer does not tell which items exist.
            record = await self.parts.station_read(self.parts.index.item, item)
            if record is None or record.station != principal.name:
                if record is not None:
                    log.warning("station %s asked for the inclusion proof of item %s of station %s",
                                principal.name, item, record.station)
                receipt = None
        if receipt is None:
            raise Rejection(RejectCode.NOT_FOUND, f"no accepted item {item[:80]!r} in the log")
        return json_response(receipt.to_dict())


def _size_param(request: web.Request, name: str) -> int:
    values = request.query.getall(name, [])
    if len(values) != 1:
        raise Rejection(RejectCode.BAD_REQUEST, f"query parameter {name} must be given once as a tree size "
                                                f"(a non-negative integer), found {len(values)} values")
    try:
        return parse_ascii_uint(values[0])
    except AsciiNumberError as exc:
        raise Rejection(RejectCode.BAD_REQUEST, f"query parameter {name} is a tree size: {exc}") from None


def build_app(
    config: CentralConfig,
    *,
    signing_key: StationKey | None = None,
    open_database: Callable[[CentralConfig], CentralDatabase] = open_central_database,
) -> web.Application:
    """The central application for ``config`` (its store directory must have been initialised).

    ``open_database`` opens the backend of the index, the Merkle log and the console's store (by default
    the one ``[central] index`` names: SQLite in the store's ``index.db`` or PostgreSQL); nothing else in
    the application knows which one it is."""
    # Imported here so that importing this module does not need the read side's dependencies first.
    from edge.central.console.api import add_console_api_routes
    from edge.central.console.pages import add_console_pages
    from edge.central.console.secret_key import ConsoleKeyError, require_console_key
    from edge.central.console.signin import add_sign_in_routes
    from edge.central.console.state import CONSOLE, ConsoleState
    from edge.central.disclosure.routes import add_audit_routes
    from edge.central.equipment import add_equipment_routes
    from edge.central.readside import add_read_routes
    from edge.central.station_ledger_read import add_station_ledger_route

    layout = config.layout
    key = signing_key if signing_key is not None else load_signing_key(config)
    database = open_database(config)
    index = database.index
    try:
        merkle = MerkleLog(database.log_store, key, config.central.id)
        objects = open_object_store(config)
        uploads = _upload_store(config, objects)
        transfers: MqttIngestStore | None = None
        if config.mqtt is not None:
            # Imported here: the MQTT client (paho) is needed only by a central with an [mqtt] section.
            from edge.central.mqtt_receiver import transfers_store

            transfers = transfers_store(config)
        try:
            console_key = require_console_key(layout.console_key, database.console, by="central-start")
        except ConsoleKeyError as exc:
            # Like an unusable signing key (exit 78): running on would append every access-log row
            # unsealed and refuse every TOTP sign-in, for as long as nobody noticed one log line.
            raise IdentityError(f"console key: {exc}") from None
    except BaseException:
        database.close()
        raise
    broker_crl_file = config.mqtt.broker_crl_file if config.mqtt is not None else None
    metrics = CentralMetrics(log_size=merkle.size, crl_seconds_left=lambda: crl_seconds_left(
        layout, broker_crl_file=broker_crl_file))
    registrar = Registrar(index, objects, merkle, CombinedUploadSource(uploads, transfers), signing_key=key,
                          central_id=config.central.id,
                          retention=RetentionPolicy.from_config(config.retention))
    registrar.on_content_verified = metrics.verify_seconds.observe
    metrics.watch_lock_extensions(index.pending_lock_count)

    def record(rejection: Rejection, station: str | None, remote: str | None) -> None:
        # The authenticator's checks run off the loop (CentralParts.read): this records in their thread.
        registrar.reject(rejection, station=station, remote=remote)

    auth = Authenticator(index, dev_mode=config.server.insecure_plain_http, on_reject=record)
    metrics.watch_unrecorded_refusals(lambda: auth.refusal_rate.not_written)
    parts = CentralParts(config, index, objects, merkle, uploads, registrar, auth, key, database.console,
                         database.equipment, transfers)
    server = config.server
    bounds = HttpBounds(RequestLimiter(server.max_concurrent_requests, retry_after_s=server.retry_after_s),
                        BodyBudget(server.max_buffered_body_bytes), server.max_json_body_bytes)
    app = web.Application(client_max_size=server.max_json_body_bytes,
                          middlewares=[request_middleware(bounds.limiter, bounds.budget), error_middleware,
                                       require_client_certificate(PUBLIC_ROUTES)])
    app[CENTRAL] = parts
    app[BOUNDS] = bounds
    app[METRICS] = metrics
    app[READINESS] = Readiness(parts)
    add_health_routes(app, app[READINESS])
    app.on_response_prepare.append(add_response_headers(TUS_BASE_PATH))
    stations = StationEndpoints(parts, metrics)
    # Each write of the shared store holds a PostgreSQL connection (and up to a part in memory) for its
    # whole request: bounded on the receiver; the local store's only per station.
    writes = UploadWriteSlots(
        per_station=config.uploads.station_max_writes,
        max_total=None if isinstance(uploads, TusUploadStore) else config.uploads.max_upload_connections)
    metrics.watch_upload_writes(lambda: writes.in_progress)
    app[UPLOAD_WRITES] = writes
    add_tus_routes(app, uploads, base_path=TUS_BASE_PATH, identify=stations.identify,
                   chunk_timeout_s=config.uploads.chunk_timeout_s, limiter=bounds.limiter,
                   sign_refusal=registrar.sign_refusal, writes=writes)
    app.router.add_get("/v1/stations/{station}/ledger/head", stations.ledger_head)
    app.router.add_post("/v1/stations/{station}/ledger", stations.post_ledger)
    app.router.add_post("/v1/stations/{station}/items", stations.post_item)
    app.router.add_get("/v1/log/tree-head", stations.tree_head)
    app.router.add_get("/v1/log/checkpoint", stations.checkpoint)
    app.router.add_get("/v1/log/consistency", stations.consistency)
    app.router.add_get("/v1/log/inclusion", stations.inclusion)
    add_read_routes(app, parts)
    add_station_ledger_route(app, parts)
    # The agency's officer list for its stations and their fleets for auditors (edge.central.equipment).
    add_equipment_routes(app, parts, config.uploads.chunk_timeout_s)
    # The auditor console: its pages, sign-in and session-authenticated API (edge.central.console).
    app[CONSOLE] = ConsoleState.from_settings(config.console, database.console, console_key)
    add_sign_in_routes(app)
    add_console_api_routes(app, parts)
    add_console_pages(app)
    add_audit_routes(app, parts)
    expire_s = min(config.uploads.expire_incomplete_s, config.uploads.expire_unregistered_s)
    interval_s = min(_PURGE_MAX_INTERVAL_S, max(_PURGE_MIN_INTERVAL_S, expire_s / 10))
    app.cleanup_ctx.append(tus_purge_task(uploads, interval_s))
    # Lock extensions the object store has not confirmed: at start, then every interval.
    app.cleanup_ctx.append(lock_extension_task(registrar.lock_extender,
                                               config.retention.lock_retry_interval_s))
    if transfers is not None:
        try:
            _add_mqtt_receiver(app, parts, transfers, metrics, interval_s)
        except BaseException:
            database.close()  # the receive queue cannot be used now: the start fails
            raise
    if config.log.tsa_url:
        assert config.log.tsa_root_cert is not None  # config validation guarantees it
        roots = load_tsa_roots(config.log.tsa_root_cert)
        keep_tsa_roots(roots, layout.tsa_roots_dir)
        stamper = TimeStamper(merkle, key, config.log.tsa_url, roots,
                              timeout_s=config.log.tsa_timeout_s)
        app.cleanup_ctx.append(timestamp_task(stamper, config.log.tsa_interval_s))
    app.cleanup_ctx.append(_close_database(database))
    if not isinstance(uploads, TusUploadStore):
        shared = uploads

        async def close_upload_connections(_app: web.Application) -> None:
            await asyncio.to_thread(shared.close)

        app.on_cleanup.append(close_upload_connections)
    if config.server.insecure_plain_http:
        log.warning("INSECURE DEVELOPMENT MODE: the central serves plain HTTP and believes the station and "
                    "reader names in request headers; anyone who can reach it can register evidence")
    return app


def _upload_store(config: CentralConfig, objects: ObjectStore) -> TusUploadStore | SharedTusStore:
    """The tus uploads' store: shared by every receiver (records in PostgreSQL, bytes in the bucket) when
    the central runs on both, else local files in the store directory (one receiver)."""
    settings = config.uploads
    index = config.central.index
    if not isinstance(index, PostgresIndexConfig) or config.central.objects.type != "s3":
        return TusUploadStore(config.layout.uploads_dir, max_size_bytes=settings.max_size_bytes,
                              expire_after_s=settings.expire_incomplete_s,
                              expire_complete_after_s=settings.expire_unregistered_s,
                              station_quota_bytes=settings.station_quota_bytes)
    # Imported here: psycopg and boto3 are needed only by a central configured for both.
    import psycopg

    from edge.central.postgres.tus_shared_store import SharedTusStore
    from edge.central.s3_objects import S3ObjectStore

    assert isinstance(objects, S3ObjectStore)
    url = index.url
    password = index.password.resolve() if index.password is not None else None

    def connect() -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(url, autocommit=True, password=password, connect_timeout=10,
                               application_name=f"edge-central {config.central.id} uploads")

    try:
        return SharedTusStore(connect, objects, part_size_bytes=settings.s3_part_mb << 20,
                              max_size_bytes=settings.max_size_bytes,
                              expire_after_s=settings.expire_incomplete_s,
                              expire_complete_after_s=settings.expire_unregistered_s,
                              station_quota_bytes=settings.station_quota_bytes)
    except ObjectStoreError as exc:
        raise ConfigError(f"central.objects: {exc}") from None


def _add_mqtt_receiver(
    app: web.Application, parts: CentralParts, transfers: MqttIngestStore, metrics: CentralMetrics,
    purge_interval_s: float,
) -> None:
    """The MQTT receiver ([mqtt]): content and the station API, a supervised task beside the server."""
    # Imported here: the MQTT client (paho) is needed only by a central that has an [mqtt] section.
    from edge.central.mqtt_api import MqttApi
    from edge.central.mqtt_receiver import (
        MqttReceiver,
        SupervisedReceiver,
        central_mqtt_settings,
        mqtt_purge_task,
        queue_settings,
        station_check_of,
    )

    mqtt = parts.config.mqtt
    assert mqtt is not None
    from edge.central.equipment import EQUIPMENT_STORE

    api = MqttApi(parts, transfers, prefix=mqtt.topic_prefix, max_request_bytes=mqtt.max_request_bytes,
                  observe_receipt=metrics.receipt_seconds.observe, equipment=app[EQUIPMENT_STORE])
    receiver = MqttReceiver(
        central_mqtt_settings(parts.config), prefix=mqtt.topic_prefix, shared_group=mqtt.shared_group,
        store=transfers, api=api,
        station_check=station_check_of(lambda s: parts.auth.enrolled_station(s, remote="mqtt"),
                                       reads=parts.station_read),
        queue_settings=queue_settings(mqtt),
    )
    app[MQTT_RECEIVER] = receiver
    # Opened now, so that a queue file that cannot be used now (locked, I/O error, disk full) fails the
    # start (exit 75) instead of the receiver retrying in the background without it (review 13).
    receiver.open_queue()
    metrics.watch_receive_queue(receiver.queue_waiting, lambda: receiver.counts.busy,
                                lambda: receiver.counts.expired)
    app.cleanup_ctx.append(mqtt_purge_task(transfers, purge_interval_s))
    supervised = SupervisedReceiver(receiver)
    app.cleanup_ctx.append(supervised.context)
    # Stopped at shutdown, before the cleanup contexts close the index its API answers from.
    app.on_shutdown.append(supervised.on_shutdown)


def _close_database(database: CentralDatabase) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                database.close()
            except database.errors:
                log.exception("closing the index failed")

    return context
