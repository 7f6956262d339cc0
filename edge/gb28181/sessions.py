"""Media sessions of the GB/T 28181 platform: INVITE for Play, Playback and Download, ACK, BYE, and the
end of a recording (MediaStatus 121) routed to its session (GB/T 28181-2016 9.2, 9.8, 9.9; Annex F, K, L).

The platform owns the signalling; the bytes are the media receiver's (GB_CONTRACT item 2): before the
INVITE, `open_receiver` (edge.gb28181.media, passed in so any implementation plugs in) gives a local port
for the offer's `m=` line, and is told the device's host (`expected_peer_host`: the source host of its last
authenticated REGISTER, where the INVITE goes), so that media from any other host is refused from the
moment the port is open; the answer's `c=` is only the device's claim (behind a NAT, a private address).
The offer (drivers.gb28181.sdp) carries `y=` (our SSRC: Annex F, history flag,
domain digits, a stream number drawn at random among those free), `t=` (Unix seconds for history),
`u=channel:0`, `a=downloadspeed` for Download, and for TCP `a=setup` (passive: we listen, the standard's
default; active: we connect) with `a=connection:new`. The Subject header names the channel with our SSRC
and the platform (Annex K), unique per session: a device that sees the same Subject twice restarts its
stream (Annex M c).

The 200 OK's SDP is parsed by hand (c=, m= port and protocol, a=setup, y=, a=filesize). The device's `y=`
wins over ours when it differs (devices and cross-domain platforms choose their own SSRC, research notes
6.3); when it is missing ours stands. Both are recorded in the session's result. For tcp-active the
receiver connects to the answer's port at the device's registered host; an answer whose `c=` names another
host (compared canonically: an IPv4-mapped IPv6 address is its IPv4 one, as a dual-stack socket reports an
IPv4 device) is recorded as `media_address_ignored`. Then the ACK goes out, and the session ends on the
first of: MediaStatus 121 in the dialog (or naming the device outside it, when it has one history
session), the receiver's end (idle, closed, limit, error), a BYE from the device, or `stop()`. After a 121
the receiver drains first (`MediaReceiver.drain`: until its media has been quiet for a moment, within the
session's bounds), since 121 says the device has read its file, not that its media has arrived. The platform
sends BYE unless the device did, then closes the receiver and returns its outcome.

A history session (Download, Playback) is bounded from above (`session_bounds`), each bound its own end
reason, so that whoever reads the result knows the recording did not end by itself:
* `past-end`: the received video's media time (the longest monotonic run of its PTS, the receiver's
  `video_run_span_s`) passes the recording's length (`t=` end - start) by `PAST_END_TOLERANCE_S` plus
  `PAST_END_TOLERANCE_SHARE` of the length: a device that keeps sending after the file (live, or the next
  file) would otherwise have that sealed as this recording;
* `time-limit`: the transfer stalled, or ran past a generous hard cap, on the monotonic clock. A stall:
  from the first packet on, each `PROGRESS_WINDOW_S` (60 s) must bring at least `MIN_PROGRESS_SHARE`
  (1/10) of it in video media time (`MIN_PROGRESS_S`, 6 s; the receiver's progress rule): a device that
  sends just enough never to go idle but whose video does not advance, or trickles, is stopped within a
  window or two, while one that delivers steadily however slowly above a tenth of real time is not
  (devices may ignore `a=downloadspeed`, research notes 9, and a 4G uplink may carry a high-bitrate
  recording at a quarter of real time: the simulator's `slow` fault). The hard cap,
  L x `TIME_LIMIT_FACTOR` (10) + `TIME_LIMIT_SLACK_S` (60 s, the INVITE and the start) for a recording of
  length L whatever the speed asked, is what a transfer at that slowest rate needs; it stops a device
  whose PTS makes progress without end (restarting over and over). No bytes at all is the idle timeout's.
  The receiver ends on both (its outcome says `past-end` or `time-limit`, the detail which rule); the
  platform also stops a session whose receiver outlived the hard cap by `TIME_LIMIT_GRACE_S`, whatever
  receiver it was given (it cannot see a stall: that is the receiver's).
Every history session has both: a recording listed shorter than `MIN_BOUNDED_LENGTH_S` (EndTime ==
StartTime: a file still being written, or an empty one) is bounded as that long. Live Play has neither bound.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from drivers.gb28181.sdp import (
    MediaTransport,
    SdpError,
    SessionDescription,
    SessionKind,
    Setup,
    build_sdp,
    history_offer,
    parse_sdp,
    play_offer,
)
from drivers.gb28181.sip import Dialog, SipProtocolError, SipRequest, SipResponse, request, response_to
from drivers.gb28181.sip_transport import Peer, RequestHandler, SipTransport, SipTransportError
from edge.custody.text import printable
from edge.gb28181.media import same_host

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
MAX_SHOWN_ADDRESS = 64


class MediaReceiver(Protocol):
    """The receiving end of one session (edge.gb28181.media.MediaReceiver, GB_CONTRACT item 2)."""

    @property
    def local_port(self) -> int: ...

    async def connect(self, remote_host: str, remote_port: int) -> None: ...

    def expect_ssrc(self, ssrc: int | None) -> None: ...  # the SSRC the device's answer named

    async def wait_closed(self) -> Any: ...  # MediaOutcome

    def close(self) -> Any: ...  # may be a coroutine function


class OpenReceiver(Protocol):
    """`edge.gb28181.media.open_receiver`."""

    def __call__(self, transport: Any, *, bind_host: str, port_range: tuple[int, int], ssrc: int | None,
                 raw_path: Path | None, idle_timeout_s: float, max_bytes: int, expected_peer_host: str | None,
                 max_media_span_s: float | None, time_limit_s: float | None, progress_window_s: float | None,
                 min_progress_s: float | None,
                 sink: Callable[[bytes], None] | None = None,
                 space: Any = None) -> Awaitable[MediaReceiver]: ...


class EndReason(StrEnum):
    FILE_END = "media status 121"
    RECEIVER_ENDED = "media ended"
    DEVICE_BYE = "device sent BYE"
    STOPPED = "stopped"
    PAST_END = "past-end"  # the video went past the recording's length (see the module docstring)
    TIME_LIMIT = "time-limit"  # the transfer stalled, or ran past the session's hard cap


PAST_END_TOLERANCE_S = 30.0
PAST_END_TOLERANCE_SHARE = 0.05
# The slowest transfer waited for is a tenth of real time: judged per window (the stall rule), and over the
# whole recording (the hard cap).
PROGRESS_WINDOW_S = 60.0
MIN_PROGRESS_SHARE = 0.1
TIME_LIMIT_FACTOR = 10.0
TIME_LIMIT_SLACK_S = 60.0
TIME_LIMIT_GRACE_S = 5.0
# The length a history session is bounded as when its range is shorter (or empty, or reversed): RecordInfo
# times have whole seconds, and devices list a file still being written, or an empty one, with EndTime ==
# StartTime; without a floor such an item would get no bound at all.
MIN_BOUNDED_LENGTH_S = 1


@dataclass(frozen=True)
class SessionBounds:
    """How much video a history session may bring (`max_media_span_s`), how much video it must bring per
    window of wall clock (`min_progress_s` per `progress_window_s`) and for how long it may run at most
    (`time_limit_s`, the hard cap); None: no bound (live Play)."""

    max_media_span_s: float | None = None
    time_limit_s: float | None = None
    progress_window_s: float | None = None
    min_progress_s: float | None = None


def session_bounds(kind: SessionKind, start_time: int, end_time: int, speed: int | None) -> SessionBounds:
    """The bounds of a session (pure; see the module docstring). Every history session has them: a length
    under `MIN_BOUNDED_LENGTH_S` (a recording listed with EndTime == StartTime) counts as that minimum."""
    if kind is SessionKind.PLAY:
        return SessionBounds()
    length = max(end_time - start_time, MIN_BOUNDED_LENGTH_S)
    # The speed asked does not shorten anything: devices may ignore it (research notes 9).
    return SessionBounds(
        max_media_span_s=length * (1 + PAST_END_TOLERANCE_SHARE) + PAST_END_TOLERANCE_S,
        time_limit_s=length * TIME_LIMIT_FACTOR + TIME_LIMIT_SLACK_S,
        progress_window_s=PROGRESS_WINDOW_S,
        min_progress_s=PROGRESS_WINDOW_S * MIN_PROGRESS_SHARE,
    )


class SessionError(Exception):
    """An INVITE that did not make a session; the message says why (status, SDP problem, timeout)."""


@dataclass(frozen=True)
class MediaRequest:
    """What to ask a device for. Times are Unix seconds (history only). `sink` (live Play, edge.gb28181.live)
    gets the PS bytes as they are taken, with `raw_path` None (no file) or beside it. `space`: a download's
    own booking on the raw PS's disk (edge.gb28181.media `ReceiverSpace`), passed to the receiver."""

    device_id: str
    channel_id: str
    kind: SessionKind
    transport: str  # udp | tcp-passive | tcp-active (edge.config.station.GbMediaTransport)
    raw_path: Path | None
    start_time: int = 0
    end_time: int = 0
    speed: int | None = None
    sink: Callable[[bytes], None] | None = None
    space: Any = None


