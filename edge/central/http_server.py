"""The central's HTTP/1.1 connections: request-head deadline, refusals made before the application, the
access log, and the request middleware that applies the admission bounds.

aiohttp parses requests in its ``RequestHandler`` protocol. The central serves with a subclass of it,
:class:`CentralProtocol`, created by :func:`listen` for each connection, which adds:

- **A request-head deadline.** aiohttp has no header-read timeout: a client that opens a connection and
  sends its request head one byte at a time (slowloris) holds the connection for as long as it likes.
  A connection must deliver a complete request head within ``head_timeout_s`` of opening, or of the end
  of its previous response (which also closes idle keep-alive connections), or it is closed. Time spent
  inside a request (a long upload body) does not count: the body has its own stall timeout in the
  handlers. The same bound is the TLS handshake timeout.
- **JSON refusals for what aiohttp refuses itself** (a malformed request line, header or length, a
  transfer coding other than chunked): ``{"error", "detail"}`` with ``Tus-Resumable``, like every other
  refusal of the central, logged as one line without a traceback (a malformed request is the client's
  problem, not an internal error).
- **The access log**: one JSON line per request on the ``edge.central.access`` logger
  (:class:`CentralAccessLogger`).
- **The request metrics** (:class:`edge.central.metrics.CentralMetrics`): every answered request counted
  by route template and status, refusals by code, tus upload bytes; counted here, once per request,
  whoever made the answer.

:func:`request_middleware` is the application's outermost middleware: it names each request
(``X-Request-Id``), tells the protocol a request reached the application, refuses transfer codings
other than chunked (501, before any body byte is read) and applies the :class:`RequestLimiter` (503 with
``Retry-After``). :func:`add_response_headers` puts ``X-Request-Id``, and ``Tus-Resumable`` on every
response under the tus base path, on every response just before its headers go out, whoever made it.

Transfer codings: tus offsets count the bytes of the content, so a body that arrives compressed
(``Transfer-Encoding: gzip, chunked``) must not be stored undecoded, and the central decodes none. Any
``Transfer-Encoding`` other than exactly ``chunked`` is refused with 501 (RFC 9110 §6.1 allows 501 for a
coding the server does not understand; when chunked is not the final coding RFC 9112 §6.3 asks for 400,
and the central answers 501 there too so that every refused coding looks the same), and the connection is
closed, since the body's framing is not understood.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from edge.central.limits import BodyBudget, RequestLimiter
from edge.central.metrics import CentralMetrics, route_template
from edge.custody.canonical import canonical_json

__all__ = [
    "ACCESS_LOGGER",
    "CLIENT_GONE",
    "REQUEST_ID",
    "TUS_RESUMABLE",
    "CentralAccessLogger",
    "CentralProtocol",
    "add_response_headers",
    "client_is_gone",
    "hold_body",
    "json_refusal",
    "listen",
    "request_middleware",
]

log = logging.getLogger(__name__)

ACCESS_LOGGER = "edge.central.access"
# Per-request state in the request's mapping (aiohttp requests are mutable mappings for exactly this).
REQUEST_ID = web.RequestKey("edge_request_id", str)
CLIENT_GONE = web.RequestKey("edge_client_gone", bool)
# Bytes of the body budget held for the request (see hold_body), released when the request ends.
_BODY_HELD = web.RequestKey("edge_body_held", int)
TUS_RESUMABLE = "1.0.0"

# A complete head seen on the wire gets this long to reach the application before the deadline applies.
_HEAD_GRACE_S = 5.0
_MAX_LOGGED_PATH_CHARS = 200
_MAX_LOGGED_DETAIL_CHARS = 300

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_refusal(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """A refusal as the central writes them all: ``{"error": code, "detail": sentence}``."""
    return web.Response(
        status=status,
        body=canonical_json({"error": code, "detail": detail}),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _printable(text: str, limit: int, *, spaces: bool = False) -> str:
    """``text`` safe for one log line (and, without ``spaces``, for one ``key=value`` field): non-ASCII,
    control and (unless allowed) space characters escaped, bounded to ``limit`` characters."""
    shown = text[: limit + 1].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(
        ch if ch.isprintable() and (spaces or ch != " ") else f"\\x{ord(ch):02x}" for ch in shown
    )
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _peer_names(transport: asyncio.BaseTransport | None) -> tuple[str, str]:
    """(CN, OU) of the verified client certificate of a TLS connection, each ``-`` when absent."""
    if transport is None:
        return "-", "-"
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return "-", "-"
    try:
        subject = ssl_object.getpeercert() or {}
    except ValueError:  # the handshake has not completed
        return "-", "-"
    found = {"commonName": "-", "organizationalUnitName": "-"}
    rdns: Any = subject.get("subject", ())
    for rdn in rdns:
        for attribute in rdn:
            if len(attribute) == 2 and attribute[0] in found and isinstance(attribute[1], str):
                found[attribute[0]] = _printable(attribute[1], 64)
    return found["commonName"], found["organizationalUnitName"]


def _remote(transport: asyncio.BaseTransport | None) -> str:
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return "-"


def hold_body(request: web.Request, budget: BodyBudget, n: int) -> bool:
    """Reserve ``n`` more bytes of ``budget`` for ``request``, released by :func:`request_middleware` when
    the request ends (so the parsed document counts as long as the handler holds it); False when they
    do not fit (nothing reserved)."""
    if not budget.try_reserve(n):
        return False
    request[_BODY_HELD] = request.get(_BODY_HELD, 0) + n
    return True


def client_is_gone(request: web.BaseRequest) -> bool:
    """Whether the request's connection is closed or closing (the client went away or was cut off)."""
    transport = request.transport
    return transport is None or transport.is_closing()


class CentralProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol with a request-head deadline and JSON refusals (see the module)."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, head_timeout_s: float,
                 metrics: CentralMetrics | None = None, console_listener: bool = False,
                 **kwargs: Any) -> None:
        if head_timeout_s <= 0:
            raise ValueError(f"head_timeout_s must be > 0, got {head_timeout_s}")
        super().__init__(manager, loop=loop, **kwargs)
        self._event_loop = loop
        # Whether this connection came in on the console's own listener ([console] listen): there the
        # console answers without a client certificate, and nothing else answers at all.
        self.console_listener = console_listener
        self._head_timeout_s = head_timeout_s
        self._metrics = metrics
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self._served = 0
        # What arrived since the deadline was armed: bytes, and whether a head's blank line was among them.
        self._head_bytes = 0
        self._head_end_seen = False
        self._scan_tail = b""
        self._graced = False
        self.peer_name = "-"
        self.peer_role = "-"
        self.remote = "-"

    # -- asyncio protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer_name, self.peer_role = _peer_names(transport)
        self.remote = _remote(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and data:
            self._head_bytes += len(data)
            if not self._head_end_seen:
                # The blank line ending a head; the grace it buys is spent once per deadline (see below).
                window = self._scan_tail + data
                self._head_end_seen = b"\r\n\r\n" in window
                self._scan_tail = window[-3:]
        super().data_received(data)

    # -- request lifecycle (the middleware and aiohttp call these) -------------------------------------

    def request_started(self) -> None:
        """A request reached the application: its head is complete, the deadline stops."""
        self._in_request = True
        self._served += 1
        self._disarm()

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # aiohttp calls this once the response is written (or could not be): the next head's time starts.
        try:
            if self._metrics is not None:
                self._metrics.answered(request, response, answered_status(request, response))
            super().log_access(request, response, time)
        finally:
            self._in_request = False
            if self.transport is not None:
                self._arm()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers itself (a request it could not parse, an error no middleware caught), as
        a JSON refusal with ``Tus-Resumable``; logged in one line, with a traceback only when it is ours."""
        if request.writer.output_size > 0:
            # Same contract as aiohttp's: a response already on the wire cannot be replaced.
            raise ConnectionError("the response was already being sent; cannot send an error instead")
        if isinstance(exc, HttpProcessingError):
            said = (exc.message or str(exc)).strip()
            first_line = said.splitlines()[0] if said else "malformed request"
            detail = _printable(first_line, _MAX_LOGGED_DETAIL_CHARS, spaces=True)
            if "transfer-encoding" in said.lower():
                status, code = 501, "unsupported_transfer_coding"
                detail = (f"Transfer-Encoding: only chunked is accepted, and nothing is decoded; "
                          f"the request was not read ({detail})")
            else:
                status, code = (status if 400 <= status < 500 else 400), "malformed_request"
            log.warning("refused a malformed request from %s (peer %s): %d %s: %s", self.remote,
                        self.peer_name, status, code, detail)
        elif isinstance(exc, ConnectionError):
            log.info("connection from %s (peer %s) ended during a request: %s", self.remote, self.peer_name,
                     _printable(str(exc), _MAX_LOGGED_DETAIL_CHARS, spaces=True))
            status, code, detail = 400, "client_gone", "the connection ended during the request"
        elif status == 504:
            log.warning("a request from %s (peer %s) timed out in its handler", self.remote, self.peer_name)
            code, detail = "handler_timeout", "the central did not finish this request in time; retry"
        else:
            log.error("internal error answering %s (peer %s)", self.remote, self.peer_name, exc_info=exc)
            status, code = 500, "internal_error"
            detail = "the central failed to handle this request; it was logged"
        response = json_refusal(status, code, detail, headers={"Tus-Resumable": TUS_RESUMABLE})
        response.force_close()
        return response

    # -- the deadline ----------------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._head_end_seen = False
        self._scan_tail = b""
        self._graced = False
        self._deadline = self._event_loop.call_later(self._head_timeout_s, self._head_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_deadline(self) -> None:
        self._deadline = None
        if self._in_request or self.transport is None:
            return
        if self._head_end_seen and not self._graced:
            # A head ended on the wire just now and is on its way to the application (Expect handling,
            # routing): let it arrive. Only once: a client cannot keep a connection by sending blank lines.
            self._graced = True
            self._head_end_seen = False
            self._deadline = self._event_loop.call_later(_HEAD_GRACE_S, self._head_deadline)
            return
        if self._head_bytes == 0 and self._served:
            log.debug("closing the idle keep-alive connection from %s (peer %s) after %g s", self.remote,
                      self.peer_name, self._head_timeout_s)
        elif self._head_bytes == 0:
            log.info("closing the connection from %s (peer %s): no request within %g s of connecting",
                     self.remote, self.peer_name, self._head_timeout_s)
        else:
            log.warning("closing the connection from %s (peer %s): its request head was still incomplete "
                        "after %g s (%d bytes received): a stalled or deliberately slow client",
                        self.remote, self.peer_name, self._head_timeout_s, self._head_bytes)
        self.force_close()


def answered_status(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """What was answered; 499 (nginx's convention) when the client went away before the answer."""
    return 499 if request.get(CLIENT_GONE) else response.status


class CentralAccessLogger(AbstractAccessLogger):
    """One JSON object per request, on one line; no query strings, no headers, no bodies, no raw paths.

    Members: ``time`` (UTC, ISO 8601, when the answer was finished), ``request_id`` (also sent as
    ``X-Request-Id``), ``remote`` (the peer's address), ``principal`` (``OU:CN`` of the client
    certificate, ``station:st-0001`` or ``auditor:auditor-1``; ``-`` without one), ``method``, ``route``
    (the route template, ``/v1/items/{item}``: item and station ids are in the index's access log of
    every read, not here; ``unmatched`` when no route matched), ``status`` (499 when the client went
    away before the answer), ``bytes_in`` (request body bytes received), ``bytes_out`` (response bytes
    written, headers included) and ``duration_ms`` (request head to end of the answer). The same members
    are attached to the record as structured fields (``extra["edge_fields"]``), for the journal.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        protocol = request.protocol
        name = getattr(protocol, "peer_name", "-")
        role = getattr(protocol, "peer_role", "-")
        fields: dict[str, object] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": request.get(REQUEST_ID, "-"),
            "remote": getattr(protocol, "remote", "-"),
            "principal": f"{role}:{name}" if name != "-" else "-",
            "method": _printable(request.method, 16),
            "route": _printable(route_template(request), _MAX_LOGGED_PATH_CHARS),
            "status": answered_status(request, response),
            "bytes_in": int(getattr(request.content, "total_bytes", 0)),
            "bytes_out": int(response.body_length),
            "duration_ms": round(time * 1000.0, 1),
        }
        self.logger.info("%s", json.dumps(fields, ensure_ascii=True, separators=(",", ":")),
                         extra={"edge_fields": fields})


def _is_tus_path(path: str, tus_prefix: str) -> bool:
    return path == tus_prefix or path.startswith(tus_prefix + "/")


def _transfer_coding_refusal(request: web.Request) -> web.Response | None:
    values = request.headers.getall("Transfer-Encoding", [])
    if not values or [value.strip().lower() for value in values] == ["chunked"]:
        return None
    shown = _printable(", ".join(values), 80, spaces=True)
    log.warning("%s %s from %s refused: Transfer-Encoding %s", request.method,
                _printable(request.path, _MAX_LOGGED_PATH_CHARS), request.remote, shown)
    response = json_refusal(
        501,
        "unsupported_transfer_coding",
        f"Transfer-Encoding: only chunked is accepted, and nothing is decoded; got {shown}",
    )
    response.force_close()
    return response


def request_middleware(limiter: RequestLimiter, budget: BodyBudget) -> Middleware:
    """The outermost middleware: request id, head deadline, transfer codings, the request limit, and the
    release of the body bytes a handler held in ``budget`` (see :meth:`BodyBudget.hold`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = secrets.token_hex(8)
        protocol = request.protocol
        if isinstance(protocol, CentralProtocol):
            protocol.request_started()
        refusal = _transfer_coding_refusal(request)
        if refusal is not None:
            return refusal
        if not limiter.try_enter():
            log.warning("%s %s from %s refused: %d requests in progress, the configured maximum",
                        request.method, _printable(request.path, _MAX_LOGGED_PATH_CHARS), request.remote,
                        limiter.max_requests)
            busy = json_refusal(
                503, "server_busy",
                f"the central is handling {limiter.max_requests} requests, its configured maximum; retry "
                f"after {limiter.retry_after_s} s",
                headers={"Retry-After": str(limiter.retry_after_s)},
            )
            if request.body_exists and not request.content.is_eof():
                busy.force_close()  # the body is not wanted; do not linger reading it
            return busy
        try:
            return await handler(request)
        finally:
            limiter.leave()
            budget.release(request.pop(_BODY_HELD, 0))

    return middleware


def add_response_headers(tus_prefix: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: ``X-Request-Id`` everywhere, ``Tus-Resumable`` on tus paths (tus
    1.0 requires it on every response; OPTIONS answers carry it too, which the protocol allows)."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        request_id = request.get(REQUEST_ID)
        if request_id is None:
            # An answer given before the middleware ran (an Expect: 100-continue refusal): it is the
            # central's too, and a station tells the central's busy from a proxy's by this header
            # (edge.uplink.central_calls.is_central_error_answer).
            request_id = request[REQUEST_ID] = secrets.token_hex(8)
        response.headers.setdefault("X-Request-Id", request_id)
        if _is_tus_path(request.path, tus_prefix):
            response.headers.setdefault("Tus-Resumable", TUS_RESUMABLE)

    return hook


async def listen(
    runner: web.AppRunner,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    head_timeout_s: float,
    access_log: bool,
    metrics: CentralMetrics | None = None,
    console_listener: bool = False,
) -> asyncio.Server:
    """Serve ``runner``'s application on ``host:port`` with :class:`CentralProtocol` connections.

    Stop with ``server.close()`` and then ``runner.cleanup()`` (which ends the connections)."""
    manager = runner.server
    if manager is None:
        raise RuntimeError("call runner.setup() before listen()")
    loop = asyncio.get_running_loop()
    access_logger = logging.getLogger(ACCESS_LOGGER) if access_log else None

    def connection() -> CentralProtocol:
        return CentralProtocol(
            manager,
            loop=loop,
            head_timeout_s=head_timeout_s,
            metrics=metrics,
            console_listener=console_listener,
            # aiohttp's own idle timer stays behind ours, as a backstop that never fires first.
            keepalive_timeout=head_timeout_s + _HEAD_GRACE_S + 1.0,
            access_log_class=CentralAccessLogger,
            access_log=access_logger,
        )

    return await loop.create_server(
        connection,
        host,
        port,
        ssl=ssl_context,
        ssl_handshake_timeout=head_timeout_s if ssl_context is not None else None,
        reuse_address=True,
    )
