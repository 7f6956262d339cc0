"""Test-side peers of the platform service: a small GB/T 28181 device built from the codecs and the SIP
transport (real sockets), and a media receiver that counts the bytes it gets on a real socket. The real
device simulator is gbsim's (simulators/gb28181); these are just enough to drive the platform's signalling.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drivers.gb28181.digest import DigestChallenge, authorization_for
from drivers.gb28181.manscdp import (
    CatalogItem,
    Charset,
    DeviceInfoResponse,
    DeviceStatusResponse,
    RecordInfoQuery,
    RecordItem,
    build_catalog_responses,
    build_device_info_response,
    build_device_status_response,
    build_keepalive,
    build_media_status,
    build_record_info_responses,
    parse_message,
)
from drivers.gb28181.sdp import answer_to, build_sdp, parse_sdp, with_ssrc
from drivers.gb28181.sip import SipRequest, SipResponse, request, response_to
from drivers.gb28181.sip_transport import Peer, SipTransport, Transport, TransportLimits

PLATFORM_ID = "34020000002000000001"
DOMAIN = "3402000000"
# A device keeps a connection the platform opened to it (nothing proves one on its side).
DEVICE_LIMITS = TransportLimits(tcp_unproven_timeout_s=None)


class FakeClock:
    """The monotonic clock seam: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ledger:
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, entry_type: str, data: dict[str, Any]) -> None:
        self.entries.append((str(entry_type), data))

    def of(self, entry_type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.entries if kind == entry_type]

    def entries_data(self) -> list[dict[str, Any]]:
        return [data for _, data in self.entries]


@dataclass
class Invite:
    request: SipRequest
    peer: Peer
    local_tag: str