@dataclass(frozen=True)
class SessionResult:
    """How a session went: why it ended, the SSRCs, and the receiver's `MediaOutcome` as it gave it."""

    call_id: str
    end_reason: EndReason
    ssrc_offered: int
    ssrc_answered: int | None
    ssrc_answer_text: str | None
    ssrc_used: int
    file_size_bytes: int | None
    outcome: Any
    media_address_ignored: str | None = None
    # The offset (device minus station) of the device clock that stamped the recording, when the platform
    # knows it (`GbPlatform.download`: from before the station set that clock, for what was recorded before).
    device_clock_offset_ms: int | None = None
    # Why `device_clock_offset_ms` is None when the platform could not tell (registry.ClockUnknown's value:
    # "ambiguous" for a stamp two clocks of the device made, "between-clocks", "not-measured",
    # "before-history", "zone-changed", "step-window-unknown" for a stamp of either clock around a step
    # whose time is not known; "unreadable-time"); None when the offset is given or nobody asked.
    device_clock_unknown: str | None = None
    # The session's bounds (`session_bounds`): past them it ended `past-end` or `time-limit`.
    max_media_span_s: float | None = None
    time_limit_s: float | None = None
    progress_window_s: float | None = None
    min_progress_s: float | None = None

    def facts(self) -> dict[str, Any]:
        """For the ledger entry of what the session brought (the `acquired` entry's source facts)."""
        return {
            "call_id": self.call_id, "end_reason": self.end_reason.value, "ssrc_offered": self.ssrc_offered,
            "ssrc_answered": self.ssrc_answered, "ssrc_answer_text": self.ssrc_answer_text,
            "ssrc_used": self.ssrc_used, "file_size_bytes": self.file_size_bytes,
            "media_address_ignored": self.media_address_ignored,
            "device_clock_offset_ms": self.device_clock_offset_ms,
            "device_clock_unknown": self.device_clock_unknown,
            "max_media_span_s": self.max_media_span_s, "time_limit_s": self.time_limit_s,
            "progress_window_s": self.progress_window_s, "min_progress_s": self.min_progress_s,
        }


