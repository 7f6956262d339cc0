"""Requests that carry a chunk's body, sent over a blocking socket in a worker thread.

Why: asyncio's TLS transport (memory BIOs, a copy of every byte into and out of the SSL object,
aiohttp's writer) costs the station about 0.45 to 0.9 CPU s per GiB more than a blocking
``ssl.SSLSocket`` writing the same pieces (measured: 1.04 against 0.60 CPU s per GiB without hashing,
512 MiB over TLS on loopback; curl 0.62). So the tus client's PATCH bodies and the first chunk of a
creation-with-upload POST go through here; its bodiless requests (HEAD, DELETE, a plain POST) stay
on aiohttp.

What it keeps of the aiohttp path:

- the same TLS: the very ``ssl.SSLContext`` object the aiohttp connector uses (mutual TLS with the
  enrollment bundle, the central's CA, the server's name checked, SNI), or plain HTTP for ``http://``;
- the caller's headers, with ``Host`` and ``Content-Length`` set here from the URL and the body;
- the rate limit: ``pace(n)`` (the station-wide limiter's ``acquire``) runs on the event loop for each
  piece, and the thread blocks on its outcome (no busy wait); waiting for it is not a stall;
- the deadlines: connecting and the TLS handshake within ``timeout_s`` each, each piece of the body
  (256 KiB) accepted by the socket within ``timeout_s`` (a body that stops moving fails, a slow one
  does not), and the whole answer within ``timeout_s`` of the body's end (the loop shuts the socket
  down when it passes, so a server dripping its answer a byte at a time cannot hold the request);
- cancellation: the loop shuts the socket down (the kernel refuses every later write of the thread),
  cancels a pending ``pace``, and waits for the thread to finish before the cancellation goes on;
- interim answers: every 1xx but 101 is skipped, as aiohttp does and RFC 9110 15.2 requires (``http.client``
  alone skips only 100), before and after the body's end; at most :data:`MAX_INTERIM_ANSWERS` of them,
  and all within the answer's deadline;
- an early answer (a final answer sent before the body ended: a refusal) stops the body and is read, as
  aiohttp reads the answer while it writes; an interim answer during the body does not stop it;
- keep-alive: a connection is kept for the next request to the same origin only when its exchange ended
  without doubt: the whole body sent, an HTTP/1.1 final answer read to its end with unambiguous framing
  (at most one ``Content-Length``, no ``Transfer-Encoding`` but a lone ``chunked``, not both), no ``close``
  in any ``Connection`` header, not a 101, nothing after the answer. One the server closed or wrote to
  while idle is discarded; at most ``max_connections`` to the central at once, in flight or idle.

Every byte of the answer is hostile until checked: status lines and headers are parsed by ``http.client``
(a line at most 64 KiB, at most 100 headers in a head), and the heads of one exchange (interim answers and
the final one) are read line by line against :data:`MAX_ANSWER_HEAD_BYTES` in all: reading stops at the
first line past it (at most one more line of 64 KiB is read). At most
:data:`~edge.uplink.tus_answer.MAX_ANSWER_BODY_BYTES` of the body is read (a longer body costs the
connection, not memory). Failures are the wire's own exceptions (``OSError``, ``ssl.SSLError``,
``TimeoutError``, ``http.client.HTTPException``) for the caller to map.

Not interruptible: resolving the central's name (``getaddrinfo`` in the worker thread). A cancellation
during it waits for the resolver, bounded by the resolver's own timeout (resolv.conf ``timeout`` and
``attempts``: 5 s and 2 by default, per name server); the request then ends before connecting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import io
import logging
import re
import select
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final, cast

from yarl import URL

from edge.uplink.tus_answer import MAX_ANSWER_BODY_BYTES, HeaderList, TusAnswer

__all__ = [
    "MAX_ANSWER_HEAD_BYTES",
    "MAX_INTERIM_ANSWERS",
    "PIECE_BYTES",
    "AnswerTooLarge",
    "BlockingBodySender",
    "TooManyInterimAnswers",
    "TruncatedAnswer",
]

log = logging.getLogger(__name__)

PIECE_BYTES: Final = 256 * 1024
"""Bytes written (and paced) at a time: the unit of the stall deadline and the rate limit."""
MAX_ANSWER_HEAD_BYTES: Final = 64 * 1024
"""Bytes of status lines and headers of one exchange, interim answers included."""
MAX_INTERIM_ANSWERS: Final = 16
"""Interim (1xx) answers skipped before the final one; more is a hostile server (or proxy)."""
_EARLY_READ_BYTES: Final = 64 * 1024
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_FIELD_VALUE_RE: Final = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, space and tab: no CR, LF, NUL
_SET_HERE: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})

Pace = Callable[[int], Awaitable[None]]
_Origin = tuple[str, str, int]


class AnswerTooLarge(http.client.HTTPException):
    """The answer's heads are larger than :data:`MAX_ANSWER_HEAD_BYTES` in all."""


