"""`SimulatedDevice`: a GB/T 28181 4G body-worn recorder or IPC over real UDP/TCP sockets.

SIP (over `drivers.gb28181.sip_transport.SipTransport`, the device's own port): REGISTER with digest
(401 → Authorization, with or without qop as challenged), re-registration before expiry, unregistration
(`Expires: 0`) on a clean `close()`, a Keepalive MESSAGE every `keepalive_interval_s`, a 404 to a
keepalive makes it register again. Queries are answered 200 at once and then by MESSAGEs of their own
(Catalog, DeviceInfo, DeviceStatus with `DeviceTime` from the device's clock, RecordInfo from its stored
files, split over several MESSAGEs sent one after the other as Annex N asks). INVITE Play / Playback /
Download gets a 200 with an SDP answer (retransmitted until the ACK over UDP); the ACK starts the stream
(`stream.MediaSender`), MediaStatus 121 goes in the dialog at the end of a history stream, BYE stops it.

Clock seams: `sleep` paces registration refreshes, retries and keepalives (tests pass a controllable one);
`wall_clock` gives UTC now for DeviceTime. Media pacing uses the event loop's clock.

Faults (`settings.Fault`) act where the field shows them; the module docstring of the package lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from drivers.gb28181 import manscdp
from drivers.gb28181.digest import DigestChallenge, DigestError, authorization_for
from drivers.gb28181.manscdp import (
    CatalogItem,
    CatalogQuery,
    Charset,
    DeviceInfoQuery,
    DeviceInfoResponse,
    DeviceStatusQuery,
    DeviceStatusResponse,
    ManscdpError,
    RecordInfoQuery,
    RecordItem,
    Root,
)
from drivers.gb28181.ps import Codec
from drivers.gb28181.sdp import (
    MediaTransport,
    SdpError,
    SessionDescription,
    SessionKind,
    Setup,
    answer_to,
    build_sdp,
    make_ssrc,
    parse_sdp,
)
from drivers.gb28181.sip import (
    NameAddress,
    SipProtocolError,
    SipRequest,
    SipResponse,
    request,
    response_to,
)
from drivers.gb28181.sip_transport import (
    Peer,
    SipTimers,
    SipTransport,
    SipTransportError,
    Transport,
    TransportLimits,
)

from .media import AUDIO_RATE_HZ, CLOCK_HZ, MediaFacts, MediaFrame, Recording, read_frames, scan_recordings
from .settings import DeviceSettings, Fault, SipTransportKind
from .stream import (
    MediaSender,
    Outlet,
    OutletError,
    PacketFaults,
    SendStats,
    TcpConnectOutlet,
    TcpListenOutlet,
    UdpOutlet,
)

log = logging.getLogger(__name__)

MANSCDP_CONTENT_TYPE = "Application/MANSCDP+xml"
USER_AGENT = "evidence-edge gb28181 device simulator"
ALLOW = "INVITE, ACK, CANCEL, BYE, MESSAGE, INFO, OPTIONS"
SLOW_FACTOR = 0.25
UNREGISTER_TIMEOUT_S = 4.0
LOG_ENTRIES = 1000
MAX_RECORD_ITEMS = 10_000
Sleep = Callable[[float], Awaitable[None]]
WallClock = Callable[[], datetime]


def _tag() -> str:
    return os.urandom(6).hex()


def _call_id(host: str) -> str:
    return f"{os.urandom(10).hex()}@{host}"


@dataclass
class MediaSession:
    """One INVITE dialog of the device, from its 200 OK to its end."""

    call_id: str
    local_tag: str
    kind: SessionKind
    channel_id: str
    invite: SipRequest
    peer: Peer
    offer: SessionDescription
    answer: SessionDescription
    rtp_ssrc: int
    speed: float | None
    recording: Recording | None
    transport: MediaTransport
    setup: Setup | None
    sender: MediaSender
    outlet: Outlet
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sent_121: bool = False
    bye_received: bool = False
    end_reason: str = ""
    local_cseq: int = 0

    @property
    def stats(self) -> SendStats:
        return self.sender.stats


def _recent() -> deque[Any]:
    return deque(maxlen=LOG_ENTRIES)


@dataclass
class DeviceLog:
    """What the device did, for tests and the CLI's summary (the lists keep the last LOG_ENTRIES)."""

    register_attempts: int = 0
    registrations: int = 0
    refusals: deque[int] = field(default_factory=_recent)  # final non-2xx statuses to REGISTER
    unregistered: bool = False
    keepalives_sent: int = 0
    keepalive_statuses: deque[int] = field(default_factory=_recent)
    queries_answered: deque[str] = field(default_factory=_recent)
    sip_ports: list[int] = field(default_factory=list)  # every local SIP port used (nat-rebind adds one)
    platform_date: str | None = None  # the Date header of the last REGISTER 200, if any
    clock_set_from_date: bool = False