class TestDevice:
    """A GB/T 28181 device over real sockets. Answers Catalog, DeviceInfo, DeviceStatus and RecordInfo
    (split over several MESSAGEs, GB2312 names), INVITE with an SDP answer; keeps a log of what came."""

    __test__ = False

    def __init__(self, device_id: str, password: str, platform_port: int, *, host: str = "127.0.0.1",
                 transport: Transport = Transport.UDP, records: list[RecordItem] | None = None,
                 channels: list[CatalogItem] | None = None, device_time: datetime | None = None,
                 answer_ssrc: str | None = "same", per_message: int = 2,
                 charset: Charset = Charset.GB2312) -> None:
        self.device_id = device_id
        self.password = password
        self.host = host
        self.platform = Peer(transport, "127.0.0.1", platform_port)
        self.records = records or []
        self.channels = channels or []
        self.device_time = device_time
        self.answer_ssrc = answer_ssrc
        self.per_message = per_message
        self.charset = charset
        self.sip: SipTransport | None = None
        self.queries: list[str] = []
        self.invites: list[Invite] = []
        self.byes: list[SipRequest] = []
        self.invited = asyncio.Event()
        self.bye_received = asyncio.Event()
        self.answer_statuses: list[int] = []
        self.media_listener: asyncio.Server | None = None
        self.media_port = 0
        self.sn = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_invite: Callable[[Invite], None] | None = None
        self.media_answer_host: str | None = None  # the c= of its INVITE answers (default: its own host)
        self.media_connections = 0

    async def start(self, port: int = 0) -> TestDevice:
        self.sip = SipTransport(self._handle, host=self.host, port=port, limits=DEVICE_LIMITS)
        await self.sip.start()
        return self

    async def rebind(self) -> None:
        """A NAT rebinding: the same device, from another source port of the same host."""
        assert self.sip is not None
        old = self.sip
        self.sip = SipTransport(self._handle, host=self.host, port=0, limits=DEVICE_LIMITS)
        await self.sip.start()
        await old.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.media_listener is not None:
            self.media_listener.close()
        if self.sip is not None:
            await self.sip.close()

    async def settled(self) -> None:
        """Wait until the device has sent everything it started to send (answers, their 200s)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the device sends --------------------------------------------------------------------------

    def _fields(self, method: str, cseq: int, call_id: str | None = None) -> list[tuple[str, str]]:
        return [
            ("From", f"<sip:{self.device_id}@{DOMAIN}>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:{self.device_id if method == 'REGISTER' else PLATFORM_ID}@{DOMAIN}>"),
            ("Call-ID", call_id or secrets.token_hex(8)),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
        ]

    async def register(self, *, expires: int = 3600, password: str | None = None,
                       username: str | None = None) -> SipResponse:
        """REGISTER, answer the challenge with digest, return the final answer."""
        assert self.sip is not None
        call_id = secrets.token_hex(8)
        contact = [("Contact", f"<sip:{self.device_id}@{self.host}:{self.sip.port}>"),
                   ("Expires", str(expires))]
        uri = f"sip:{PLATFORM_ID}@{DOMAIN}"
        first = request("REGISTER", uri, [*self._fields("REGISTER", 1, call_id), *contact])
        answer = await self.sip.request(first, self.platform)
        if answer.status != 401:
            return answer
        challenge = DigestChallenge.parse(answer.headers.get("WWW-Authenticate") or "")
        credentials = authorization_for(challenge, username=username or self.device_id,
                                        password=password or self.password, method="REGISTER", uri=uri)
        second = request("REGISTER", uri, [*self._fields("REGISTER", 2, call_id), *contact,
                                           ("Authorization", str(credentials))])
        return await self.sip.request(second, self.platform)

    async def message(self, body: bytes, *, call_id: str | None = None,
                      extra: list[tuple[str, str]] | None = None) -> SipResponse:
        assert self.sip is not None
        req = request("MESSAGE", f"sip:{PLATFORM_ID}@{DOMAIN}",
                      [*self._fields("MESSAGE", 20, call_id), ("Content-Type", "Application/MANSCDP+xml"),
                       *(extra or [])], body)
        return await self.sip.request(req, self.platform)

    async def keepalive(self, *, claimed_id: str | None = None) -> SipResponse:
        self.sn += 1
        return await self.message(build_keepalive(self.sn, claimed_id or self.device_id))

    # -- what the device answers ------------------------------------------------------------------------

    async def _handle(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        if req.method == "MESSAGE":
            message = parse_message(req.body)
            self.queries.append(message.cmd_type)
            self._spawn(self._answer(message))
            return response_to(req, 200, to_tag=secrets.token_hex(4))
        if req.method == "INVITE":
            return self._invite(req, peer)
        if req.method == "ACK":
            return None
        if req.method == "BYE":
            self.byes.append(req)
            self.bye_received.set()
            return response_to(req, 200)
        return response_to(req, 405, to_tag=secrets.token_hex(4))

    async def _answer(self, query: Any) -> None:
        sn, cmd = query.sn, query.cmd_type
        if cmd == "Catalog":
            bodies = build_catalog_responses(sn, self.device_id, self.channels, per_message=self.per_message,
                                             charset=self.charset)
        elif cmd == "DeviceInfo":
            bodies = [build_device_info_response(sn, self.device_id, DeviceInfoResponse(
                result="OK", device_name="执法记录仪", manufacturer="Test", model="T1", firmware="1.0"),
                charset=self.charset)]
        elif cmd == "DeviceStatus":
            bodies = [build_device_status_response(sn, self.device_id, DeviceStatusResponse(
                result="OK", online="ONLINE", status="OK", device_time=self.device_time),
                charset=self.charset)]
        elif cmd == "RecordInfo":
            payload = query.payload
            assert isinstance(payload, RecordInfoQuery)
            chosen = [r for r in self.records
                      if r.end_time >= payload.start_time and r.start_time <= payload.end_time]
            bodies = build_record_info_responses(sn, query.device_id, "记录仪", chosen,
                                                 per_message=self.per_message, charset=self.charset)
        else:
            return
        for body in bodies:  # Annex N: serially, each after the platform's 200 to the previous one
            answer = await self.message(body)
            self.answer_statuses.append(answer.status)

    def _invite(self, req: SipRequest, peer: Peer) -> SipResponse:
        offer = parse_sdp(req.body)
        local_tag = secrets.token_hex(4)
        invite = Invite(req, peer, local_tag)
        self.invites.append(invite)
        assert self.sip is not None
        self.sip.add_dialog(req.call_id, local_tag, self._handle)  # the platform's BYE comes in the dialog
        # The platform's a=setup:active means it connects: the device listens.
        we_listen = offer.video.setup is not None and offer.video.setup.value == "active"
        port = self.media_port if we_listen else 9412
        answer = answer_to(offer, owner_id=self.device_id, address=self.media_answer_host or self.host,
                           port=port, ssrc=offer.ssrc, file_size_bytes=4096)
        if self.answer_ssrc is None:
            answer = with_ssrc(answer, None)
        elif self.answer_ssrc != "same":
            answer = with_ssrc(answer, self.answer_ssrc)
        self.invited.set()
        if self.on_invite is not None:
            self.on_invite(invite)
        return response_to(req, 200, to_tag=local_tag,
                           headers=[("Contact", f"<sip:{self.device_id}@{self.host}:{peer.port}>"),
                                    ("Content-Type", "APPLICATION/SDP")], body=build_sdp(answer))

    async def listen_for_media(self) -> None:
        """For tcp-active: the device listens and the platform's receiver connects to it."""
        self.media_listener = await asyncio.start_server(self._media_connection, self.host, 0)
        self.media_port = self.media_listener.sockets[0].getsockname()[1]

    async def _media_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.media_connections += 1
        writer.write(b"\x00\x10" + b"P" * 16)
        await writer.drain()
        writer.close()

    async def send_media_status(self, invite: Invite) -> SipResponse:
        """MediaStatus 121 inside the INVITE's dialog (J.14.17)."""
        assert self.sip is not None
        platform_from = invite.request.from_
        self.sn += 1
        req = request("MESSAGE", f"sip:{PLATFORM_ID}@{DOMAIN}", [
            ("From", f"<sip:{self.device_id}@{DOMAIN}>;tag={invite.local_tag}"),
            ("To", str(platform_from)),
            ("Call-ID", invite.request.call_id),
            ("CSeq", "2 MESSAGE"),
            ("Max-Forwards", "70"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ], build_media_status(self.sn, self.device_id))
        return await self.sip.request(req, self.platform)

    async def send_bye(self, invite: Invite) -> SipResponse:
        assert self.sip is not None
        req = request("BYE", f"sip:{PLATFORM_ID}@{DOMAIN}", [
            ("From", f"<sip:{invite.request.to.sip_uri.user}@{DOMAIN}>;tag={invite.local_tag}"),
            ("To", str(invite.request.from_)),
            ("Call-ID", invite.request.call_id),
            ("CSeq", "3 BYE"),
            ("Max-Forwards", "70"),
        ])
        return await self.sip.request(req, self.platform)


def offered_media(invite: Invite) -> tuple[str, int]:
    offer = parse_sdp(invite.request.body)
    host = offer.media_address()
    assert host is not None
    return host, offer.video.port


async def send_udp(host: str, port: int, payload: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
    try:
        transport.sendto(payload)
    finally:
        transport.close()


@dataclass
class CountedOutcome:
    """What the test receiver saw (the real MediaOutcome is gbrecv's)."""

    bytes: int
    ended: str


class CountingReceiver:
    """A media receiver on a real socket that counts bytes: UDP, TCP passive (listens) or TCP active
    (connects to the device). Ends on close() or after `idle_timeout_s` without bytes once some came."""

    def __init__(self, transport: str, bind_host: str, port_range: tuple[int, int], ssrc: int | None,
                 raw_path: Path | None, idle_timeout_s: float) -> None:
        self.transport = transport
        self.bind_host = bind_host
        self.port_range = port_range
        self.ssrc = ssrc
        self.raw_path = raw_path
        self.idle_timeout_s = idle_timeout_s
        self.bytes = 0
        self.got_bytes = asyncio.Event()
        self.closed = asyncio.Event()
        self.ended = "closed"
        self.expected_ssrcs: list[int] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._reader_task: asyncio.Task[None] | None = None
        self.local_port = 0

    async def open(self) -> CountingReceiver:
        loop = asyncio.get_running_loop()
        receiver = self

        class _Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                receiver._count(len(data))

        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self.bind_host, 0))
            self.local_port = self._udp.get_extra_info("sockname")[1]
        elif self.transport == "tcp-passive":
            self._server = await asyncio.start_server(self._read, self.bind_host, 0)
            self.local_port = self._server.sockets[0].getsockname()[1]
        else:
            self.local_port = 9  # the offer's m= port for tcp-active: we connect, nothing listens here
        return self

    def _count(self, n: int) -> None:
        self.bytes += n
        self.got_bytes.set()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while data := await reader.read(65536):
            self._count(len(data))

    async def connect(self, remote_host: str, remote_port: int) -> None:
        reader, writer = await asyncio.open_connection(remote_host, remote_port)
        self._writers.append(writer)
        self._reader_task = asyncio.ensure_future(self._read(reader, writer))

    def expect_ssrc(self, ssrc: int | None) -> None:
        if ssrc is not None:
            self.expected_ssrcs.append(ssrc)

    async def wait_closed(self) -> CountedOutcome:
        await self.closed.wait()
        return CountedOutcome(self.bytes, self.ended)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        self.closed.set()

    def end_of_stream(self) -> None:
        """The stream stopped (as an idle timeout or a closed TCP connection would say)."""
        self.ended = "idle"
        self.closed.set()