class TooManyInterimAnswers(http.client.HTTPException):
    """More than :data:`MAX_INTERIM_ANSWERS` interim (1xx) answers before the final one."""


class TruncatedAnswer(http.client.HTTPException):
    """The connection ended inside the answer's status line or headers."""


class _Aborted(ConnectionAbortedError):
    """The loop ended the exchange (cancelled, or its answer deadline passed)."""


class BlockingBodySender:
    """Blocking HTTP/1.1 connections to the central for requests with a body, each run in a worker
    thread of its own pool. Use as an async context manager (``aclose`` ends every connection).

    ``ssl_context`` is required for ``https://`` URLs and is used as given (never loosened);
    ``max_connections`` bounds the connections, in flight or idle, and the worker threads."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="tus-body")
        self._idle: dict[_Origin, list[socket.socket]] = {}
        self._in_flight: set[_Exchange] = set()
        self._closed = False
        self._threads_busy = 0
        self._busy_lock = threading.Lock()
        self.connections_made = 0
        """Connections opened so far (keep-alive shows as fewer connections than requests)."""

    @property
    def threads_busy(self) -> int:
        """Worker threads in an exchange right now (0 once every ``send`` has returned or raised, also
        a cancelled one: its thread is done before the cancellation goes on)."""
        with self._busy_lock:
            return self._threads_busy

    def __repr__(self) -> str:
        idle = sum(len(socks) for socks in self._idle.values())
        return f"BlockingBodySender(tls={self._ssl_context is not None}, idle={idle})"

    async def __aenter__(self) -> BlockingBodySender:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Abort what is in flight, close the idle connections, let the worker threads go."""
        self._closed = True
        for exchange in list(self._in_flight):
            exchange.abort()
        for socks in self._idle.values():
            for sock in socks:
                sock.close()
        self._idle.clear()
        self._executor.shutdown(wait=False)

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | bytearray | memoryview,
        *,
        timeout_s: float,
        pace: Pace | None = None,
        count_sent: Callable[[int], None] | None = None,
    ) -> TusAnswer:
        """Send ``method url`` with ``body`` and return the answer. ``count_sent(n)`` is called once,
        when the exchange is over (also when it failed), with the body bytes handed to the socket."""
        if self._closed:
            raise RuntimeError("the blocking body sender is closed")
        target = URL(url)
        origin = _origin(target)
        if origin[0] == "https" and self._ssl_context is None:
            raise ValueError("an https:// URL needs the central's TLS context")
        head = _request_head(method, target, headers, len(body))
        loop = asyncio.get_running_loop()
        async with self._slots:
            reused = self._take_idle(origin)
            exchange = _Exchange(
                loop=loop,
                origin=origin,
                context=self._ssl_context if origin[0] == "https" else None,
                method=method,
                head=head,
                body=body,
                timeout_s=timeout_s,
                pace=pace,
                reused=reused,
            )
            if reused is None:
                self.connections_made += 1
            answer_deadline: asyncio.TimerHandle | None = None
            finished = False

            def start_answer_deadline() -> None:  # called from the thread, run on the loop
                nonlocal answer_deadline
                if not finished:
                    answer_deadline = loop.call_later(timeout_s, exchange.expire)

            exchange.on_body_sent = start_answer_deadline
            self._in_flight.add(exchange)
            work = loop.run_in_executor(self._executor, self._run, exchange)
            try:
                answer, kept = await asyncio.shield(work)
            except asyncio.CancelledError:
                exchange.abort()
                await _wait_for_thread(work)
                raise
            finally:
                finished = True
                if answer_deadline is not None:
                    answer_deadline.cancel()
                # The closure refers to the exchange, which holds the chunk: no cycle may keep 8 MiB
                # buffers for the cyclic collector.
                exchange.on_body_sent = None
                self._in_flight.discard(exchange)
                if count_sent is not None:
                    count_sent(exchange.bytes_sent)
            if kept is not None:
                if self._closed:
                    kept.close()
                else:
                    self._idle.setdefault(origin, []).append(kept)
            return answer

    def _run(self, exchange: _Exchange) -> tuple[TusAnswer, socket.socket | None]:
        with self._busy_lock:
            self._threads_busy += 1
        try:
            return exchange.run()
        finally:
            with self._busy_lock:
                self._threads_busy -= 1

    def _take_idle(self, origin: _Origin) -> socket.socket | None:
        socks = self._idle.get(origin, [])
        while socks:
            sock = socks.pop()
            if _still_idle(sock):
                return sock
            log.debug("a kept connection to %s:%d was closed or spoken on by the server", *origin[1:])
            sock.close()
        return None


