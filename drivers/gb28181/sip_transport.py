"""The SIP transport of a GB/T 28181 platform: UDP and TCP on one port, transactions, dialogs routing.

`SipTransport` listens on one address for UDP datagrams and TCP connections (GB/T 28181-2016 section
4.3.2: both), parses with `drivers.gb28181.sip`, and hands each new request to a handler together with
the `Peer` it came from: the source address (and transport) a platform must send later requests to,
never the Contact host (4G devices put private addresses there).

Server transactions (RFC 3261 section 17.2): a retransmitted request, matched by its source address and
its top Via branch and sent-by (or by Call-ID, From tag, CSeq and Via for pre-RFC 3261 peers), gets the
same response again without running the handler a second time; while the handler still runs it is
absorbed (an INVITE gets `100 Trying` at once, which is what a retransmission gets then), and so it is
while a handler that returned None has not yet answered with `send_response()` (for at most the handler
timeout). The source address is part of the match so that a host that predicts a device's branch cannot
get the device's own request absorbed into its forgery. Requests being handled are bounded
(`max_server_transactions`, beyond it 503); answered ones are remembered for 64*T1 (Timer J) apart from
them, bounded too, the oldest forgotten first: they never make a new request fail.

On receipt the top Via gets `received` (when the sent-by host differs from the source) and `rport` filled in
(RFC 3581), so responses built with `sip.response_to()` carry them; responses go back to the source address,
or over the connection the request came on. A UDP request whose body is refused (a wrong `Content-Length`,
an oversized body) is answered 400/413 naming the problem when its headers are readable; other garbage is
dropped and logged, and a TCP stream that goes out of step is closed.

Client transactions (section 17.1): `request()` adds the platform's Via (with a fresh branch and
`rport`), sends, retransmits over UDP from T1 doubling (capped at T2 for non-INVITE), and returns the
final response or raises `TransactionTimeout` after 64*T1. `sleep` is the clock seam of those timers.
A non-2xx final answer to an INVITE is acknowledged by the transport (same branch) and acknowledged
again when it is retransmitted (Timer D); a 2xx is the dialog's to acknowledge (`send_stateless`), and
its retransmissions, like every response that matches no open transaction, go to
`on_unmatched_response`.
Over TCP the device's own connection is reused when it has one (GB/T 28181 9.1.1 f: keep the TCP
channel and send everything through it), else one is opened.

In-dialog requests (a To tag) are routed by Call-ID and local tag, and the peer's tag (From) when the
dialog was added with `remote_tag`, to the handler registered with `add_dialog()`; a dialog request with
a To tag that matches no dialog gets 481. A MESSAGE without a To tag (devices drop it in MediaStatus) is
routed into the only dialog of its Call-ID when its From tag matches; no other method is routed by
Call-ID alone.

Bounds: TCP connections (in all and per source address, both lowered at start to a quarter of the
process's descriptor limit, RLIMIT_NOFILE, so that idle connections to the SIP port can never take the
descriptors downloads, files and the store need; a newcomer at either bound closes the oldest connection
not proven by an authenticated REGISTER in its way, from its own address at that address's bound, from
any at the total's, and is refused only when all of those are proven), a connection not proven
(`mark_proven`) closed `tcp_unproven_timeout_s` after it opened whatever it sends,
a deadline for a message to complete once started, bytes buffered per connection (the parser's limits)
and over all connections (beyond it the connection holding the most is closed) and unsent to it (a peer
that does not read is disconnected), transactions both ways, running handlers, TCP idle time. Nothing
from the network can make the transport hold more.

Not done yet: CANCEL, the UAS retransmission of a 2xx to an INVITE until its ACK (devices rarely send
the platform an INVITE), IPv6 tested only through the codec, TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from drivers.gb28181.sip import (
    BRANCH_MAGIC_COOKIE,
    DEFAULT_LIMITS,
    REASON_PHRASES,
    Headers,
    SipLimits,
    SipMessage,
    SipProtocolError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    ack_for_non_2xx,
    parse_datagram,
    request_head,
    response_to,
)

log = logging.getLogger(__name__)


class Transport(StrEnum):
    UDP = "UDP"
    TCP = "TCP"


@dataclass(frozen=True)
class Peer:
    """Where a message came from, or where one goes: transport and address."""

    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport.value.lower()}:{self.host}:{self.port}"


@dataclass(frozen=True)
class SipTimers:
    """RFC 3261 timer values (section 17.1.1.1). Tests shrink them or replace `sleep`."""

    t1_s: float = 0.5
    t2_s: float = 4.0

    @property
    def transaction_timeout_s(self) -> float:
        """Timers B and F, and how long completed server transactions are remembered (Timer J)."""
        return 64 * self.t1_s


@dataclass(frozen=True)
class TransportLimits:
    sip: SipLimits = DEFAULT_LIMITS
    max_tcp_connections: int = 1024
    # One source address: 4G recorders behind carrier NAT share addresses, so this is generous; at either
    # bound a newcomer closes the oldest unproven connection in its way (`_make_room_for`).
    max_tcp_connections_per_host: int = 64
    # Requests being handled, or whose handler answers later: beyond it, new requests get 503.
    max_server_transactions: int = 4096
    # Answered requests remembered (Timer J) only to absorb retransmissions; the oldest are forgotten
    # first when there are more, and they never make a new request wait or fail.
    max_answered_server_transactions: int = 8192
    max_client_transactions: int = 1024
    tcp_idle_timeout_s: float = 600.0  # devices keep alive every 60 s by default (section 9.6.1)
    # A connection nobody has vouched for (`mark_proven`: the platform does on an authenticated REGISTER
    # over it; connections we open are proven) is closed this long after it was opened, whatever it sends:
    # a device registers within a second of connecting, and silent or chatty strangers cannot hold
    # descriptors for long (review 22). None: no such bound (a device's side, which the platform connects to).
    tcp_unproven_timeout_s: float | None = 30.0
    # The connections actually allowed are also bounded by the process's descriptor limit (RLIMIT_NOFILE,
    # read at start): at most this share of it, so that media sockets, spool files, ffmpeg's pipes and the
    # store's files always find descriptors whatever the SIP port is sent.
    tcp_share_of_nofile: float = 0.25
    # Once a message has started on a TCP connection it must be complete within this (a peer trickling
    # a byte at a time would otherwise hold its slot and its buffer forever).
    tcp_message_deadline_s: float = 30.0
    # Bytes of unfinished messages held across all TCP connections (each is bounded by `sip` too).
    max_tcp_buffered_bytes: int = 64 * 1024 * 1024
    max_tcp_unsent_bytes: int = 1024 * 1024
    # A handler that does not answer in time gets its request a 500 (devices retransmit for 32 s).
    handler_timeout_s: float = 16.0
    max_udp_datagram_bytes: int = 65507


# Below this many TCP connections the descriptor limit does not lower the budget (a tiny RLIMIT_NOFILE is
# the administrator's to fix; a SIP service needs a few connections to work at all).
MIN_TCP_CONNECTIONS = 8
SHED_LOG_INTERVAL_S = 10.0  # connections refused or closed to make room: one log line at most this often


def _nofile_soft_limit() -> int | None:
    """The process's soft descriptor limit, None when unlimited or unknown."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