@dataclass
class MediaSession:
    """One INVITE dialog and its receiver. `wait()` returns when it has ended; `stop()` ends it."""

    request: MediaRequest
    call_id: str
    ssrc_offered: int
    receiver: MediaReceiver
    dialog: Dialog | None = None
    answer: SessionDescription | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: EndReason | None = None
    result: SessionResult | None = None
    media_address_ignored: str | None = None  # tcp-active: the answer's c= when it was not the device's
    bounds: SessionBounds = field(default_factory=SessionBounds)
    _done: asyncio.Future[SessionResult] | None = None

    @property
    def ssrc_answered(self) -> int | None:
        return None if self.answer is None else self.answer.ssrc

    def end(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.ended.set()

    def stop(self) -> None:
        self.end(EndReason.STOPPED)

    async def wait(self) -> SessionResult:
        assert self._done is not None
        return await asyncio.shield(self._done)


def offer_for(req: MediaRequest, *, owner_id: str, address: str, port: int, ssrc: int) -> SessionDescription:
    """The platform's SDP offer for `req` (pure)."""
    if req.transport == "udp":
        media_transport, setup = MediaTransport.UDP, None
    elif req.transport == "tcp-passive":
        media_transport, setup = MediaTransport.TCP, Setup.PASSIVE
    elif req.transport == "tcp-active":
        media_transport, setup = MediaTransport.TCP, Setup.ACTIVE
    else:
        raise SessionError(f"media transport {req.transport!r} is not udp, tcp-passive or tcp-active")
    if req.kind is SessionKind.PLAY:
        return play_offer(owner_id=owner_id, address=address, port=port, ssrc=ssrc, transport=media_transport,
                          setup=setup)
    return history_offer(
        req.kind, owner_id=owner_id, channel_id=req.channel_id, address=address, port=port, ssrc=ssrc,
        start_time=req.start_time, stop_time=req.end_time, transport=media_transport, setup=setup,
        download_speed=req.speed if req.kind is SessionKind.DOWNLOAD else None,
    )


def _receiver_end(done: asyncio.Future[Any]) -> EndReason:
    """Why the session ended, as the receiver's outcome says (its bounds are the session's)."""
    outcome = None if done.cancelled() or done.exception() is not None else done.result()
    ended = str(getattr(outcome, "ended", ""))
    if ended == EndReason.PAST_END.value:
        return EndReason.PAST_END
    if ended == EndReason.TIME_LIMIT.value:
        return EndReason.TIME_LIMIT
    return EndReason.RECEIVER_ENDED


async def _drain_receiver(receiver: MediaReceiver) -> None:
    """The receiver's `drain()` when it has one (a stand-in receiver may not)."""
    drain = getattr(receiver, "drain", None)
    if drain is not None:
        draining = drain()
        if inspect.isawaitable(draining):
            await draining


async def _close_receiver(receiver: MediaReceiver) -> None:
    closing = receiver.close()
    if inspect.isawaitable(closing):
        await closing


class SessionManager:
    """Opens and tracks the platform's media sessions over `transport`."""

    def __init__(self, *, transport: SipTransport, sip_id: str, domain: str, advertised_host: str,
                 open_receiver: OpenReceiver | None, media_host: str, port_range: tuple[int, int],
                 idle_timeout_s: float, max_bytes: int,
                 on_change: Callable[[MediaSession, str], None] = lambda s, state: None) -> None:
        self.transport = transport
        self._sip_id = sip_id
        self._domain = domain
        self._advertised_host = advertised_host
        self._open_receiver = open_receiver
        self._media_host = media_host
        self._port_range = port_range
        self._idle_timeout_s = idle_timeout_s
        self._max_bytes = max_bytes
        self._on_change = on_change
        self.sessions: dict[str, MediaSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _next_ssrc(self, history: bool) -> int:
        """Annex F: history flag, domain digits, then a stream number; ours is drawn at random (not the
        next of a counter), so the SSRC of a session is not known to whoever saw the previous one."""
        used = {s.ssrc_offered for s in self.sessions.values()}
        prefix = f"{1 if history else 0}{self._sip_id[3:8]}"
        for _ in range(100):
            ssrc = int(f"{prefix}{secrets.randbelow(10000):04d}")
            if ssrc not in used:
                return ssrc
        for number in range(10000):  # nearly all taken: the first free one
            ssrc = int(f"{prefix}{number:04d}")
            if ssrc not in used:
                return ssrc
        raise SessionError("10000 sessions in progress: no SSRC left")

    async def start(self, req: MediaRequest, device: Peer) -> MediaSession:
        """INVITE the device at `device` (its registered source address) and return the running session;
        `SessionError` when there is none (refused, unreadable answer, no answer)."""
        if self._open_receiver is None:
            raise SessionError("no media receiver is available to this platform")
        history = req.kind is not SessionKind.PLAY
        ssrc = self._next_ssrc(history)
        bounds = session_bounds(req.kind, req.start_time, req.end_time, req.speed)
        # Passed only when there is one, so a receiver without the hook still serves downloads.
        hooks: dict[str, Any] = {} if req.sink is None else {"sink": req.sink}
        if req.space is not None:
            hooks["space"] = req.space
        try:
            # Media only from the host the device registered from (its REGISTER passed digest; the answer's
            # c= is the device's claim, a private address behind a NAT), from the moment the port is open.
            receiver = await self._open_receiver(
                req.transport, bind_host=self._media_host, port_range=self._port_range, ssrc=ssrc,
                raw_path=req.raw_path, idle_timeout_s=self._idle_timeout_s, max_bytes=self._max_bytes,
                expected_peer_host=device.host, max_media_span_s=bounds.max_media_span_s,
                time_limit_s=bounds.time_limit_s, progress_window_s=bounds.progress_window_s,
                min_progress_s=bounds.min_progress_s, **hooks,
            )
        except Exception as exc:  # the receiver's own error (no free port, the raw file exists ...)
            raise SessionError(f"{req.kind} of {req.channel_id}: no media receiver: {exc}") from exc
        call_id = f"{secrets.token_hex(12)}@{self._sip_id}"
        session = MediaSession(req, call_id, ssrc, receiver, bounds=bounds)
        local_tag = secrets.token_hex(6)
        try:
            await self._invite(session, device, local_tag)
        except BaseException:
            self.transport.remove_dialog(call_id, local_tag)
            self.sessions.pop(call_id, None)
            self._on_change(session, "ended")
            await _close_receiver(receiver)
            raise
        session._done = asyncio.ensure_future(self._run(session, device, local_tag))
        self._tasks.add(session._done)
        session._done.add_done_callback(self._tasks.discard)
        return session

    async def _invite(self, session: MediaSession, device: Peer, local_tag: str) -> None:
        req = session.request
        address = self._advertised_host or self.transport.local_host_for(device)
        offer = offer_for(req, owner_id=self._sip_id, address=address, port=session.receiver.local_port,
                          ssrc=session.ssrc_offered)
        body = build_sdp(offer)
        uri = f"sip:{req.channel_id}@{device.host}:{device.port}"
        invite = request("INVITE", uri, [
            ("From", f"<sip:{self._sip_id}@{self._domain}>;tag={local_tag}"),
            ("To", f"<sip:{req.channel_id}@{self._domain}>"),
            ("Call-ID", session.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:{self._sip_id}@{address}:{self.transport.port}>"),
            ("Max-Forwards", "70"),
            ("Subject", f"{req.channel_id}:{offer.ssrc_text},{self._sip_id}:0"),
            ("Content-Type", "APPLICATION/SDP"),
        ], body)
        self.sessions[session.call_id] = session
        # In-dialog requests (MediaStatus, BYE) may come before our ACK has left: route them from now on.
        self.transport.add_dialog(session.call_id, local_tag, self._dialog_handler(session))
        self._on_change(session, "inviting")
        try:
            ok = await self.transport.request(invite, device)
        except SipTransportError as exc:
            raise SessionError(f"INVITE {req.kind} of {req.channel_id}: {exc}") from None
        if not 200 <= ok.status < 300:
            raise SessionError(f"INVITE {req.kind} of {req.channel_id}: device answered {ok.status} "
                               f"{printable(ok.reason[:80])}")
        try:
            session.dialog = Dialog.from_2xx(invite, ok)
        except SipProtocolError as exc:
            raise SessionError(f"INVITE {req.kind} of {req.channel_id}: unusable 200 OK: {exc}") from None
        await self.transport.send_ack(session.dialog.ack(), device)
        try:
            session.answer = parse_sdp(ok.body)
            await self._connect(session, device)
        except (SdpError, SessionError, OSError) as exc:
            await self._bye(session, device)
            raise SessionError(f"INVITE {req.kind} of {req.channel_id}: {exc}") from None
        answered = session.answer.ssrc
        if answered is None:
            log.info("device %s channel %s answered without y=: SSRC %d (ours) stands",
                     printable(req.device_id), printable(req.channel_id), session.ssrc_offered)
        elif answered != session.ssrc_offered:
            log.info("device %s channel %s answered SSRC %d, not the %d offered: the device's is used",
                     printable(req.device_id), printable(req.channel_id), answered, session.ssrc_offered)
            session.receiver.expect_ssrc(answered)  # it filtered on ours until now
        self._on_change(session, "streaming")

    async def _connect(self, session: MediaSession, device: Peer) -> None:
        answer = session.answer
        assert answer is not None
        video = answer.video
        if session.request.transport == "tcp-active":
            if not video.is_tcp or not 0 < video.port < 65536:
                raise SessionError("tcp-active answer without a TCP port to connect to")
            named = answer.media_address(video)
            if named is None or not same_host(named, device.host):
                # The station connects only to where the device's signalling comes from: an answer naming
                # another address (or a host name) would otherwise aim the station at any host and port.
                # Compared canonically: on a dual-stack socket an IPv4 device registers as ::ffff:a.b.c.d
                # and answers with a.b.c.d, its own address.
                session.media_address_ignored = printable((named or "(none)")[:MAX_SHOWN_ADDRESS])
                log.warning("device %s channel %s: its answer names media address %s; connecting to its "
                            "source address %s instead", printable(session.request.device_id),
                            printable(session.request.channel_id), session.media_address_ignored, device.host)
            await session.receiver.connect(device.host, video.port)

    def _dialog_handler(self, session: MediaSession) -> RequestHandler:
        async def handle(req: SipRequest, peer: Peer) -> SipResponse | None:
            if req.method == "ACK":
                return None
            if req.method == "BYE":
                session.end(EndReason.DEVICE_BYE)
                return response_to(req, 200)
            if req.method == "MESSAGE":
                return self._in_dialog_message(session, req)
            if req.method == "INFO":
                return response_to(req, 200)
            return response_to(req, 405, headers=[("Allow", "ACK, BYE, MESSAGE, INFO")])
        return handle

    def _in_dialog_message(self, session: MediaSession, req: SipRequest) -> SipResponse:
        from drivers.gb28181.manscdp import ManscdpError, MediaStatus, parse_message

        try:
            message = parse_message(req.body)
        except ManscdpError as exc:
            log.warning("device %s session %s: unreadable in-dialog MESSAGE: %s",
                        printable(session.request.device_id), printable(session.call_id), printable(str(exc)))
            return response_to(req, 400)
        if isinstance(message.payload, MediaStatus) and message.payload.is_file_end:
            session.end(EndReason.FILE_END)
        return response_to(req, 200)

    def media_status_for_device(self, device_id: str) -> MediaSession | None:
        """A MediaStatus 121 that came outside any dialog: the device's one history session, if it has one."""
        history = [s for s in self.sessions.values() if s.request.device_id == device_id
                   and s.request.kind is not SessionKind.PLAY and s.end_reason is None]
        return history[0] if len(history) == 1 else None

    async def _run(self, session: MediaSession, device: Peer, local_tag: str) -> SessionResult:
        receiver_done = asyncio.ensure_future(session.receiver.wait_closed())
        ended = asyncio.ensure_future(session.ended.wait())
        limit = session.bounds.time_limit_s
        try:
            await asyncio.wait({receiver_done, ended}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=None if limit is None else limit + TIME_LIMIT_GRACE_S)
            if receiver_done.done():
                session.end(_receiver_end(receiver_done))
            elif not session.ended.is_set():
                session.end(EndReason.TIME_LIMIT)  # a receiver that did not keep the hard cap itself
            self._on_change(session, "ending")
            if session.end_reason is EndReason.FILE_END and not receiver_done.done():
                # 121 says the device has read its file, not that its media has arrived: over a slow uplink
                # the rest is still coming, and a BYE now would stop it (review 22). Received until quiet,
                # within the session's own bounds (the receiver's), then BYE.
                await _drain_receiver(session.receiver)
            if session.end_reason is not EndReason.DEVICE_BYE:
                await self._bye(session, device)
        finally:
            ended.cancel()
            # Whatever happened to the BYE (cancelled by a stopping station too), the receiver is closed
            # and its file finished: what came is kept.
            await _close_receiver(session.receiver)
            self.transport.remove_dialog(session.call_id, local_tag)
            self.sessions.pop(session.call_id, None)
            self._on_change(session, "ended")
        outcome = await receiver_done
        assert session.end_reason is not None
        answer = session.answer
        answered = session.ssrc_answered
        result = SessionResult(
            call_id=session.call_id, end_reason=session.end_reason, ssrc_offered=session.ssrc_offered,
            ssrc_answered=answered, ssrc_answer_text=None if answer is None else answer.ssrc_text,
            ssrc_used=answered if answered is not None else session.ssrc_offered,
            file_size_bytes=None if answer is None else answer.video.file_size_bytes, outcome=outcome,
            media_address_ignored=session.media_address_ignored,
            max_media_span_s=session.bounds.max_media_span_s, time_limit_s=session.bounds.time_limit_s,
            progress_window_s=session.bounds.progress_window_s, min_progress_s=session.bounds.min_progress_s,
        )
        session.result = result
        log.info("device %s channel %s %s session %s ended: %s", printable(session.request.device_id),
                 printable(session.request.channel_id), session.request.kind, printable(session.call_id),
                 session.end_reason)
        return result

    async def _bye(self, session: MediaSession, device: Peer) -> None:
        if session.dialog is None:
            return
        session.dialog, bye = session.dialog.request("BYE")
        try:
            response = await self.transport.request(bye, device)
        except SipTransportError as exc:
            log.warning("BYE of session %s to %s: %s", printable(session.call_id), device, exc)
            return
        if response.status >= 300:
            log.info("BYE of session %s answered %d", printable(session.call_id), response.status)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop every session (BYE, receiver closed); a device that does not answer its BYE is given up on
        after `timeout_s`, so a stopping station is not held for a transaction's 32 s."""
        for session in list(self.sessions.values()):
            session.stop()
        tasks = list(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