async def _wait_for_thread(work: asyncio.Future[tuple[TusAnswer, socket.socket | None]]) -> None:
    """Wait until the worker thread is done with an aborted exchange (prompt: its socket is shut down),
    and consume its outcome. If this wait is cancelled too, the outcome is consumed when it comes."""

    def consume(done: asyncio.Future[tuple[TusAnswer, socket.socket | None]]) -> None:
        if not done.cancelled() and done.exception() is None:
            _answer, kept = done.result()
            if kept is not None:
                kept.close()

    work.add_done_callback(consume)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({work})


def _origin(url: URL) -> _Origin:
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise ValueError("expected an absolute http(s) URL")
    return url.scheme, url.raw_host, url.port


def _request_head(method: str, url: URL, headers: Mapping[str, str], length: int) -> bytes:
    """The request line and headers. Names must be tokens and values visible ASCII: a header that is
    not is refused by its name only (a value may be a secret)."""
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    target = url.raw_path_qs or "/"
    if not _FIELD_VALUE_RE.fullmatch(target) or " " in target or "\t" in target:
        raise ValueError("the request target has characters HTTP does not allow")
    # As aiohttp writes it: an IPv6 literal in brackets, no default port, no trailing dot of an absolute name.
    host = url.host_port_subcomponent or ""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"not an HTTP header name: {name[:40]!r}")
        if not _FIELD_VALUE_RE.fullmatch(value):
            raise ValueError(f"the value of header {name} has characters HTTP does not allow")
        if name.lower() not in _SET_HERE:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _still_idle(sock: socket.socket) -> bool:
    """A kept connection is usable when the server has said nothing since its last answer: a readable
    socket means it closed (idle timeout) or sent what no request asked for."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


class _Exchange:
    """One request and its answer, run by :meth:`run` in a worker thread. :meth:`abort` and
    :meth:`expire` come from the event loop; the lock orders them with the thread taking, wrapping and
    giving up its socket, so the loop never shuts down a descriptor the thread has let go (a number the
    process may already have given to another socket)."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        origin: _Origin,
        context: ssl.SSLContext | None,
        method: str,
        head: bytes,
        body: bytes | bytearray | memoryview,
        timeout_s: float,
        pace: Pace | None,
        reused: socket.socket | None,
    ) -> None:
        self._loop = loop
        self._origin = origin
        self._context = context
        self._method = method
        self._head = head
        self._body = body
        self._timeout_s = timeout_s
        self._pace = pace
        self._reused = reused
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pacing: concurrent.futures.Future[None] | None = None
        self._aborted = False
        self._expired = False
        self._early = b""  # answer bytes read before the body's end
        self.bytes_sent = 0
        self.on_body_sent: Callable[[], None] | None = None

    # ------------------------------------------------------------------------------- from the loop

    def abort(self) -> None:
        """End the exchange now: no byte leaves after this returns (the socket is shut down)."""
        with self._lock:
            self._aborted = True
            if self._pacing is not None:
                self._pacing.cancel()
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown: SSLSocket.shutdown would also drop the SSL object
                    # under the thread's feet.
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def expire(self) -> None:
        """The answer's deadline passed."""
        self._expired = True
        self.abort()

    # ------------------------------------------------------------------------------ in the thread

    def run(self) -> tuple[TusAnswer, socket.socket | None]:
        """(the answer, the connection to keep or None)."""
        try:
            return self._exchange()
        finally:
            # The chunk's buffer is the caller's again, to reuse (edge.uplink.chunk_buffers): nothing here
            # keeps a view of it (the body's views in _send_body are released when it returns).
            self._body = b""

    def _exchange(self) -> tuple[TusAnswer, socket.socket | None]:
        try:
            sock = self._reuse() if self._reused is not None else self._connect()
            sock.sendall(self._head)
            whole_body = self._send_body(sock)
            if self.on_body_sent is not None:
                self._loop.call_soon_threadsafe(self.on_body_sent)
            answer, reusable = self._read_answer(sock)
        except BaseException as exc:
            self._let_go()
            if self._expired:
                raise TimeoutError(f"no complete answer within {self._timeout_s:g} s of the body") from exc
            raise
        with self._lock:
            kept = self._sock if reusable and whole_body and not self._aborted else None
            if kept is not None:
                self._sock = None  # the sender's now: no abort of this exchange may touch it
        if kept is None:
            self._let_go()
        return answer, kept

    def _let_go(self) -> None:
        """Close the socket this exchange holds (the thread's own close, after the loop can no longer
        reach it)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _hold(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                sock.close()
                raise _Aborted("the request was cancelled")
            self._sock = sock

    def _reuse(self) -> socket.socket:
        assert self._reused is not None
        self._reused.settimeout(self._timeout_s)
        self._hold(self._reused)
        return self._reused

    def _connect(self) -> socket.socket:
        _scheme, host, port = self._origin
        last_error: OSError | None = None
        for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            raw = socket.socket(family, kind, proto)
            self._hold(raw)
            try:
                raw.settimeout(self._timeout_s)
                raw.connect(address)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                last_error = exc
                self._let_go()
                if self._aborted:
                    raise
                continue
            if self._context is None:
                return raw
            with self._lock:
                if self._aborted:
                    self._sock = None
                    raw.close()
                    raise _Aborted("the request was cancelled")
                # wrap_socket moves the descriptor into the SSLSocket: hold that one from here on.
                tls = self._context.wrap_socket(
                    raw, server_hostname=_tls_server_name(host), do_handshake_on_connect=False
                )
                self._sock = tls
            tls.do_handshake()  # bounded by the timeout as a whole, not per record
            return tls
        raise last_error if last_error is not None else OSError(f"no address for {host}")

    def _send_body(self, sock: socket.socket) -> bool:
        """Write the body piece by piece; False when the server answered before its end."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        with memoryview(self._body) as view:
            for start in range(0, len(view), PIECE_BYTES):
                piece = view[start : start + PIECE_BYTES]
                if self._pace is not None:
                    self._wait_for_pace(len(piece))
                if self._answered_early(sock, poller):
                    log.debug("the server answered before the body's end (%d bytes sent)", start)
                    return False
                if self._aborted:
                    raise _Aborted("the request was cancelled")
                self.bytes_sent += len(piece)
                sock.sendall(piece)
        return True

    def _wait_for_pace(self, n: int) -> None:
        assert self._pace is not None
        with self._lock:
            if self._aborted:
                raise _Aborted("the request was cancelled")
            self._pacing = asyncio.run_coroutine_threadsafe(_pace_on_loop(self._pace, n), self._loop)
        try:
            self._pacing.result()
        except concurrent.futures.CancelledError:
            raise _Aborted("the request was cancelled") from None
        finally:
            with self._lock:
                self._pacing = None

    def _answered_early(self, sock: socket.socket, poller: select.poll) -> bool:
        """Whether the server answered before the body's end: a final answer (an early refusal), bytes
        that are no interim answer, or its end of the connection. Interim answers (a 100 Continue nobody
        asked for, a 102) are not, nor is a TLS record without application data (a TLS 1.3 session
        ticket). What was read is kept for the answer's reader, which skips the interim answers."""
        if not poller.poll(0) and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        sock.settimeout(0.0)
        try:
            data = sock.recv(_EARLY_READ_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        finally:
            sock.settimeout(self._timeout_s)
        if not data:
            return True  # the server ended its side
        self._early += data
        return not _only_interim(self._early)

    def _read_answer(self, sock: socket.socket) -> tuple[TusAnswer, bool]:
        """(the answer, whether the connection may carry another request)."""
        source = _AnswerSource(self._early, sock, self._timeout_s)
        try:
            response = self._final_head(source)
            pairs = response.msg.items()
            body, whole = self._read_body(response)
            # Bytes after the answer are nothing any request asked for: the connection goes.
            reusable = whole and _may_carry_another(response) and not source.file.has_more()
            response.close()
        finally:
            source.file.close_for_good()
        with self._lock:
            if self._aborted:
                # The loop shut the socket down while the answer came: what came is not the answer.
                if self._expired:
                    raise TimeoutError(f"no complete answer within {self._timeout_s:g} s of the body")
                raise _Aborted("the request was cancelled")
        return TusAnswer(response.status, HeaderList(pairs), body), reusable

    def _final_head(self, source: _AnswerSource) -> http.client.HTTPResponse:
        """The final answer's status line and headers, past every interim answer (``http.client`` skips
        a 100 itself, the others here; the answer file counts them all and their bytes)."""
        while True:
            response = http.client.HTTPResponse(cast(socket.socket, source), method=self._method)
            response.begin()
            if source.stream.ended:
                # A complete head ends with an empty line, read without asking for more: the connection
                # ended inside it (a truncated "Upload-Offset: 12" must not pass for an offset).
                raise TruncatedAnswer("the connection ended inside the answer's headers")
            if not _is_interim(response.status):
                source.file.heads_done()
                return response
            log.debug("skipped an interim answer (%d)", response.status)
            response.close()  # no body: the next head follows on the same file

    def _read_body(self, response: http.client.HTTPResponse) -> tuple[bytes, bool]:
        """At most MAX_ANSWER_BODY_BYTES of the body, and whether that was all of it. A body that fails
        midway is cut there: the status is the message (unless the answer's deadline passed)."""
        try:
            body = response.read(MAX_ANSWER_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException):
            if self._expired:
                raise
            return b"", False
        if len(body) > MAX_ANSWER_BODY_BYTES:
            return body[:MAX_ANSWER_BODY_BYTES], False
        return body, response.isclosed()


async def _pace_on_loop(pace: Pace, n: int) -> None:
    await pace(n)  # called here, on the loop: the limiter is the loop's


def _tls_server_name(host: str) -> str:
    """The name the certificate is checked against: an absolute name's trailing dot dropped, as aiohttp
    drops it (certificates name hosts without it)."""
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


# ----------------------------------------------------------------------------------- interim answers


def _is_interim(status: int) -> bool:
    """RFC 9110 15.2: a 1xx precedes the final answer. A 101 (switching protocols, which no request here
    asks for) is final, as aiohttp takes it: the connection speaks something else after it."""
    return 100 <= status < 200 and status != 101


def _status_of(line: bytes) -> int | None:
    """The status of a complete status line as ``http.client`` reads it, None when it reads none."""
    parts = line.decode("iso-8859-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        return None
    try:
        status = int(parts[1])
    except ValueError:
        return None
    return status if 100 <= status <= 999 else None


_FINAL_STATUS_START_RE: Final = re.compile(rb"HTTP/\d\.\d +[2-9]")


def _only_interim(early: bytes) -> bool:
    """Whether what the server sent before the body's end is interim answers only (the last one maybe
    still arriving). Anything else stops the body and goes to the answer's reader, which names it: a
    final answer, bytes that are no HTTP, more interim answers or bytes than the reader takes."""
    if len(early) > MAX_ANSWER_HEAD_BYTES:
        return False
    heads = 0
    at = 0
    while at < len(early):
        heads += 1
        if heads > MAX_INTERIM_ANSWERS:
            return False
        line_end = early.find(b"\n", at) + 1
        if line_end == 0:  # a status line still arriving: undecided unless it already cannot be interim
            partial = early[at:]
            return partial.startswith(b"HTTP/"[: len(partial)]) and not _FINAL_STATUS_START_RE.match(partial)
        status = _status_of(early[at:line_end])
        if status is None or not _is_interim(status):
            return False
        at = _end_of_head(early, line_end)
        if at < 0:
            return True  # the rest of this interim answer's headers is still coming
    return True


def _end_of_head(data: bytes, at: int) -> int:
    """Where the head whose header lines start at ``at`` ends (after its empty line), -1 if not yet."""
    while True:
        line_end = data.find(b"\n", at) + 1
        if line_end == 0:
            return -1
        if data[at:line_end] in (b"\r\n", b"\n"):
            return line_end
        at = line_end


# ---------------------------------------------------------------------------------------- keep-alive


def _may_carry_another(response: http.client.HTTPResponse) -> bool:
    """Whether the final answer leaves no doubt where it ended, so that the next answer on the connection
    is the next request's (else a request could read its predecessor's answer as its own)."""
    msg = response.msg
    if response.version != 11 or response.status == 101 or response.will_close:
        return False
    # http.client reads the first Connection header only: a close in another one counts too.
    for value in msg.get_all("connection") or []:
        if any(token.strip().lower() == "close" for token in value.split(",")):
            return False
    encodings = msg.get_all("transfer-encoding") or []
    lengths = msg.get_all("content-length") or []
    if encodings and (lengths or len(encodings) > 1 or encodings[0].strip().lower() != "chunked"):
        return False
    return len(lengths) <= 1 and all(length.strip().isdigit() for length in lengths)


class _AnswerSource:
    """What ``http.client.HTTPResponse`` reads the answer from (its ``makefile``): the bytes read early,
    then the socket."""

    def __init__(self, early: bytes, sock: socket.socket, timeout_s: float) -> None:
        self.stream = _AnswerStream(early, sock, timeout_s)
        self.file = _AnswerFile(self.stream)

    def makefile(self, mode: str) -> _AnswerFile:
        return self.file


class _AnswerFile(io.BufferedReader):
    """The buffered answer. ``HTTPResponse`` closes it when the answer ends; it stays open (the socket is
    not its to close) so that the exchange can ask whether anything followed the answer.

    Until :meth:`heads_done` it counts the lines ``http.client`` reads (status lines and headers, of the
    interim answers and the final one): more than :data:`MAX_ANSWER_HEAD_BYTES` of them, or more status
    lines than :data:`MAX_INTERIM_ANSWERS` interim ones and the final one, end the answer."""

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__(raw)
        self._in_heads = True
        self._head_bytes = 0
        self._status_lines = 0
        self._next_is_status_line = True

    def readline(self, size: int | None = -1, /) -> bytes:
        if not self._in_heads:
            return super().readline(size)
        if self._head_bytes > MAX_ANSWER_HEAD_BYTES:
            # Checked before the next line rather than after this one: a line over http.client's own
            # bound is its LineTooLong.
            raise AnswerTooLarge(f"the answer's headers are larger than {MAX_ANSWER_HEAD_BYTES} bytes")
        if self._next_is_status_line:
            self._status_lines += 1
            if self._status_lines > MAX_INTERIM_ANSWERS + 1:
                raise TooManyInterimAnswers(f"more than {MAX_INTERIM_ANSWERS} interim answers")
        line = super().readline(size)
        self._head_bytes += len(line)
        self._next_is_status_line = line in (b"\r\n", b"\n")
        return line

    def heads_done(self) -> None:
        """The final answer's head is read: what follows is its body."""
        if self._head_bytes > MAX_ANSWER_HEAD_BYTES:
            raise AnswerTooLarge(f"the answer's headers are larger than {MAX_ANSWER_HEAD_BYTES} bytes")
        self._in_heads = False

    def close(self) -> None:
        pass

    def close_for_good(self) -> None:
        super().close()

    def has_more(self) -> bool:
        """Bytes after the answer, in the buffer or on the socket (looked at without waiting)."""
        self.stream.wait = False
        try:
            return bool(self.peek(1)) or self.stream.ended
        except OSError:
            return True  # the connection broke after the answer: not to be kept either
        finally:
            self.stream.wait = True

    @property
    def stream(self) -> _AnswerStream:
        return cast(_AnswerStream, self.raw)


class _AnswerStream(io.RawIOBase):
    def __init__(self, early: bytes, sock: socket.socket, timeout_s: float) -> None:
        super().__init__()
        self._early = early
        self._sock = sock
        self._timeout_s = timeout_s
        self.wait = True
        self.ended = False  # the connection ended (a read returned nothing)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        if self._early:
            n = min(len(buffer), len(self._early))
            buffer[:n] = self._early[:n]
            self._early = self._early[n:]
            return n
        if not self.wait:
            return self._read_if_there(buffer)
        n = self._sock.recv_into(buffer)
        self.ended = self.ended or n == 0
        return n

    def _read_if_there(self, buffer: memoryview) -> int | None:
        """None (nothing yet) rather than waiting: BufferedReader's contract for a non-blocking stream."""
        self._sock.settimeout(0.0)
        try:
            n = self._sock.recv_into(buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        finally:
            self._sock.settimeout(self._timeout_s)
        self.ended = self.ended or n == 0
        return n