class SimulatedDevice:
    """A simulated GB/T 28181 device. `await run()` until `close()`; see the module docstring."""

    def __init__(self, settings: DeviceSettings, *, sleep: Sleep = asyncio.sleep,
                 wall_clock: WallClock = lambda: datetime.now(UTC),
                 sip_timers: SipTimers | None = None) -> None:
        self.settings = settings
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._timers = sip_timers or SipTimers()
        self._random = random.Random(settings.seed)
        self._transport: SipTransport | None = None
        self._recordings: list[Recording] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sn = 0
        self._ssrc_number = 0
        self._register_call_id = ""
        self._register_cseq = 0
        self._register_tag = _tag()
        self._register_now = asyncio.Event()
        self._granted_expires_s: int | None = None
        self._clock_offset_s = settings.clock_offset_s
        self._closing = False
        self._closed = asyncio.Event()
        self._started = asyncio.Event()
        self._rebound = False
        self.registered = asyncio.Event()
        self.sessions: dict[str, MediaSession] = {}
        self.finished_sessions: deque[MediaSession] = deque(maxlen=LOG_ENTRIES)
        self.session_started = asyncio.Event()
        self.log = DeviceLog()

    def __repr__(self) -> str:
        return f"SimulatedDevice({self.settings.device_id})"

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def sip_port(self) -> int:
        if self._transport is None:
            raise RuntimeError("device not started")
        return self._transport.port

    @property
    def recordings(self) -> list[Recording]:
        return list(self._recordings)

    async def started(self) -> None:
        await self._started.wait()

    async def run(self) -> None:
        """Scan recordings, open the SIP port, register and keep alive until `close()`."""
        if self.settings.media_dir is not None:
            self._recordings = await scan_recordings(self.settings.media_dir,
                                                     utc_offset_s=self.settings.utc_offset_s)
        self._transport = await self._open_transport()
        self._register_call_id = _call_id(self.settings.bind_host)
        self._started.set()
        self._spawn(self._registration_loop())
        self._spawn(self._keepalive_loop())
        await self._closed.wait()

    async def close(self) -> None:
        """Stop every stream, unregister (Expires: 0) if registered, close the SIP port."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        for session in list(self.sessions.values()):
            await self._end_session(session, "device stopping")
        background = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self.registered.is_set() and self._transport is not None:
            # Bounded: a device switched off does not wait out 32 s of retransmissions to a silent platform.
            with contextlib.suppress(SipTransportError, SipProtocolError, DigestError, OSError, TimeoutError):
                status = await asyncio.wait_for(self._register(expires=0), UNREGISTER_TIMEOUT_S)
                self.log.unregistered = status == 200
        if self._transport is not None:
            await self._transport.close()
        self._closed.set()

    async def __aenter__(self) -> SimulatedDevice:
        self._spawn(self.run())
        await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("device %s: background task failed", self.settings.device_id,
                      exc_info=task.exception())

    async def _open_transport(self) -> SipTransport:
        # A device keeps a connection the platform opened to it: no REGISTER ever proves one on its side.
        transport = SipTransport(self._handle, host=self.settings.bind_host, port=self.settings.sip_port
                                 if not self.log.sip_ports else 0, timers=self._timers,
                                 advertised_host=self.settings.contact_host,
                                 limits=TransportLimits(tcp_unproven_timeout_s=None))
        await transport.start()
        self.log.sip_ports.append(transport.port)
        return transport

    @property
    def _platform(self) -> Peer:
        kind = Transport.TCP if self.settings.transport is SipTransportKind.TCP else Transport.UDP
        return Peer(kind, self.settings.platform_host, self.settings.platform_port)

    def _local_host(self) -> str:
        """The address in Via and Contact: `contact_host` (a 4G device's private address) when set."""
        assert self._transport is not None
        return self._transport.local_host_for(self._platform)

    def _media_host(self) -> str:
        """The address in SDP answers: where the platform can reach the device's media port."""
        s = self.settings
        if s.media_host:
            return s.media_host
        if s.bind_host not in ("0.0.0.0", ""):
            return s.bind_host
        return self._local_host()

    # -- registration --------------------------------------------------------------------------------------

    async def _registration_loop(self) -> None:
        s = self.settings
        while not self._closing:
            try:
                status = await self._register(expires=s.register_expires_s)
            except (SipTransportError, SipProtocolError, DigestError, OSError) as exc:
                log.warning("device %s: REGISTER failed: %s", s.device_id, exc)
                status = 0
            self._register_now.clear()
            if status == 200:
                self.registered.set()
                granted_s = self._granted_expires_s or s.register_expires_s
                wait_s = max(1.0, granted_s * 0.8)  # refresh well before the expiry the platform granted
            else:
                self.registered.clear()
                wait_s = s.register_retry_s
            await self._sleep_or_register_now(wait_s)

    async def _sleep_or_register_now(self, wait_s: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(wait_s))
        nudge = asyncio.ensure_future(self._register_now.wait())
        try:
            await asyncio.wait({sleeper, nudge}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            nudge.cancel()

    def _register_request(self, expires: int, authorization: str | None) -> SipRequest:
        s = self.settings
        self._register_cseq += 1
        local = self._local_host()
        assert self._transport is not None
        headers = [
            ("From", f"<sip:{s.device_id}@{s.sip_domain}>;tag={self._register_tag}"),
            ("To", f"<sip:{s.device_id}@{s.sip_domain}>"),
            ("Call-ID", self._register_call_id),
            ("CSeq", f"{self._register_cseq} REGISTER"),
            ("Contact", f"<sip:{s.device_id}@{local}:{self._transport.port}>"),
            ("Max-Forwards", "70"),
            ("User-Agent", USER_AGENT),
            ("Expires", str(expires)),
        ]
        if authorization is not None:
            headers.append(("Authorization", authorization))
        return request("REGISTER", f"sip:{s.platform_id}@{s.sip_domain}", headers)

    async def _register(self, *, expires: int) -> int:
        """One registration (with the digest round): the final status."""
        assert self._transport is not None
        s = self.settings
        self.log.register_attempts += 1
        req = self._register_request(expires, None)
        response = await self._transport.request(req, self._platform)
        if response.status in (401, 407):
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            challenge = DigestChallenge.parse(response.headers.get(header) or "")
            password = s.password + "-wrong" if s.has(Fault.WRONG_PASSWORD) else s.password
            credentials = authorization_for(challenge, username=s.device_id, password=password,
                                            method="REGISTER", uri=req.uri)
            req = self._register_request(expires, str(credentials))
            response = await self._transport.request(req, self._platform)
        if response.status == 200:
            if expires:
                self.log.registrations += 1
                try:
                    granted = response.expires
                except SipProtocolError:
                    granted = None
                self._granted_expires_s = granted if granted else None
            self.log.platform_date = response.headers.get("Date")
            if self.log.platform_date and s.accept_date:
                self._set_clock_from(self.log.platform_date)
        else:
            self.log.refusals.append(response.status)
            log.warning("device %s: REGISTER answered %d", s.device_id, response.status)
        return response.status

    # -- keepalive -----------------------------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        s = self.settings
        while not self._closing:
            await self.registered.wait()
            await self._sleep(s.keepalive_interval_s)
            if not self.registered.is_set():
                continue
            if s.has(Fault.NAT_REBIND) and self.log.keepalives_sent >= 1 and not self._rebound:
                await self._rebind()
            body = manscdp.build_keepalive(self._next_sn(), s.device_id, charset=self._charset)
            try:
                response = await self._message(body)
            except (SipTransportError, SipProtocolError, OSError) as exc:
                log.warning("device %s: keepalive failed: %s", s.device_id, exc)
                continue
            self.log.keepalives_sent += 1
            self.log.keepalive_statuses.append(response.status)
            if response.status in (403, 404):  # the platform forgot us: register again now
                self.registered.clear()
                self._register_now.set()

    async def _rebind(self) -> None:
        """NAT rebinding: from now on SIP leaves (and is received) on a new local port."""
        old = self._transport
        self._transport = await self._open_transport()
        self._rebound = True
        for session in self.sessions.values():
            self._transport.add_dialog(session.call_id, session.local_tag, self._handle)
        if old is not None:
            await old.close()
        log.info("device %s: NAT rebinding, SIP now from port %d", self.settings.device_id, self.sip_port)

    # -- MESSAGE out ---------------------------------------------------------------------------------------

    @property
    def _charset(self) -> Charset:
        return Charset.GB2312

    def _next_sn(self) -> int:
        self._sn += 1
        return self._sn

    async def _message(self, body: bytes) -> SipResponse:
        assert self._transport is not None
        s = self.settings
        req = request("MESSAGE", f"sip:{s.platform_id}@{s.sip_domain}", [
            ("From", f"<sip:{s.device_id}@{s.sip_domain}>;tag={_tag()}"),
            ("To", f"<sip:{s.platform_id}@{s.sip_domain}>"),
            ("Call-ID", _call_id(self._local_host())),
            ("CSeq", "1 MESSAGE"),
            ("Max-Forwards", "70"),
            ("User-Agent", USER_AGENT),
            ("Content-Type", MANSCDP_CONTENT_TYPE),
        ], body)
        return await self._transport.request(req, self._platform)

    # -- requests in ---------------------------------------------------------------------------------------

    async def _handle(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        if req.method == "MESSAGE":
            return self._on_message(req, peer)
        if req.method == "INVITE":
            return await self._on_invite(req, peer)
        if req.method == "ACK":
            session = self.sessions.get(req.call_id)
            if session is not None and not session.acked.is_set():
                session.acked.set()
                session.task = self._spawn(self._stream(session))
            return None
        if req.method == "BYE":
            session = self.sessions.get(req.call_id)
            if session is None:
                return response_to(req, 481)
            session.bye_received = True
            await self._end_session(session, "BYE")
            return response_to(req, 200)
        if req.method == "OPTIONS":
            return response_to(req, 200, to_tag=_tag(), headers=[("Allow", ALLOW)])
        return response_to(req, 405, to_tag=_tag(), headers=[("Allow", ALLOW)])

    def _on_message(self, req: SipRequest, peer: Peer) -> SipResponse:
        try:
            message = manscdp.parse_message(req.body)
        except ManscdpError as exc:
            log.warning("device %s: MESSAGE from %s unreadable: %s", self.settings.device_id, peer, exc)
            return response_to(req, 400, to_tag=_tag())
        if message.root is Root.QUERY:
            self._spawn(self._answer_query(message))
        return response_to(req, 200, to_tag=_tag())

    async def _answer_query(self, query: manscdp.ManscdpMessage) -> None:
        s = self.settings
        charset = self._charset
        payload = query.payload
        if isinstance(payload, CatalogQuery):
            items = [CatalogItem(device_id=c.channel_id, name=c.name, manufacturer=s.manufacturer,
                                 model=s.model, owner="Owner", civil_code=s.device_id[:6], address="Address",
                                 parental=0, parent_id=s.device_id, secrecy=0, status="ON")
                     for c in s.channel_list]
            bodies = manscdp.build_catalog_responses(query.sn, s.device_id, items,
                                                     per_message=s.records_per_message, charset=charset)
        elif isinstance(payload, DeviceInfoQuery):
            name = "执法记录仪" if s.has(Fault.GB2312_NAME) else s.device_name
            info = DeviceInfoResponse(result="OK", device_name=name, manufacturer=s.manufacturer,
                                      model=s.model, firmware=s.firmware, channel=len(s.channel_list))
            bodies = [manscdp.build_device_info_response(query.sn, s.device_id, info, charset=charset)]
        elif isinstance(payload, DeviceStatusQuery):
            status = DeviceStatusResponse(result="OK", online="ONLINE", status="OK", encode="ON",
                                          record="ON", device_time=self.device_time())
            bodies = [manscdp.build_device_status_response(query.sn, s.device_id, status, charset=charset)]
        elif isinstance(payload, RecordInfoQuery):
            bodies = self._record_info_bodies(query, payload)
        else:
            log.info("device %s: query %s not simulated", s.device_id, query.cmd_type)
            return
        self.log.queries_answered.append(query.cmd_type)
        for body in bodies:  # one after the other: the next part only after the platform's 200 (Annex N)
            try:
                response = await self._message(body)
            except (SipTransportError, SipProtocolError, OSError) as exc:
                log.warning("device %s: %s answer not delivered: %s", s.device_id, query.cmd_type, exc)
                return
            if response.status != 200:
                log.warning("device %s: %s answer part refused with %d", s.device_id, query.cmd_type,
                            response.status)
                return

    def device_time(self) -> datetime:
        """The device's clock: local time (UTC + utc_offset_s), off by clock_offset_s until a REGISTER 200's
        Date header set it, no zone."""
        now = self._wall_clock().astimezone(UTC).replace(tzinfo=None)
        return now + timedelta(seconds=self.settings.utc_offset_s + self._clock_offset_s)

    def _set_clock_from(self, date_text: str) -> None:
        """GB/T 28181 9.10.3: a device sets its clock from the Date of the REGISTER 200 (local time,
        `yyyy-MM-ddTHH:mm:ss.SSS`), as real devices do whether or not the platform's clock is right."""
        try:
            platform_time = datetime.fromisoformat(date_text.strip()).replace(tzinfo=None)
        except ValueError:
            log.warning("device %s: Date %r is not GB/T 28181 time; clock kept", self.settings.device_id,
                        date_text[:40])
            return
        now = self._wall_clock().astimezone(UTC).replace(tzinfo=None)
        self._clock_offset_s = (platform_time - now).total_seconds() - self.settings.utc_offset_s
        self.log.clock_set_from_date = True

    def _record_info_bodies(self, query: manscdp.ManscdpMessage, q: RecordInfoQuery) -> list[bytes]:
        s = self.settings
        channel_id = query.device_id
        ours = channel_id in (s.device_id, *(c.channel_id for c in s.channel_list))
        items = [
            RecordItem(device_id=channel_id, name=r.name, file_path=f"/mnt/sdcard/record/{r.name}",
                       address="", start_time=r.start, end_time=r.end, secrecy=0, type="time",
                       file_size_bytes=r.facts.size_bytes)
            for r in self._recordings if ours and r.end >= q.start_time and r.start <= q.end_time
        ][:MAX_RECORD_ITEMS]
        name = s.channel_list[0].name
        if s.has(Fault.SPLIT_RECORDINFO):
            bodies = manscdp.build_record_info_responses(query.sn, channel_id, name, items, per_message=1,
                                                         charset=self._charset)
            if len(bodies) > 1:
                ordered = list(bodies)
                while bodies == ordered:
                    self._random.shuffle(bodies)
            return bodies
        return manscdp.build_record_info_responses(query.sn, channel_id, name, items,
                                                   per_message=s.records_per_message, charset=self._charset)

    # -- INVITE --------------------------------------------------------------------------------------------

    def _recording_for(self, offer: SessionDescription) -> Recording | None:
        """The stored file the t= range asks for: the one it overlaps most (t= is Unix seconds)."""
        zone = timedelta(seconds=self.settings.utc_offset_s)
        start = datetime.fromtimestamp(offer.start_time, UTC).replace(tzinfo=None) + zone
        stop = datetime.fromtimestamp(offer.stop_time, UTC).replace(tzinfo=None) + zone
        best: tuple[float, Recording] | None = None
        for recording in self._recordings:
            overlap = (min(stop, recording.end) - max(start, recording.start)).total_seconds()
            if overlap >= 0 and (best is None or overlap > best[0]):
                best = (overlap, recording)
        return best[1] if best else None

    def _new_ssrc(self, history: bool) -> int:
        self._ssrc_number = (self._ssrc_number + 1) % 10000
        return make_ssrc(history=history, domain_id=self.settings.device_id, stream_number=self._ssrc_number)

    async def _on_invite(self, req: SipRequest, peer: Peer) -> SipResponse:
        s = self.settings
        tag = _tag()
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            log.warning("device %s: INVITE SDP unreadable: %s", s.device_id, exc)
            return response_to(req, 488, to_tag=tag)
        kind = offer.kind
        channel_id = NameAddress.parse(f"<{req.uri}>").sip_uri.user or ""
        if channel_id not in (s.device_id, *(c.channel_id for c in s.channel_list)):
            return response_to(req, 404, to_tag=tag)
        if kind is None or 96 not in offer.video.payload_types:
            return response_to(req, 488, to_tag=tag)
        if req.call_id in self.sessions:
            return response_to(req, 482, to_tag=tag)
        subject_sender = _subject_sender(req)
        for old in [x for x in self.sessions.values()
                    if subject_sender and _subject_sender(x.invite) == subject_sender]:
            # Annex M c): a device asked again for a stream it is sending under the same Subject sender
            # tag tears the old one down and starts anew (why platforms keep that tag unique).
            log.info("device %s: INVITE with Subject %s again: the old stream %s stops", s.device_id,
                     subject_sender, old.call_id)
            await self._end_session(old, "replaced by a new INVITE with the same Subject")
        if len(self.sessions) >= s.max_sessions:
            return response_to(req, 486, to_tag=tag)
        recording: Recording | None = None
        if kind is not SessionKind.PLAY:
            recording = self._recording_for(offer)
            if recording is None:
                return response_to(req, 404, reason="No Recording In That Time Range", to_tag=tag)
        history = kind is not SessionKind.PLAY
        offered = offer.ssrc
        answered: int | None = offered if offered is not None else self._new_ssrc(history)
        if s.has(Fault.DIFFERENT_Y):
            answered = self._new_ssrc(history)
            if answered == offered:
                answered = self._new_ssrc(history)
        rtp_ssrc = answered if answered is not None else 0
        if s.has(Fault.MISSING_Y):
            answered = None
        if s.has(Fault.SSRC_MISMATCH):
            rtp_ssrc = (rtp_ssrc + 1) & 0xFFFFFFFF
        media = offer.video
        remote_host = offer.media_address() or peer.host
        setup: Setup | None = None
        transport = MediaTransport.TCP if media.is_tcp else MediaTransport.UDP
        outlet: UdpOutlet | TcpConnectOutlet | TcpListenOutlet
        if transport is MediaTransport.UDP:
            outlet = UdpOutlet(s.bind_host, (remote_host, media.port))
        elif media.setup is Setup.ACTIVE:  # the platform connects: we listen
            setup = Setup.PASSIVE
            outlet = TcpListenOutlet(s.bind_host)
        else:  # passive (or none: Annex L, the device is the TCP client)
            setup = Setup.ACTIVE
            outlet = TcpConnectOutlet(s.bind_host, (remote_host, media.port))
        speed: float | None = 1.0
        if kind is SessionKind.DOWNLOAD:
            speed = float(media.download_speed or 1)
        if history and s.has(Fault.SLOW):
            speed = SLOW_FACTOR
        media_host = self._media_host()
        try:
            answer = answer_to(offer, owner_id=s.device_id, address=media_host, port=outlet.local_port,
                               ssrc=answered, file_size_bytes=recording.facts.size_bytes if recording and
                               kind is SessionKind.DOWNLOAD else None)
        except SdpError as exc:
            await outlet.close()
            log.warning("device %s: cannot answer the offer: %s", s.device_id, exc)
            return response_to(req, 488, to_tag=tag)
        facts = recording.facts if recording else self._live_source()[1]
        video_codec = facts.video if facts else Codec.H264
        has_audio = bool(facts.has_audio) if facts else False  # G.711A when the file has sound
        stop_after: int | None = None
        if s.has(Fault.DIE_MID_STREAM):
            frames = facts.duration_s * float(facts.frame_rate) if facts else 50.0
            stop_after = max(1, int(frames // 2))
        stall: tuple[int, float] | None = None
        if s.has(Fault.STALL):
            frames = facts.duration_s * float(facts.frame_rate) if facts else 50.0
            stall = (max(1, int(frames // 2)), s.seconds(Fault.STALL))
        elif s.has(Fault.LATE_STALL):
            frames = facts.duration_s * float(facts.frame_rate) if facts else 50.0
            stall = (max(1, int(frames * 3 // 2)), s.seconds(Fault.LATE_STALL))
        elif s.has(Fault.KEEPALIVE_ONLY):
            frames = facts.duration_s * float(facts.frame_rate) if facts else 50.0
            stall = (max(1, int(frames * 3 // 2)), s.seconds(Fault.KEEPALIVE_ONLY))
        audio_drop: tuple[int, float] | None = None
        if s.has(Fault.AUDIO_DROP):
            frames = facts.duration_s * float(facts.frame_rate) if facts else 50.0
            audio_drop = (max(1, int(frames // 2)), s.seconds(Fault.AUDIO_DROP))
        sender = MediaSender(outlet, ssrc=rtp_ssrc, video=video_codec, audio=has_audio, speed=speed,
                             faults=PacketFaults(loss=s.probability(Fault.LOSS),
                                                 reorder=s.probability(Fault.REORDER),
                                                 duplicate=s.probability(Fault.DUPLICATE), seed=s.seed),
                             payload_bytes=s.rtp_payload_bytes, stop_after_frames=stop_after, stall=stall,
                             audio_drop=audio_drop, stall_keepalives=s.has(Fault.KEEPALIVE_ONLY))
        session = MediaSession(call_id=req.call_id, local_tag=tag, kind=kind, channel_id=channel_id,
                               invite=req, peer=peer, offer=offer, answer=answer, rtp_ssrc=rtp_ssrc,
                               speed=speed, recording=recording, transport=transport, setup=setup,
                               sender=sender, outlet=outlet)
        self.sessions[req.call_id] = session
        assert self._transport is not None
        self._transport.add_dialog(req.call_id, tag, self._handle)
        response = response_to(req, 200, to_tag=tag, headers=[
            ("Contact", f"<sip:{channel_id}@{self._local_host()}:{self.sip_port}>"),
            ("User-Agent", USER_AGENT),
            ("Content-Type", "APPLICATION/SDP"),
        ], body=build_sdp(answer))
        if peer.transport is Transport.UDP:
            self._spawn(self._retransmit_until_ack(session, response))
        return response

    def _live_source(self) -> tuple[Path | None, MediaFacts | None]:
        if self.settings.live_file is not None:
            found = next((r for r in self._recordings if r.path == self.settings.live_file), None)
            if found is not None:
                return found.path, found.facts
        if self._recordings:
            return self._recordings[0].path, self._recordings[0].facts
        return None, None

    async def _retransmit_until_ack(self, session: MediaSession, response: SipResponse) -> None:
        """RFC 3261 13.3.1.4: the 2xx of an INVITE goes again from T1 doubling to T2 until the ACK."""
        interval = self._timers.t1_s
        waited = 0.0
        while waited < self._timers.transaction_timeout_s:
            try:
                await asyncio.wait_for(session.acked.wait(), interval)
                return
            except TimeoutError:
                pass
            if session.ended.is_set():
                return
            waited += interval
            interval = min(interval * 2, self._timers.t2_s)
            if self._transport is not None:
                with contextlib.suppress(SipTransportError, OSError):
                    self._transport.send_response(response, session.peer)
        log.warning("device %s: no ACK for the 200 of %s", self.settings.device_id, session.call_id)
        await self._end_session(session, "no ACK")

    # -- streaming -----------------------------------------------------------------------------------------

    def _frames(self, session: MediaSession) -> AsyncIterator[MediaFrame]:
        if session.recording is not None:
            return read_frames(session.recording.path, session.recording.facts)
        path, facts = self._live_source()
        return _looped(path, facts)

    async def _stream(self, session: MediaSession) -> None:
        try:
            await self._send_stream(session)
        finally:
            if not session.ended.is_set():
                # The platform should now send BYE; one that never does must not hold a session slot for
                # ever (a broken or dead stream included: its dialog lives on until BYE, as on devices).
                self._spawn(self._expire_after(session, self.settings.bye_wait_s))

    async def _send_stream(self, session: MediaSession) -> None:
        s = self.settings
        self.session_started.set()
        try:
            await session.outlet.open()
            stats = await session.sender.run(self._frames(session))
        except OutletError as exc:
            log.warning("device %s: stream %s broke: %s", s.device_id, session.call_id, exc)
            session.end_reason = f"media error: {exc}"
            await session.outlet.close(abort=True)
            return
        if stats.died:
            session.end_reason = "died mid-stream"
            await session.outlet.close(abort=True)
            return
        await session.outlet.close()
        session.end_reason = "end of file"
        if session.kind is not SessionKind.PLAY and not s.has(Fault.NO_121):
            await self._send_media_status(session)

    async def _expire_after(self, session: MediaSession, wait_s: float) -> None:
        try:
            await asyncio.wait_for(session.ended.wait(), wait_s)
        except TimeoutError:
            log.warning("device %s: no BYE %g s after the end of %s", self.settings.device_id, wait_s,
                        session.call_id)
            await self._end_session(session, "no BYE after the end")

    async def _send_media_status(self, session: MediaSession) -> None:
        """MediaStatus 121 inside the INVITE dialog (GB/T 28181 9.9.2 m, J.14.17)."""
        s = self.settings
        invite = session.invite
        session.local_cseq += 1
        contacts = invite.contacts
        target = contacts[0].uri if contacts else str(invite.from_.sip_uri)
        body = manscdp.build_media_status(self._next_sn(), session.channel_id, charset=self._charset)
        req = request("MESSAGE", target, [
            ("From", str(invite.to.with_tag(session.local_tag))),
            ("To", invite.headers.get("From") or ""),
            ("Call-ID", session.call_id),
            ("CSeq", f"{session.local_cseq} MESSAGE"),
            ("Max-Forwards", "70"),
            ("User-Agent", USER_AGENT),
            ("Content-Type", MANSCDP_CONTENT_TYPE),
        ], body)
        assert self._transport is not None
        try:
            response = await self._transport.request(req, session.peer)
        except (SipTransportError, SipProtocolError, OSError) as exc:
            log.warning("device %s: MediaStatus 121 not delivered: %s", s.device_id, exc)
            return
        session.sent_121 = True
        log.info("device %s: MediaStatus 121 for %s answered %d", s.device_id, session.call_id,
                 response.status)

    async def _end_session(self, session: MediaSession, reason: str) -> None:
        if session.ended.is_set():
            return
        session.ended.set()
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task
        await session.outlet.close()
        if not session.end_reason:
            session.end_reason = reason
        self.sessions.pop(session.call_id, None)
        if self._transport is not None:
            self._transport.remove_dialog(session.call_id, session.local_tag)
        self.finished_sessions.append(session)


def _subject_sender(req: SipRequest) -> str:
    """The sender part (`channel:sequence`) of a `Subject: sender:seq,receiver:seq` (Annex K), or ""."""
    subject = req.headers.get("Subject") or ""
    return subject.split(",", 1)[0].strip()


async def _looped(path: Path | None, facts: MediaFacts | None) -> AsyncIterator[MediaFrame]:
    """Live video: the file again and again with timestamps running on, or testsrc without a file."""
    offset = 0
    frame_ticks = round(CLOCK_HZ / (facts.frame_rate if facts else Fraction(25)))
    while True:
        last = 0
        count = 0
        frames = read_frames(path, facts)
        try:
            async for frame in frames:
                count += 1
                pts = frame.pts + offset
                dts = frame.dts + offset if frame.dts is not None else None
                # The next round starts after this one's last picture and its last sound, whichever ends
                # later: its audio never overlaps this one's.
                end = pts + (round(len(frame.data) * CLOCK_HZ / AUDIO_RATE_HZ) - frame_ticks
                             if not frame.video else 0)
                last = max(last, end, dts or 0)
                yield replace(frame, pts=pts, dts=dts)
        finally:  # its ffmpeg stops with us, not whenever the generator is collected
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()
        if count == 0 or path is None:
            return
        offset = last + frame_ticks