@dataclass
class ReceiverFactory:
    """`open_receiver` for the platform: keeps the receivers it made."""

    made: list[CountingReceiver] = field(default_factory=list)

    calls: list[dict[str, Any]] = field(default_factory=list)  # the keyword arguments of each call

    async def __call__(self, transport: Any, *, bind_host: str, port_range: tuple[int, int], ssrc: int | None,
                       raw_path: Path | None, idle_timeout_s: float, max_bytes: int,
                       sink: Callable[[bytes], None] | None = None, **limits: Any) -> CountingReceiver:
        # Counts, stores nothing: a live Play's sink (edge.gb28181.live) is not fed by this fake.
        receiver = await CountingReceiver(str(transport), "127.0.0.1", port_range, ssrc, raw_path,
                                          idle_timeout_s).open()
        self.made.append(receiver)
        self.calls.append(limits)
        return receiver


def platform_settings(passwords: dict[str, str], *, unknown_password: str | None = None,
                      **overrides: Any) -> Any:
    from edge.gb28181.platform import PlatformSettings
    from edge.gb28181.registrar import DevicePasswords

    values: dict[str, Any] = dict(
        sip_id=PLATFORM_ID, domain=DOMAIN, listen_host="127.0.0.1", listen_port=0, advertised_host="",
        passwords=DevicePasswords(passwords, unknown_password), names={d: "" for d in passwords},
        query_timeout_s=10.0, media_host="127.0.0.1", describe_devices=False,
        # Setting device clocks asks DeviceStatus first (review 16): tests of other things leave it off, so
        # the queries a device sees are the test's own.
        time_sync=False,
    )
    values.update(overrides)
    return PlatformSettings(**values)