class SipTransportError(Exception):
    """The transport could not do what was asked (not a peer's protocol error)."""


class TransactionTimeout(SipTransportError):
    """No final response within 64*T1."""


# A handler answers a request; None means no response (an ACK, or a request it answers itself later).
RequestHandler = Callable[[SipRequest, Peer], Awaitable[SipResponse | None]]
# Gets responses that match no open client transaction: the retransmitted 2xx of an INVITE, which the
# dialog layer answers with its ACK again (RFC 3261 section 13.2.2.4).
UnmatchedResponseHandler = Callable[[SipResponse, Peer], None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _ServerTransaction:
    response: SipResponse | None = None
    expires_at: float = 0.0  # set when the response is: the transaction is remembered until then
    # Set when the handler returned None (it answers later with `send_response`): the transaction keeps
    # absorbing retransmissions until then, or until this deadline (the handler timeout) passes.
    answer_due_by: float | None = None


@dataclass
class _ClientTransaction:
    request: SipRequest  # as sent, with our Via
    destination: Peer
    future: asyncio.Future[SipResponse]
    provisional: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def method(self) -> str:
        return self.request.method


class _Connection:
    """One TCP connection: its parser, writer and reader task."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer, max_unsent_bytes: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.max_unsent_bytes = max_unsent_bytes
        self.task: asyncio.Task[None] | None = None
        self.opened_at = time.monotonic()
        # Vouched for (an authenticated REGISTER came over it, or we opened it): only then is it kept idle up
        # to the idle timeout rather than closed `tcp_unproven_timeout_s` after opening.
        self.proven = False
        self.buffered_bytes = 0  # of an unfinished message, as last counted in the transport's total

    def abort(self) -> None:
        """Close at once, dropping what is unsent (close() would wait for a peer that does not read)."""
        self.writer.transport.abort()

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise SipTransportError(f"TCP connection to {self.peer} is closing")
        # A peer that sends requests but never reads its answers would grow our buffer without end.
        if self.writer.transport.get_write_buffer_size() + len(data) > self.max_unsent_bytes:
            log.warning("SIP TCP connection to %s closed: it does not read what we send", self.peer)
            # abort(), not close(): close() would wait for the unsent bytes to drain, which they never do.
            self.writer.transport.abort()
            raise SipTransportError(f"TCP connection to {self.peer} does not read; closed")
        self.writer.write(data)


def _server_transaction_key(message: SipMessage, peer: Peer) -> tuple[str, ...]:
    """The server transaction a request (or our response to it) belongs to (RFC 3261 section 17.2.3),
    and the source address: a host that predicts a device's branch and sends first with the device's Via
    must not get the device's own request absorbed as a retransmission of its forgery. Over TCP the
    connection's port is part of it too: a retransmission never comes over another connection."""
    via = message.top_via
    cseq = message.cseq
    method = message.method if isinstance(message, SipRequest) else cseq.method
    method = "INVITE" if method == "ACK" else method
    source = (peer.transport.value, peer.host, str(peer.port))
    branch = via.branch or ""
    if branch.startswith(BRANCH_MAGIC_COOKIE):
        return ("3261", *source, branch, via.host.lower(), str(via.port or ""), method)
    # RFC 2543 peers: the request's identity stands in for the branch (the Request-URI is left out so
    # that the response to the request finds it too; the source address and the top Via narrow it).
    return ("2543", *source, message.call_id, message.from_.tag or "", str(cseq.number), method, str(via))


def _stamp_via(req: SipRequest, peer: Peer) -> SipRequest:
    """RFC 3261 section 18.2.1 and RFC 3581: record where the request really came from in its top Via."""
    vias = req.headers.get_all("Via")
    top = req.top_via
    if top.host != peer.host or top.wants_rport:
        top = top.with_param("received", peer.host)
    if top.wants_rport:
        top = top.with_param("rport", str(peer.port))
    fields: list[tuple[str, str]] = [("Via", str(top)), *(("Via", v) for v in vias[1:])]
    fields += [(name, value) for name, value in req.headers if name != "Via"]
    return replace(req, headers=Headers.of(fields))


class SipTransport:
    """UDP and TCP SIP on one listening address. Use as `async with SipTransport(...) as transport:`."""

    def __init__(
        self,
        handler: RequestHandler,
        *,
        host: str = "0.0.0.0",
        port: int = 5060,
        advertised_host: str | None = None,
        limits: TransportLimits | None = None,
        timers: SipTimers | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_unmatched_response: UnmatchedResponseHandler | None = None,
    ) -> None:
        self._handler = handler
        self._on_unmatched_response = on_unmatched_response
        # ACKs of non-2xx INVITE answers, by branch, kept for Timer D to answer retransmitted answers.
        self._sent_acks: OrderedDict[str, tuple[bytes, Peer, float]] = OrderedDict()
        self._host = host
        self._port = port
        self._advertised_host = advertised_host
        self._limits = limits or TransportLimits()
        self._timers = timers or SipTimers()
        self._sleep = sleep
        self._clock = clock
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[None]] = {}
        # Requests whose handler still runs (or answers later), and answered ones in the order they expire.
        self._pending_transactions: dict[tuple[str, ...], _ServerTransaction] = {}
        self._completed_transactions: OrderedDict[tuple[str, ...], _ServerTransaction] = OrderedDict()
        self._tcp_buffered_bytes = 0  # of unfinished messages, over every connection
        self._client_transactions: dict[tuple[str, str], _ClientTransaction] = {}
        # Call-ID → our tag → (the peer's tag when known, handler).
        self._dialogs: dict[str, dict[str, tuple[str | None, RequestHandler]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        # What `start()` derives from the descriptor limit (at most the configured limits).
        self._max_tcp_connections = self._limits.max_tcp_connections
        self._max_tcp_connections_per_host = self._limits.max_tcp_connections_per_host
        self.nofile_soft_limit: int | None = None
        self.connections_shed = 0  # TCP connections refused or closed to make room
        # Of those, newcomers refused because every open connection was proven (none closed for them).
        self.connections_refused_all_proven = 0
        self._shed_logged_at = -float("inf")
        self._shed_unlogged = 0

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SipTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    def local_host_for(self, destination: Peer) -> str:
        """The address we put in Via (and the caller in Contact and SDP) for `destination`: the
        configured public address when there is one (a platform behind NAT, research notes section 12),
        else the address we listen on, else (listening on every address) the one the kernel routes
        `destination` from (over TCP: the connection's own local address)."""
        if self._advertised_host:
            return self._advertised_host
        if self._host not in ("0.0.0.0", "", "::"):
            return self._host
        connection = self._connections.get((destination.host, destination.port))
        if connection is not None:
            return str(connection.writer.get_extra_info("sockname")[0])
        family = socket.AF_INET6 if ":" in destination.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination.host, destination.port))  # no packet is sent: a route lookup
            return str(probe.getsockname()[0])

    @property
    def tcp_connection_budget(self) -> int:
        """TCP connections allowed at once: the configured limit, bounded by the descriptor limit."""
        return self._max_tcp_connections

    @property
    def tcp_connections_per_host(self) -> int:
        return self._max_tcp_connections_per_host

    def _derive_tcp_budget(self) -> None:
        """Bound the TCP connections by the descriptors the process may open (RLIMIT_NOFILE's soft
        limit, read now): a share of it (`tcp_share_of_nofile`), and when that lowers the configured
        bound, one source address a quarter of it. Under systemd's default of 1024 that is 256 (64 from
        one address), so 768 descriptors stay for everything else."""
        soft = _nofile_soft_limit()
        self.nofile_soft_limit = soft
        limits = self._limits
        budget = limits.max_tcp_connections
        if soft is not None:
            budget = min(budget, max(MIN_TCP_CONNECTIONS, int(soft * limits.tcp_share_of_nofile)))
        self._max_tcp_connections = budget
        self._max_tcp_connections_per_host = limits.max_tcp_connections_per_host
        if budget < limits.max_tcp_connections:
            self._max_tcp_connections_per_host = min(self._max_tcp_connections_per_host, max(1, budget // 4))
            log.warning("SIP TCP connections limited to %d (%d from one address): the process may open %s "
                        "descriptors (RLIMIT_NOFILE; the service unit's LimitNOFILE=)", budget,
                        self._max_tcp_connections_per_host, soft)

    async def start(self) -> None:
        """Bind TCP and UDP to the same port (with port 0: a free port both are free on)."""
        loop = asyncio.get_running_loop()
        self._derive_tcp_budget()
        attempts = 20 if self._port == 0 else 1
        for attempt in range(attempts):
            server = await asyncio.start_server(self._accept, self._host, self._port)
            port = server.sockets[0].getsockname()[1]
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self._host, port)
                )
            except OSError:
                server.close()
                await server.wait_closed()
                if attempt == attempts - 1:
                    raise
                continue
            self._tcp_server, self._udp, self._port = server, udp, port
            log.info("SIP transport listening on %s:%d (UDP and TCP)", self._host, port)
            return

    async def close(self) -> None:
        self._closed = True
        if self._tcp_server is not None:
            self._tcp_server.close()
        if self._udp is not None:
            self._udp.close()
        for connection in list(self._connections.values()):
            connection.writer.close()
        for tx in self._client_transactions.values():
            if not tx.future.done():
                tx.future.set_exception(SipTransportError("transport closed"))
        tasks: list[asyncio.Future[Any]] = [*self._tasks, *self._connecting.values()]
        tasks += [c.task for c in self._connections.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------- dialogs

    def add_dialog(
        self, call_id: str, local_tag: str, handler: RequestHandler, *, remote_tag: str | None = None
    ) -> None:
        """Route requests carrying this Call-ID and To tag (our tag) to `handler`; with `remote_tag` (the
        peer's tag, which its requests carry as From tag) only requests with that From tag too."""
        self._dialogs.setdefault(call_id, {})[local_tag] = (remote_tag, handler)

    def remove_dialog(self, call_id: str, local_tag: str) -> None:
        tags = self._dialogs.get(call_id)
        if tags is not None:
            tags.pop(local_tag, None)
            if not tags:
                del self._dialogs[call_id]

    def _handler_for(self, req: SipRequest) -> RequestHandler | None:
        """The dialog's handler, the main handler, or None for a dialog request we have no dialog for."""
        to_tag = req.to.tag
        from_tag = req.from_.tag
        tags = self._dialogs.get(req.call_id)
        if tags:
            if to_tag is not None and to_tag in tags:
                remote_tag, handler = tags[to_tag]
                if remote_tag is None or remote_tag == from_tag:
                    return handler
                return None  # our tag, another peer's: not this dialog (481)
            if to_tag is None and req.method == "MESSAGE" and len(tags) == 1:
                # Some devices drop the To tag in in-dialog MESSAGEs (MediaStatus): Call-ID and the From
                # tag (when the dialog knows it) identify it. Only MESSAGE: a BYE or INFO without a To
                # tag is in no dialog (RFC 3261 12.2.2), and a Call-ID alone must not end a download.
                ((remote_tag, handler),) = tags.values()
                if remote_tag is None or remote_tag == from_tag:
                    return handler
        if to_tag is not None and req.method not in ("ACK", "MESSAGE", "NOTIFY", "REGISTER"):
            return None
        return self._handler

    # -------------------------------------------------------------------------------------- sending

    def _send(self, data: bytes, destination: Peer) -> None:
        if destination.transport is Transport.UDP:
            if self._udp is None:
                raise SipTransportError("transport not started")
            if len(data) > self._limits.max_udp_datagram_bytes:
                raise SipTransportError(f"{len(data)} bytes do not fit a UDP datagram; use TCP")
            self._udp.sendto(data, (destination.host, destination.port))
            return
        connection = self._connections.get((destination.host, destination.port))
        if connection is None:
            raise SipTransportError(f"no TCP connection to {destination}")
        connection.send(data)

    async def _ensure_connection(self, destination: Peer) -> None:
        if destination.transport is not Transport.TCP:
            return
        key = (destination.host, destination.port)
        if key in self._connections:
            return
        # Requests racing to the same device share one connection attempt (a second connection would
        # replace the first, and the answer to what went over the first would be lost).
        attempt = self._connecting.get(key)
        if attempt is None:
            attempt = asyncio.ensure_future(self._connect(destination))
            self._connecting[key] = attempt
            attempt.add_done_callback(lambda _: self._connecting.pop(key, None))
        await asyncio.shield(attempt)

    async def _connect(self, destination: Peer) -> None:
        if len(self._connections) >= self._max_tcp_connections:
            raise SipTransportError(f"{len(self._connections)} TCP connections open, the limit")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(destination.host, destination.port),
                self._timers.transaction_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise SipTransportError(f"cannot connect to {destination}: {exc or 'timed out'}") from exc
        self._adopt(reader, writer, destination).proven = True  # we chose where it goes

    def send_response(self, response: SipResponse, destination: Peer) -> None:
        """Send a response outside the handler's return (e.g. a later final response, `destination`
        being the request's peer). A final one completes the transaction the handler left open by
        returning None: retransmissions of the request get it from then on."""
        data = response.to_bytes()
        with contextlib.suppress(SipProtocolError):
            key = _server_transaction_key(response, destination)
            tx = self._pending_transactions.get(key)
            if tx is not None and tx.answer_due_by is not None:
                tx.response = response
                if response.status >= 200:
                    del self._pending_transactions[key]
                    self._remember_answered(key, tx)
        self._send(data, destination)

    async def send_stateless(self, message: SipMessage, destination: Peer) -> None:
        """Send without a transaction: the ACK of a 2xx, or a message the caller retransmits itself.
        The caller supplies every header, Via included."""
        await self._ensure_connection(destination)
        self._send(message.to_bytes(), destination)

    async def send_ack(self, ack: SipRequest, destination: Peer) -> SipRequest:
        """Send the ACK of a 2xx (a transaction of its own, RFC 3261 13.2.2.4) with a fresh Via and
        return it as sent: when the 2xx is retransmitted (`on_unmatched_response`) the same ACK goes
        again through `send_stateless`."""
        via = self.via_for(destination, self.new_branch())
        sent = replace(ack, headers=ack.headers.prepended("Via", via))
        await self.send_stateless(sent, destination)
        return sent

    def new_branch(self) -> str:
        return BRANCH_MAGIC_COOKIE + os.urandom(10).hex()

    def via_for(self, destination: Peer, branch: str) -> str:
        host = self.local_host_for(destination)
        host = f"[{host}]" if ":" in host else host
        return f"SIP/2.0/{destination.transport.value} {host}:{self._port};rport;branch={branch}"

    async def request(self, req: SipRequest, destination: Peer) -> SipResponse:
        """Run a client transaction: add our Via on top, send, retransmit over UDP per the timers, and
        return the final response. Raises `TransactionTimeout` after 64*T1 without one."""
        if self._closed:
            raise SipTransportError("transport closed")
        if len(self._client_transactions) >= self._limits.max_client_transactions:
            raise SipTransportError(f"{len(self._client_transactions)} client transactions open, the limit")
        branch = self.new_branch()
        via = self.via_for(destination, branch)
        stamped = replace(req, headers=req.headers.prepended("Via", via))
        key = (branch, req.method)
        tx = _ClientTransaction(stamped, destination, asyncio.get_running_loop().create_future())
        self._client_transactions[key] = tx
        try:
            await self._ensure_connection(destination)
            data = stamped.to_bytes()
            self._send(data, destination)
            return await self._await_final(tx, data, destination)
        finally:
            self._client_transactions.pop(key, None)

    async def _await_final(self, tx: _ClientTransaction, data: bytes, destination: Peer) -> SipResponse:
        timers = self._timers
        budget_s = timers.transaction_timeout_s
        elapsed_s = 0.0
        interval_s = timers.t1_s if destination.transport is Transport.UDP else budget_s
        while True:
            wait_s = min(interval_s, budget_s - elapsed_s)
            sleeper = asyncio.ensure_future(self._sleep(wait_s))
            waiters: set[asyncio.Future[Any]] = {tx.future, sleeper}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            if tx.future.done():
                return tx.future.result()
            elapsed_s += wait_s
            if elapsed_s >= budget_s - 1e-9:
                raise TransactionTimeout(f"{tx.method} to {destination}: no final response in {budget_s:g} s")
            if destination.transport is Transport.UDP:
                if tx.method == "INVITE":
                    if not tx.provisional.is_set():  # Timer A: retransmit until a provisional answer
                        self._send(data, destination)
                    interval_s *= 2
                else:  # Timer E: doubling up to T2, T2 at once after a provisional answer
                    self._send(data, destination)
                    interval_s = timers.t2_s if tx.provisional.is_set() else min(interval_s * 2, timers.t2_s)

    # ------------------------------------------------------------------------------------ receiving

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def proven_connections(self) -> int:
        """TCP connections vouched for (`mark_proven`, or opened by us): kept up to the idle timeout."""
        return sum(1 for connection in self._connections.values() if connection.proven)

    @property
    def tcp_buffered_bytes(self) -> int:
        """Bytes of unfinished messages held over all TCP connections (`max_tcp_buffered_bytes`)."""
        return self._tcp_buffered_bytes

    @property
    def open_server_transactions(self) -> int:
        """Requests being handled or awaiting a later answer (what `max_server_transactions` bounds)."""
        return len(self._pending_transactions)

    @property
    def answered_server_transactions(self) -> int:
        """Answered requests remembered for their retransmissions."""
        return len(self._completed_transactions)

    def _purge_server_transactions(self) -> None:
        now = self._clock()
        while self._completed_transactions:
            key, tx = next(iter(self._completed_transactions.items()))
            if tx.expires_at > now:
                break
            del self._completed_transactions[key]
        overdue = [
            key
            for key, tx in self._pending_transactions.items()
            if tx.answer_due_by is not None and tx.answer_due_by <= now
        ]
        for key in overdue:  # the handler said it would answer later, and did not: forgotten
            del self._pending_transactions[key]

    def _remember_answered(self, key: tuple[str, ...], tx: _ServerTransaction) -> None:
        tx.expires_at = self._clock() + self._timers.transaction_timeout_s
        self._completed_transactions[key] = tx
        self._completed_transactions.move_to_end(key)
        # Remembered only to absorb retransmissions: when there are too many, the oldest are forgotten
        # (at worst a very late retransmission runs its handler again) rather than refusing new requests.
        while len(self._completed_transactions) > self._limits.max_answered_server_transactions:
            self._completed_transactions.popitem(last=False)

    def _on_message(self, message: SipMessage, peer: Peer) -> None:
        if isinstance(message, SipResponse):
            self._on_response(message, peer)
        else:
            self._on_request(message, peer)

    def _on_response(self, resp: SipResponse, peer: Peer) -> None:
        try:
            key = (resp.top_via.branch or "", resp.cseq.method)
        except SipProtocolError as exc:
            log.warning("SIP response from %s dropped: %s", peer, exc)
            return
        tx = self._client_transactions.get(key)
        if tx is None or tx.future.done():
            self._on_stray_response(resp, peer, key[0])
            return
        if resp.status < 200:
            tx.provisional.set()
            return
        if tx.method == "INVITE" and resp.status >= 300:
            self._acknowledge(tx, resp)
        tx.future.set_result(resp)

    def _acknowledge(self, tx: _ClientTransaction, resp: SipResponse) -> None:
        """ACK a non-2xx final answer to our INVITE, and keep the ACK for Timer D (RFC 3261 17.1.1)."""
        try:
            ack = ack_for_non_2xx(tx.request, resp).to_bytes()
        except SipProtocolError as exc:
            log.warning("SIP %d from %s cannot be acknowledged: %s", resp.status, tx.destination, exc)
            return
        self._safe_send(ack, tx.destination)
        now = self._clock()
        branch = tx.request.top_via.branch or ""
        self._sent_acks[branch] = (ack, tx.destination, now + self._timers.transaction_timeout_s)
        while self._sent_acks and (
            len(self._sent_acks) > self._limits.max_client_transactions
            or next(iter(self._sent_acks.values()))[2] <= now
        ):
            self._sent_acks.popitem(last=False)

    def _on_stray_response(self, resp: SipResponse, peer: Peer, branch: str) -> None:
        sent_ack = self._sent_acks.get(branch)
        if sent_ack is not None and resp.status >= 300 and sent_ack[2] > self._clock():
            self._safe_send(sent_ack[0], sent_ack[1])  # the answer came again: so does our ACK
            return
        if self._on_unmatched_response is not None:
            try:
                self._on_unmatched_response(resp, peer)
            except Exception:
                log.exception("SIP unmatched-response handler failed for %d from %s", resp.status, peer)
            return
        log.debug("SIP response %d from %s matches no open transaction", resp.status, peer)

    def _on_request(self, req: SipRequest, peer: Peer) -> None:
        try:
            req = _stamp_via(req, peer)
            key = _server_transaction_key(req, peer)
            # A request without From, To, Call-ID or CSeq cannot be answered: it is dropped here.
            _ = (req.from_, req.to, req.call_id, req.cseq)
        except SipProtocolError as exc:
            log.warning("SIP request from %s dropped: %s", peer, exc)
            return
        self._purge_server_transactions()
        existing = self._pending_transactions.get(key) or self._completed_transactions.get(key)
        if req.method == "ACK":
            if existing is not None and (existing.response is None or existing.response.status >= 300):
                return  # the ACK of a non-2xx final response: ends the INVITE server transaction
            if len(self._tasks) >= self._limits.max_server_transactions:
                log.warning("SIP ACK from %s dropped: %d handlers running", peer, len(self._tasks))
                return
            self._spawn(self._run_handler(req, peer, None))  # a 2xx's ACK belongs to the dialog
            return
        if existing is not None:
            if existing.response is not None:
                self._safe_send(existing.response.to_bytes(), peer)
            elif req.method == "INVITE":
                self._safe_send(response_to(req, 100).to_bytes(), peer)
            return  # still being handled: absorbed
        if self.open_server_transactions >= self._limits.max_server_transactions:
            log.warning(
                "SIP %s from %s refused: %d transactions open",
                req.method,
                peer,
                self.open_server_transactions,
            )
            self._safe_send(response_to(req, 503).to_bytes(), peer)
            return
        tx = _ServerTransaction()
        self._pending_transactions[key] = tx
        if req.method == "INVITE":
            self._safe_send(response_to(req, 100).to_bytes(), peer)
        self._spawn(self._run_handler(req, peer, (key, tx)))

    async def _run_handler(
        self, req: SipRequest, peer: Peer, transaction: tuple[tuple[str, ...], _ServerTransaction] | None
    ) -> None:
        try:
            response = await self._answer(req, peer)
        finally:
            if transaction is not None:  # whatever happened, the slot is given back
                self._pending_transactions.pop(transaction[0], None)
        if self._closed:
            return
        if transaction is None:
            return
        key, tx = transaction
        if response is None:
            # The handler answers later (send_response): retransmissions meanwhile are absorbed, not
            # handled again, for as long as a handler may take.
            tx.answer_due_by = self._clock() + self._limits.handler_timeout_s
            self._pending_transactions[key] = tx
            return
        tx.response = response
        self._remember_answered(key, tx)
        self._safe_send(response.to_bytes(), peer)

    async def _answer(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        handler = self._handler_for(req)
        if handler is None:
            return response_to(req, 481)
        try:
            return await asyncio.wait_for(handler(req, peer), self._limits.handler_timeout_s)
        except SipProtocolError as exc:
            log.warning("SIP %s from %s is malformed: %s", req.method, peer, exc)
            reason = f"Bad Request ({exc})"[:120].replace("\r", " ").replace("\n", " ")
            return response_to(req, exc.status or 400, reason=reason)
        except TimeoutError:
            log.error("SIP %s handler for a request from %s did not answer in time", req.method, peer)
            return response_to(req, 500, reason="Server Internal Error (handler timeout)")
        except Exception:
            log.exception("SIP %s handler failed for a request from %s", req.method, peer)
            return response_to(req, 500)

    def _safe_send(self, data: bytes, peer: Peer) -> None:
        try:
            self._send(data, peer)
        except (SipTransportError, OSError) as exc:
            log.warning("SIP send to %s failed: %s", peer, exc)

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        peer = Peer(Transport.UDP, str(addr[0]), int(addr[1]))
        try:
            message = parse_datagram(data, self._limits.sip)
        except SipProtocolError as exc:
            log.warning("SIP datagram from %s refused: %s", peer, exc)
            self._answer_unreadable(data, exc, peer)
            return
        if message is not None:
            self._on_message(message, peer)

    def _answer_unreadable(self, data: bytes, exc: SipProtocolError, peer: Peer) -> None:
        """Answer a request whose body was refused, when its headers allow an answer."""
        head = request_head(data, self._limits.sip) if exc.status is not None else None
        if head is None or head.method == "ACK":
            return
        try:
            reason = f"{REASON_PHRASES.get(exc.status or 400, 'Bad Request')} ({exc})"[:160]
            answer = response_to(_stamp_via(head, peer), exc.status or 400, reason=reason)
        except SipProtocolError:
            return
        self._safe_send(answer.to_bytes(), peer)

    # ------------------------------------------------------------------------------------------ TCP

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = Peer(Transport.TCP, str(address[0]), int(address[1]))
        refusal = "transport closed" if self._closed else self._make_room_for(peer.host)
        if refusal is not None:
            self._log_shed("SIP TCP connection from %s refused: %s", peer, refusal)
            writer.close()
            return
        connection = self._adopt(reader, writer, peer)
        assert connection.task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await connection.task

    def _make_room_for(self, host: str) -> str | None:
        """None when a connection from `host` may be accepted (after closing another to make room), else
        why not. The oldest connection not proven by an authenticated request gives way: from `host` when
        that address holds its `tcp_connections_per_host` already (a stranger behind the devices' carrier
        NAT address cannot lock them out by filling the address's slots: review 26), else, when every slot
        is taken, at whatever address (strangers holding one unproven connection from each of many
        addresses cannot lock devices out either). A newcomer never closes a proven connection: only when
        every connection in the way (the address's, or all) is proven is it refused (counted in
        `connections_refused_all_proven`).

        Oldest first by when it was opened, whatever it sent (review 26): a device's connection is unproven
        until its REGISTER has arrived and passed, so it is the newest and the last to give way; closing
        the silent first instead let strangers that each sent one message close a device's connection
        accepted a moment before. What is left: strangers opening more connections than the slots in the
        way within the time a device's REGISTER takes to arrive still close it (the device reconnects)."""
        own = [connection for connection in self._connections.values() if connection.peer.host == host]
        if len(own) >= self._max_tcp_connections_per_host:
            in_the_way, limit = own, f"{len(own)} connections open from this address, its limit"
        elif len(self._connections) < self._max_tcp_connections:
            return None
        else:
            in_the_way = list(self._connections.values())
            limit = f"{len(self._connections)} connections open, the limit"
        unproven = [connection for connection in in_the_way if not connection.proven]
        if not unproven:
            self.connections_refused_all_proven += 1
            return f"{limit}, every one proven by a REGISTER"
        victim = min(unproven, key=lambda c: c.opened_at)
        self._log_shed(
            "SIP TCP connection from %s closed to make room: the oldest of %d unproven connections (%s)",
            victim.peer,
            len(unproven),
            limit,
        )
        self._drop_connection(victim)
        return None

    def _log_shed(self, message: str, *args: object) -> None:
        """A connection refused or closed to make room: a warning, at most one per `SHED_LOG_INTERVAL_S`
        with how many were not logged since (a flood of connections must not flood the journal too)."""
        self.connections_shed += 1
        now = time.monotonic()
        if now - self._shed_logged_at < SHED_LOG_INTERVAL_S:
            self._shed_unlogged += 1
            return
        more = f" (and {self._shed_unlogged} more refused or closed since)" if self._shed_unlogged else ""
        self._shed_logged_at, self._shed_unlogged = now, 0
        log.warning(message + "%s", *args, more)

    def mark_proven(self, peer: Peer) -> None:
        """The TCP connection `peer` came over carried an authenticated request (the platform's
        REGISTER): keep it up to the idle timeout. Nothing for UDP or a connection already gone."""
        if peer.transport is Transport.TCP:
            connection = self._connections.get((peer.host, peer.port))
            if connection is not None:
                connection.proven = True

    def _drop_connection(self, connection: _Connection) -> None:
        """Forget `connection` at once (its reader task ends on its own) and close it."""
        key = (connection.peer.host, connection.peer.port)
        if self._connections.get(key) is connection:
            del self._connections[key]
        self._tcp_buffered_bytes -= connection.buffered_bytes
        connection.buffered_bytes = 0
        connection.abort()

    def _adopt(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> _Connection:
        connection = _Connection(reader, writer, peer, self._limits.max_tcp_unsent_bytes)
        previous = self._connections.get((peer.host, peer.port))
        if previous is not None:
            previous.writer.close()
        self._connections[(peer.host, peer.port)] = connection
        connection.task = asyncio.ensure_future(self._read_connection(connection))
        return connection

    async def _read_connection(self, connection: _Connection) -> None:
        parser = SipStreamParser(self._limits.sip)
        peer = connection.peer
        limits = self._limits
        message_started_at: float | None = None  # monotonic time the unfinished message began
        unproven_deadline = float("inf") if limits.tcp_unproven_timeout_s is None else \
            connection.opened_at + limits.tcp_unproven_timeout_s
        try:
            while True:
                idle_deadline = time.monotonic() + limits.tcp_idle_timeout_s
                deadline = idle_deadline
                if message_started_at is not None:
                    deadline = min(deadline, message_started_at + limits.tcp_message_deadline_s)
                if not connection.proven:
                    deadline = min(deadline, unproven_deadline)
                try:
                    data = await asyncio.wait_for(connection.reader.read(65536),
                                                  max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    now = time.monotonic()
                    if message_started_at is not None and \
                            now >= message_started_at + limits.tcp_message_deadline_s:
                        log.warning(
                            "SIP TCP connection from %s closed: a message not complete within %g s",
                            peer,
                            limits.tcp_message_deadline_s,
                        )
                    elif not connection.proven and now >= unproven_deadline:
                        log.info("SIP TCP connection from %s closed: no authenticated REGISTER over it "
                                 "within %g s", peer, limits.tcp_unproven_timeout_s)
                    elif now >= idle_deadline:
                        log.info("SIP TCP connection from %s idle, closed", peer)
                    else:
                        continue  # proven meanwhile: it may stay
                    return
                if not data:
                    return
                pings = parser.pings
                try:
                    messages = parser.feed(data)
                except SipProtocolError as exc:
                    log.warning("SIP TCP stream from %s closed: %s", peer, exc)
                    return
                if not parser.partial_message:
                    message_started_at = None
                elif messages or message_started_at is None:
                    message_started_at = time.monotonic()  # a new message began in this read
                if not self._count_buffered(connection, parser.buffered_bytes):
                    return
                for _ in range(parser.pings - pings):
                    self._safe_send(b"\r\n", peer)  # RFC 5626 pong
                for message in messages:
                    if connection.writer.is_closing():
                        return  # aborted (it does not read): the rest of what it sent is not answered
                    self._on_message(message, peer)
        except (ConnectionError, OSError) as exc:
            log.info("SIP TCP connection from %s lost: %s", peer, exc)
        finally:
            if self._connections.get((peer.host, peer.port)) is connection:
                del self._connections[(peer.host, peer.port)]
            self._tcp_buffered_bytes -= connection.buffered_bytes
            connection.buffered_bytes = 0
            connection.writer.close()

    def _count_buffered(self, connection: _Connection, buffered_bytes: int) -> bool:
        """Account `connection`'s unfinished bytes in the total; over `max_tcp_buffered_bytes` the
        connection holding the most is closed. False when that is `connection` itself."""
        self._tcp_buffered_bytes += buffered_bytes - connection.buffered_bytes
        connection.buffered_bytes = buffered_bytes
        if self._tcp_buffered_bytes <= self._limits.max_tcp_buffered_bytes:
            return True
        largest = max(self._connections.values(), key=lambda c: c.buffered_bytes, default=connection)
        if connection.buffered_bytes >= largest.buffered_bytes:
            largest = connection
        log.warning(
            "SIP TCP connection from %s closed: %d bytes of unfinished messages held over all connections, "
            "%d by it",
            largest.peer,
            self._tcp_buffered_bytes,
            largest.buffered_bytes,
        )
        self._drop_connection(largest)
        return largest is not connection


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, transport: SipTransport) -> None:
        self._sip = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._sip._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.info("SIP UDP error: %s", exc)
