"""Live video of GB/T 28181 channels as a stream other parts of the agent record (the rooms' capture reads it
with ffmpeg): one Play session per channel, fanned out to every consumer, kept up through interruptions.

`LiveStreams` sits beside the platform (edge.gb28181.platform). `open(device_id, channel_id)` gives a
`LiveHandle`, an async context manager; both ids must be 20 digits (`LiveError` otherwise, before anything
is sent). While a channel has a holder (an entered handle, or a connection to its socket), one Play session
(INVITE s=Play, edge.gb28181.sessions) runs for it, however many consume it. The PS bytes, as received (in
order, after the RTP reorder buffer: the media receiver's sink, edge.gb28181.media), go to every consumer:

* its Unix socket, `<socket_dir>/<device_id>-<channel_id>.sock` (`handle.socket_path`): the directory is
  made 0700, the socket 0600, so only the agent's own user (its ffmpeg) connects; its name is made of the
  validated ids alone. A directory that exists must be the agent's and 0700 (it is never chmod'ed), and
  every directory above it safe from other users (`check_socket_parents`), or no channel opens. Each
  connection is a consumer; ffmpeg reads one with `-f mpeg -i unix:PATH`. The socket exists while the
  channel is open, and is removed when it stops.
* `handle.reader()`: an in-process consumer (`LiveReader.read()`, or `async for`). Its b"" is its end and
  nothing else: no chunk it reads is empty.

Media is bytes of PS. An RTP packet with no payload (header only, or all padding: RFC 6263's keepalive, or
a hostile sender) is none: the media receiver counts it and drops it (`empty_packets` in the channel's view
and its `session_stopped`), so it never reaches a consumer, never ends a reader, and never resets the stall
clock: a device sending only such packets is stalled (review rev11f).

`handle.streaming` / `await handle.wait_streaming()` say whether media flows now (a recorder starts its
ffmpeg then); `handle.state` and `handle.interruptions` what the channel went through so far;
`handle.stalled_since()` when media last came, while a stall is in progress (a stall is told only once
media comes again: a holder that stops meanwhile asks).

A consumer begins at the first key frame after it joined (a pack whose pack header is followed by a system
header or a PSM, GB/T 28181 Annex C.1; after `JOIN_WAIT_PACKS` packs without one, at a pack header), so what
it gets decodes from its first byte. Each has its own bounded buffer (`consumer_buffer_bytes`): one that
falls that far behind is cut off (its connection closed, its reader ended with the reason, an `error` ledger
entry); it never grows memory, and never slows the others or the receiver, which only append to buffers.

Interruptions. When the Play ends while the channel is held (the device's BYE, its stream ending or going
idle for the platform's idle timeout, the device going offline), the channel is *interrupted* at once (not
after the platform's BYE, which a vanished device never answers: it goes on in the background): every
consumer is ended after the last byte before it (a socket connection is closed: ffmpeg sees the end of its
input and finishes its file), and the Play is INVITEd again with backoff (`retry_min_s` doubling to
`retry_max_s`; at once when the device comes online again; back to `retry_min_s` after a Play whose media
flowed `STABLE_S`, first to last packet). When media flows again the channel has
*resumed*: new consumers (ffmpeg connecting again, `handle.reader()` again) get the stream from its first key
frame. Each interruption is an `Interruption` (from: when the last packet before it arrived, not when the
reorder buffer gave its bytes out; to: the first byte after it; reason; both station wall-clock times, the
only use of the wall clock here: every duration (stalls, backoff, the stable Play, loss and report
spacing) is measured on the monotonic clock, so a step of the station's clock is no stall, review 21),
told to every handle
(`next_event()`, `add_listener`) and to `LiveStreams.add_listener` as
`LiveEvent`s: started (media first flows), interrupted, resumed, stopped, consumer cut off, stalled (media
stopped `stall_s` and came again in the same Play), media lost (RTP packets lost, their bytes not in the
stream). An INVITE that fails or brings no media does not end an interruption; it is the channel's
`last_problem`, and an `error` ledger entry: once before the first media, and during an interruption the
first, then one per `RETRY_REPORT_S` with the count.

When the last holder leaves, the Play lingers `linger_s` (a recorder restarting ffmpeg keeps it), then the
platform sends BYE and the socket is removed.

Ledger (through `record`, kept to the existing entry types with `"source": "gb28181"` and `"live"` naming the
event): `session_started` (live "started"; live "resumed" with the gap's from, to, reason and the failed
attempts), `gap` (live "interrupted": from, detected_at, reason, the Play's lost packets and first lost RTP
ranges; live "lost": packets lost while the Play goes on, at most one per `LOSS_REPORT_S`; live "stalled":
from, to, seconds, at most one per `STALL_REPORT_S`), `session_stopped` (live "stopped": why, since,
interruptions, bytes, lost packets, stalls; written before the connections drain, and an INVITE in flight
is cancelled at once, so a stop fits in the supervisor's stop timeout), `error` (stage "gb28181-live": a
consumer cut off, a channel whose Play does not start, re-INVITEs failing during an interruption).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from drivers.gb28181.sdp import SessionKind
from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.gb28181.platform import GbPlatform
from edge.gb28181.registry import wall_text
from edge.gb28181.sessions import EndReason, MediaRequest, MediaSession, SessionError, SessionResult

log = logging.getLogger(__name__)

SOURCE = "gb28181"
GB_ID = re.compile(r"[0-9]{20}")
TRANSPORTS = ("udp", "tcp-passive", "tcp-active")
SOCKET_SUFFIX = ".sock"
MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with its terminating NUL
SOCKET_NAME_BYTES = 20 + 1 + 20 + len(SOCKET_SUFFIX)
MAX_REASON_CHARS = 300
MAX_KEPT_INTERRUPTIONS = 100  # per channel, for the operator view (all are counted, and on the ledger)
MAX_QUEUED_EVENTS = 1000  # per handle: a holder that never reads its events loses the oldest
READ_BYTES = 256 * 1024  # one read() joins at most this much of what is buffered
JOIN_WAIT_PACKS = 300  # packs a joining consumer waits for a key frame before it starts at any pack
LOSS_CHECK_S = 1.0  # how often the receiver's loss count is looked at while media flows
LOSS_REPORT_S = 10.0  # at most one `gap` entry ("lost") per channel per this long; the rest add up
STALL_REPORT_S = 60.0  # at most one `gap` entry ("stalled") per channel per this long; the rest are counted
RETRY_REPORT_S = 60.0  # interrupted: the first failed re-INVITE on the ledger, then one per this long
MAX_SHOWN_RTP_GAPS = 20  # lost RTP ranges named in an interruption's entry (all are counted)
STABLE_S = 10.0  # a Play whose media flowed this long (first to last packet) starts the backoff again
END_GRACE_S = 3.0  # after a Play ended, how long its receiver may drain (DRAIN_S) before the channel goes on
# A stop fits in the supervisor's stop timeout (10 s): an INVITE in flight is cancelled at once, a Play gets
# this long to end (its receiver's drain, END_GRACE_S; never its BYE's transaction), the connections
# STOP_DRAIN_S, and session_stopped is written before the connections drain.
STOP_TIMEOUT_S = 5.0
STOP_DRAIN_S = 2.0
PACK_HEADER = b"\x00\x00\x01\xba"
KEY_FOLLOWERS = (b"\x00\x00\x01\xbb", b"\x00\x00\x01\xbc")  # system header, PSM

Record = Callable[[str, dict[str, Any]], object]


class LiveError(Exception):
    """A live channel that cannot be opened; the message says why (bad id, socket, closed)."""


class LiveEventKind(StrEnum):
    STARTED = "started"
    INTERRUPTED = "interrupted"
    RESUMED = "resumed"
    STOPPED = "stopped"
    CONSUMER_CUT_OFF = "consumer cut off"
    STALLED = "stalled"  # media stopped `stall_s` or longer, then came again in the same Play
    MEDIA_LOST = "media lost"  # RTP packets lost while the Play goes on (their bytes are not in the stream)


@dataclass(frozen=True)
class Interruption:
    """A stretch without media: from the last byte before it to the first after it (station UTC, ISO 8601
    with microseconds); `to` is None while it lasts (and the stop time if the channel stopped in it)."""

    began_at: str
    detected_at: str
    reason: str
    ended_at: str | None = None

    def view(self) -> dict[str, Any]:
        return {"from": self.began_at, "to": self.ended_at, "detected_at": self.detected_at,
                "reason": self.reason}


@dataclass(frozen=True)
class LiveEvent:
    """Something that happened to a live channel. `interruption`: the one that began (interrupted) or ended
    (resumed, or stopped while interrupted)."""

    kind: LiveEventKind
    device_id: str
    channel_id: str
    at: str
    reason: str = ""
    interruption: Interruption | None = None


@dataclass(frozen=True)
class LiveSettings:
    """From [gb28181.live] (edge.config.station) or a test."""

    socket_dir: Path
    transport: str = "tcp-passive"
    linger_s: float = 5.0
    consumer_buffer_bytes: int = 8 * 1024 * 1024
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    max_channels: int = 64
    stall_s: float = 2.0  # media stopping this long (and coming again) in a Play is a recorded stall

    @classmethod
    def from_config(cls, section: Any) -> LiveSettings:
        """From a validated `Gb28181LiveSection`."""
        return cls(socket_dir=Path(section.socket_dir), transport=str(section.media_transport),
                   linger_s=section.linger_s, consumer_buffer_bytes=section.consumer_buffer_kb * 1024,
                   retry_min_s=section.retry_min_s, retry_max_s=section.retry_max_s,
                   max_channels=section.max_channels, stall_s=section.stall_s)


def key_pack_at(data: bytes, start: int = 0) -> tuple[int | None, int]:
    """(where the first pack of a key frame begins in `data`, or None; pack headers seen before it). A key
    frame's pack has a system header or a PSM right after its pack header (GB/T 28181 Annex C.1)."""
    seen = 0
    at = data.find(PACK_HEADER, start)
    while at >= 0:
        seen += 1
        length = _pack_header_length(data, at)
        if length and data[at + length:at + length + 4] in KEY_FOLLOWERS:
            return at, seen - 1
        at = data.find(PACK_HEADER, at + 4)
    return None, seen


def _pack_header_length(data: bytes, at: int) -> int:
    """The pack header's length at `at` (MPEG-2 with its stuffing, or MPEG-1); 0 if unknown here."""
    if len(data) < at + 5:
        return 0
    if data[at + 4] & 0xC4 == 0x44:
        return 14 + (data[at + 13] & 0x07) if len(data) >= at + 14 else 0
    return 12 if data[at + 4] & 0xF1 == 0x21 else 0


def _unsafe_directory(path: Path, facts: os.stat_result) -> str | None:
    """Why another local user could replace what is at `path` (a directory on the way to the live sockets,
    or a symlink there), or None: it must belong to root or the agent's user and, unless it is a sticky
    directory (/tmp: nobody renames another's entry), be writable by nobody else (sshd's StrictModes)."""
    if facts.st_uid not in (0, os.geteuid()):
        return f"{path} belongs to uid {facts.st_uid}, not to root or the agent's user"
    if stat.S_ISLNK(facts.st_mode):
        return None
    if not stat.S_ISDIR(facts.st_mode):
        return f"{path} is not a directory"
    mode = stat.S_IMODE(facts.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"{path} is writable by other users (mode {mode:04o})"
    return None


def check_socket_parents(directory: Path) -> None:
    """`LiveError` unless every existing directory above `directory` (as written, and as symlinks resolve
    it) is safe from other local users (`_unsafe_directory`): a consumer connects by path, and whoever can
    rename a directory on that path can put their own socket, and their own video, in its place."""
    chains = [directory]
    real = Path(os.path.realpath(directory))
    if real != directory:
        chains.append(real)
    for chain in chains:
        for ancestor in reversed(chain.parents):
            try:
                facts = os.lstat(ancestor)
            except FileNotFoundError:
                break  # the rest is made by the agent
            problem = _unsafe_directory(ancestor, facts)
            if problem is not None:
                raise LiveError(f"live socket directory {directory} is not safe: {problem}")


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Done callback of a session or receiver the channel no longer waits for: its failure, if any, is
    logged by the platform; here it is only retrieved."""
    if not future.cancelled():
        future.exception()


def _shown(text: str) -> str:
    return printable(text[:MAX_REASON_CHARS])


class LiveReader:
    """One consumer of a live channel: one uninterrupted stretch of its PS, from a key frame to an
    interruption, a cut-off, its close or the channel's stop. `read()` returns b"" at the end; `ended` says
    why (`cut_off` when it fell too far behind)."""

    def __init__(self, channel: _Channel, *, limit_bytes: int, what: str,
                 on_end: Callable[[], None] = lambda: None) -> None:
        self._channel = channel
        self._limit = limit_bytes
        self.what = what
        self._on_end = on_end
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._joined = False
        self._packs_waited = 0
        self._wake = asyncio.Event()
        self.ended: str | None = None
        self.cut_off = False
        self.bytes_taken = 0

    def __repr__(self) -> str:
        return f"LiveReader({self.what}, {self._channel.device_id}/{self._channel.channel_id})"

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def _offer(self, data: bytes) -> None:
        """The channel's fan-out: never blocks, never buffers past the limit. Empty data is not queued: a
        b"" from `read()` is the end alone."""
        if self.ended is not None or not data:
            return
        if not self._joined:
            at, seen = key_pack_at(data)
            self._packs_waited += seen
            if at is None and self._packs_waited >= JOIN_WAIT_PACKS:
                at = data.find(PACK_HEADER)  # no key frame marks: start at a pack
            if at is None or at < 0:
                return
            self._joined = True
            data = data[at:]
        if self._buffered + len(data) > self._limit:
            self._cut(f"cut off: more than {self._limit} bytes behind the live stream (a consumer too slow)")
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_taken += len(data)
        self._wake.set()

    def _cut(self, reason: str) -> None:
        self.cut_off = True
        self._chunks.clear()  # given back at once: what a slow consumer missed is lost to it anyway
        self._buffered = 0
        self._end(reason)
        self._channel._consumer_cut_off(self, reason)

    def _end(self, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = reason
        self._wake.set()
        self._channel._detach(self)
        self._on_end()

    async def read(self) -> bytes:
        """The next bytes (what is buffered, up to `READ_BYTES`), waiting for them; b"" at the end."""
        while not self._chunks:
            if self.ended is not None:
                return b""
            self._wake.clear()
            await self._wake.wait()
        parts = [self._chunks.popleft()]
        size = len(parts[0])
        while self._chunks and size + len(self._chunks[0]) <= READ_BYTES:
            chunk = self._chunks.popleft()
            parts.append(chunk)
            size += len(chunk)
        self._buffered -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """The consumer leaves."""
        self._chunks.clear()
        self._buffered = 0
        self._end("closed by its consumer")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk


class LiveHandle:
    """A holder of a live channel (see the module docstring): `async with streams.open(...) as handle:`."""

    def __init__(self, streams: LiveStreams, device_id: str, channel_id: str, transport: str) -> None:
        self._streams = streams
        self.device_id = device_id
        self.channel_id = channel_id
        self.transport = transport
        self.socket_path = streams.socket_path(device_id, channel_id)
        self._channel: _Channel | None = None
        self._readers: set[LiveReader] = set()
        self._events: deque[LiveEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._event_arrived = asyncio.Event()
        self._listeners: list[Callable[[LiveEvent], None]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"LiveHandle({self.device_id}/{self.channel_id})"

    async def __aenter__(self) -> LiveHandle:
        if self._channel is not None or self._closed:
            raise LiveError("a live handle is entered once")
        self._channel = await self._streams._acquire(self)
        self.transport = self._channel.transport
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave the channel (its readers end); the Play stops after the linger if nobody else holds it."""
        if self._closed:
            return
        self._closed = True
        for reader in list(self._readers):
            reader._end("its live handle was closed")
        if self._channel is not None:
            self._channel.handles.discard(self)
            self._streams._release(self._channel)

    def _held(self) -> _Channel:
        if self._channel is None or self._closed:
            raise LiveError("the live handle is not open (use it inside `async with`)")
        return self._channel

    @property
    def state(self) -> str:
        """starting | streaming | interrupted | stopping | stopped"""
        return self._held().state if not self._closed else "closed"

    @property
    def interruptions(self) -> list[Interruption]:
        """The channel's interruptions so far (the last `MAX_KEPT_INTERRUPTIONS`), the open one last."""
        channel = self._held()
        return [*channel.interruptions, *([channel.open_interruption] if channel.open_interruption else [])]

    @property
    def streaming(self) -> bool:
        return self._held().streaming.is_set()

    def stalled_since(self) -> str | None:
        """When media last came (station UTC, ISO 8601), while it has not come for `stall_s` or longer in
        a Play that goes on: a stall in progress (told as `stalled` only once media comes again, so a
        holder that stops meanwhile asks); None otherwise."""
        return self._held().stalled_since()

    async def wait_streaming(self) -> None:
        """Until media flows (at once if it does): the moment to start a recorder on the socket. A stop
        meanwhile raises `LiveError`."""
        channel = self._held()
        stopped = asyncio.ensure_future(channel.closed.wait())
        flowing = asyncio.ensure_future(channel.streaming.wait())
        try:
            await asyncio.wait({stopped, flowing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            flowing.cancel()
        if not channel.streaming.is_set():
            raise LiveError(f"the live channel {self.device_id}/{self.channel_id} stopped")

    def reader(self, *, buffer_bytes: int | None = None) -> LiveReader:
        """An in-process consumer from the next key frame on (ended when this handle closes)."""
        channel = self._held()
        reader = channel.attach(limit_bytes=buffer_bytes or self._streams.settings.consumer_buffer_bytes,
                                what="reader")
        self._readers.add(reader)
        return reader

    def add_listener(self, listener: Callable[[LiveEvent], None]) -> None:
        """Called with each event of this channel from now on (it must not block)."""
        self._listeners.append(listener)

    async def next_event(self) -> LiveEvent:
        """The next event of this channel since the handle was entered (the oldest kept first)."""
        while not self._events:
            self._event_arrived.clear()
            await self._event_arrived.wait()
        return self._events.popleft()

    def _event(self, event: LiveEvent) -> None:
        self._events.append(event)
        self._event_arrived.set()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not cost the stream
                log.exception("live %s/%s: an event listener failed", self.device_id, self.channel_id)


class _Play:
    """One Play (INVITE) of a channel: the sink its receiver feeds, and that receiver once known (to stamp
    bytes with when their packets arrived, not when the reorder buffer gave them out)."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.session: MediaSession | None = None
        self.over = False  # the channel is done with this Play: bytes still draining from it are not taken
        self.lost_reported = 0  # of this Play's lost packets, those already on the ledger or told
        self.empty_sunk = 0  # empty payloads that reached the sink (the receiver drops them: none expected)
        self.outcome: Any = None  # the receiver's MediaOutcome, once the Play ended
        # arrival times (time.monotonic()) of its first and last packet
        self.first_media_mono: float | None = None
        self.last_media_mono = 0.0

    @property
    def media_s(self) -> float:
        """How long media flowed in this Play (first to last packet; not the idle timeout after it)."""
        return 0.0 if self.first_media_mono is None else self.last_media_mono - self.first_media_mono

    def lost_packets(self) -> int:
        """RTP packets of this Play lost so far (the receiver's count; final once it ended)."""
        if self.outcome is not None:
            return int(getattr(self.outcome, "lost_packets", 0) or 0)
        session = self.find_session()
        progress = None if session is None else getattr(session.receiver, "progress", None)
        return int(getattr(progress, "lost_packets", 0) or 0)

    def empty_packets(self) -> int:
        """RTP packets of this Play with no payload (keepalives, padding only), dropped as no media."""
        source = self.outcome
        if source is None:
            session = self.find_session()
            source = None if session is None else getattr(session.receiver, "progress", None)
        return int(getattr(source, "empty_packets", 0) or 0) + self.empty_sunk

    def sink(self, data: bytes) -> None:
        self.channel._take(self, data)

    def find_session(self) -> MediaSession | None:
        """The platform's session of this Play (before `start_session` returned, from its table)."""
        if self.session is None:
            self.session = next((s for s in self.channel.streams.platform.sessions.sessions.values()
                                 if s.request.sink == self.sink), None)
        return self.session

    def arrival(self) -> tuple[float, float]:
        """When the bytes given now arrived, on the wall clock (for the record) and the monotonic clock (for
        durations): the receiver's last packet (a held packet given out after a hole, or flushed at the
        end, came no later), else now."""
        session = self.find_session()
        receiver = None if session is None else session.receiver
        wall = getattr(receiver, "last_packet_at", None)
        mono = getattr(receiver, "last_packet_monotonic", None)
        if isinstance(wall, float) and isinstance(mono, float):
            return wall, mono
        return time.time(), time.monotonic()


class _Channel:
    """One live channel: its Play loop, its socket server, its consumers."""

    def __init__(self, streams: LiveStreams, device_id: str, channel_id: str, transport: str) -> None:
        self.streams = streams
        self.device_id = device_id
        self.channel_id = channel_id
        self.transport = transport
        self.socket_path = streams.socket_path(device_id, channel_id)
        self.state = "starting"
        self.opened_at = wall_text()
        self.streaming_since: str | None = None
        self.started = False
        self.holders = 0
        self.handles: set[LiveHandle] = set()
        self.consumers: set[LiveReader] = set()
        self.connections = 0
        self.interruptions: deque[Interruption] = deque(maxlen=MAX_KEPT_INTERRUPTIONS)
        self.interruption_count = 0
        self.open_interruption: Interruption | None = None
        self.session: MediaSession | None = None
        self.call_id: str | None = None
        self.bytes = 0
        self.cut_offs = 0
        self.last_problem: str | None = None
        self._problem_recorded = False
        self._flowing = False
        self._last_byte_at = 0.0  # wall clock: an interruption's or a stall's `from`
        self._last_byte_mono = 0.0  # monotonic: how long since
        self._current: _Play | None = None
        self._inviting = False  # the Play's INVITE is in flight (a stop cancels it at once)
        self.failed_attempts = 0  # re-INVITEs that brought no media during the open interruption
        self._attempts_unrecorded = 0
        self._attempt_recorded_at: float | None = None
        self.lost_packets = 0  # RTP packets lost in the Plays that ended (the current one's: `_lost_total`)
        self.empty_packets = 0  # RTP packets without payload in the Plays that ended (`_empty_total`)
        self.loss_reports = 0
        self._loss_checked_at = 0.0
        self._loss_reported_at: float | None = None
        self.stalls = 0
        self.stalled_s = 0.0
        self._stalls_unrecorded = 0
        self._stall_recorded_at: float | None = None
        self.stopping = False
        self.wake = asyncio.Event()
        self.linger: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self._connection_tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.streaming = asyncio.Event()  # set while media flows

    # -- consumers ---------------------------------------------------------------------------------------

    def attach(self, *, limit_bytes: int, what: str, on_end: Callable[[], None] = lambda: None) -> LiveReader:
        reader = LiveReader(self, limit_bytes=limit_bytes, what=what, on_end=on_end)
        if self.stopping:
            reader._end("the live stream stopped")
        else:
            self.consumers.add(reader)
        return reader

    def _detach(self, reader: LiveReader) -> None:
        self.consumers.discard(reader)

    def _consumer_cut_off(self, reader: LiveReader, reason: str) -> None:
        self.cut_offs += 1
        log.warning("live %s/%s: a %s was %s", self.device_id, self.channel_id, reader.what, reason)
        self.streams._ledger(EntryType.ERROR, {"stage": "gb28181-live", **self._where(),
                                               "consumer": reader.what, "reason": reason})
        self._emit(LiveEventKind.CONSUMER_CUT_OFF, f"a {reader.what} was {reason}")

    async def serve(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_unix_server(self._connection, sock=sock)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stopping:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connection_tasks.add(task)
        self.connections += 1
        self.streams._hold(self)
        transport = writer.transport
        consumer = self.attach(limit_bytes=self.streams.settings.consumer_buffer_bytes,
                               what="socket connection",
                               on_end=lambda: transport.abort() if consumer.cut_off else None)
        watch = asyncio.ensure_future(self._watch_peer(reader, consumer))
        try:
            while chunk := await consumer.read():
                writer.write(chunk)
                await writer.drain()  # a slow reader waits here while its buffer fills (then it is cut off)
        except (ConnectionError, OSError):
            pass
        finally:
            watch.cancel()
            consumer.close()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self.connections -= 1
            self._connection_tasks.discard(task)
            self.streams._release(self)

    @staticmethod
    async def _watch_peer(reader: asyncio.StreamReader, consumer: LiveReader) -> None:
        """The peer closing its end leaves the channel at once (not at the next write, which may be long in
        coming while the channel is interrupted); what a peer sends is read and ignored."""
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(4096):
                pass
        consumer.close()

    # -- the Play ----------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.task = asyncio.ensure_future(self._play())

    async def _play(self) -> None:
        settings = self.streams.settings
        delay = settings.retry_min_s
        while not self.stopping:
            self.wake.clear()
            self.call_id = None
            self._inviting = True
            self._flowing = False
            play = _Play(self)
            self._current = play
            try:
                session = await self.streams.platform.start_session(MediaRequest(
                    self.device_id, self.channel_id, SessionKind.PLAY, self.transport, None, sink=play.sink))
            except SessionError as exc:
                self._inviting = False
                self._problem(f"Play not started: {exc}")
            except Exception as exc:  # a bug below must not leave the channel held and never tried again
                self._inviting = False
                log.exception("live %s/%s: the INVITE failed", self.device_id, self.channel_id)
                self._problem(f"Play not started: {type(exc).__name__}: {exc}")
            else:
                self._inviting = False
                self.session = play.session = session
                self.call_id = session.call_id
                if self.stopping:
                    session.stop()
                outcome = None
                try:
                    end_reason, outcome = await self._ended(session)
                    reason = self._why(end_reason, outcome)
                except Exception as exc:  # the session's own failure: an end like any other, retried
                    log.exception("live %s/%s: the Play failed", self.device_id, self.channel_id)
                    reason = _shown(f"the Play failed: {type(exc).__name__}: {exc}")
                self.session = None
                losses = self._play_over(play, outcome)
                if self.stopping:
                    return
                if self._flowing:
                    self._interrupt(reason, losses)
                    if play.media_s >= STABLE_S:  # not INVITE to end: that holds the idle timeout
                        delay = settings.retry_min_s
                else:
                    self._problem(f"the Play brought no media: {reason}")
            if self.stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)
            delay = min(delay * 2, settings.retry_max_s)

    async def _ended(self, session: MediaSession) -> tuple[EndReason, Any]:
        """When the Play ended: its end reason and the receiver's outcome (None if the receiver is not done
        within `END_GRACE_S`). Not after the platform's BYE: a device that vanished answers none, and its
        transaction (32 s) would keep the consumers waiting and the channel "streaming"; the BYE goes on in
        the platform's own task."""
        done = asyncio.ensure_future(session.wait())
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            await asyncio.wait({done, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if done.done():
            result: SessionResult = done.result()
            return result.end_reason, result.outcome
        done.add_done_callback(_ignore_outcome)  # the session finishes (BYE, receiver closed) on its own
        closing = asyncio.ensure_future(session.receiver.wait_closed())
        try:
            outcome = await asyncio.wait_for(asyncio.shield(closing), END_GRACE_S)
        except TimeoutError:  # the receiver closes after the BYE (the platform stopped the Play)
            closing.add_done_callback(_ignore_outcome)
            outcome = None
        return session.end_reason or EndReason.STOPPED, outcome

    def _why(self, end_reason: EndReason, outcome: Any) -> str:
        if end_reason is EndReason.STOPPED:
            device = self.streams.platform.registry.get(self.device_id)
            if device is None or not device.online:
                return "the device went offline"
            return "the platform stopped the Play"
        if end_reason is EndReason.RECEIVER_ENDED:
            ended, detail = getattr(outcome, "ended", "?"), getattr(outcome, "detail", "")
            return _shown(f"the media ended ({ended}: {detail})")
        return str(end_reason)  # device sent BYE, media status 121

    def _take(self, play: _Play, data: bytes) -> None:
        """The media receiver's sink: every consumer's buffer gets the bytes (none waits here)."""
        if self.stopping or play.over:
            return
        if not data:  # no media (the receiver drops these; a sink fed otherwise must not count them)
            play.empty_sunk += 1
            return
        # When the packet arrived, not now: after a loss the reorder buffer holds later packets until the
        # session ends (the idle timeout), and an interruption's `from` must be the device's last packet.
        arrived, arrived_mono = play.arrival()
        if self._flowing and arrived_mono - self._last_byte_mono >= self.streams.settings.stall_s:
            self._stalled(self._last_byte_at, arrived, arrived_mono - self._last_byte_mono)
        self._last_byte_at = arrived
        self._last_byte_mono = play.last_media_mono = arrived_mono
        if play.first_media_mono is None:
            play.first_media_mono = arrived_mono
        if arrived_mono - self._loss_checked_at >= LOSS_CHECK_S:
            self._loss_checked_at = arrived_mono
            self._report_losses(play)
        if not self._flowing:
            self._flowing = True
            self._media_flows(play)
        self.bytes += len(data)
        for consumer in list(self.consumers):
            consumer._offer(data)

    def _media_flows(self, play: _Play) -> None:
        now = wall_text()
        self.streaming.set()
        if self.session is None:  # the first bytes came before the INVITE's transaction returned
            session = play.find_session()
            self.call_id = None if session is None else session.call_id
        self.state = "streaming"
        self.streaming_since = now
        self.last_problem = None
        if self.open_interruption is not None:
            closed = Interruption(self.open_interruption.began_at, self.open_interruption.detected_at,
                                  self.open_interruption.reason, now)
            self.open_interruption = None
            self.interruptions.append(closed)
            log.info("live %s/%s resumed after %s", self.device_id, self.channel_id, closed.reason)
            self.streams._ledger(EntryType.SESSION_STARTED, {
                "live": "resumed", **self._where(), "call_id": self.call_id, "from": closed.began_at,
                "to": closed.ended_at, "reason": closed.reason, "failed_attempts": self.failed_attempts})
            self.failed_attempts = self._attempts_unrecorded = 0
            self._attempt_recorded_at = None
            self._emit(LiveEventKind.RESUMED, closed.reason, closed)
        elif not self.started:
            self.started = True
            log.info("live %s/%s started", self.device_id, self.channel_id)
            self.streams._ledger(EntryType.SESSION_STARTED, {
                "live": "started", **self._where(), "transport": self.transport, "call_id": self.call_id})
            self._emit(LiveEventKind.STARTED)

    def _stalled(self, began: float, ended: float, seconds: float) -> None:
        """Media stopped `seconds` (monotonic) from `began` to `ended` (wall-clock arrival times, for the
        record) and the Play went on: a `stalled` event to the holders, and a `gap` entry ("stalled"), at
        most one per `STALL_REPORT_S` (the others counted in the next one and in session_stopped)."""
        self.stalls += 1
        self.stalled_s += seconds
        stall = Interruption(wall_text(began), wall_text(), f"no media for {seconds:.1f} s", wall_text(ended))
        log.warning("live %s/%s: media stalled for %.1f s", self.device_id, self.channel_id, seconds)
        now = time.monotonic()
        if self._stall_recorded_at is None or now - self._stall_recorded_at >= STALL_REPORT_S:
            self._stall_recorded_at = now
            self.streams._ledger(EntryType.GAP, {
                "live": "stalled", **self._where(), "call_id": self.call_id, "from": stall.began_at,
                "to": stall.ended_at, "stalled_s": round(seconds, 3),
                "stalls_unrecorded_before": self._stalls_unrecorded})
            self._stalls_unrecorded = 0
        else:
            self._stalls_unrecorded += 1
        self._emit(LiveEventKind.STALLED, stall.reason, stall)

    def _report_losses(self, play: _Play) -> None:
        """RTP packets the receiver found lost since the last report: a `gap` entry ("lost") and a
        `media lost` event, at most once per `LOSS_REPORT_S` (a lossy link would fill the ledger)."""
        lost = play.lost_packets()
        new = lost - play.lost_reported
        now = time.monotonic()
        if new <= 0 or (self._loss_reported_at is not None and now - self._loss_reported_at < LOSS_REPORT_S):
            return
        self._loss_reported_at = now
        play.lost_reported = lost
        self.loss_reports += 1
        reason = f"{new} RTP packet(s) lost ({lost} in this Play); the stream goes on without their bytes"
        log.warning("live %s/%s: %s", self.device_id, self.channel_id, reason)
        self.streams._ledger(EntryType.GAP, {"live": "lost", **self._where(), "call_id": self.call_id,
                                             "lost_packets": new, "lost_packets_in_play": lost,
                                             "at": wall_text()})
        self._emit(LiveEventKind.MEDIA_LOST, reason)

    def _play_over(self, play: _Play, outcome: Any) -> dict[str, Any]:
        """The channel is done with `play`: its losses added up; what its end's entry says of them."""
        play.over = True
        if outcome is not None:
            play.outcome = outcome
        lost = play.lost_packets()
        self.lost_packets += lost
        self.empty_packets += play.empty_packets()
        new = lost - play.lost_reported
        play.lost_reported = lost
        if new > 0:
            self._emit(LiveEventKind.MEDIA_LOST, f"{new} RTP packet(s) lost ({lost} in the Play that ended)")
        gaps = list(getattr(play.outcome, "gaps", None) or [])
        return {"lost_packets": lost,
                "rtp_gaps": [list(g) for g in gaps[:MAX_SHOWN_RTP_GAPS]],
                "rtp_gaps_unshown": max(0, len(gaps) - MAX_SHOWN_RTP_GAPS)
                + int(getattr(play.outcome, "gaps_unrecorded", 0) or 0)}

    def _lost_total(self) -> int:
        current = self._current
        return self.lost_packets + (0 if current is None or current.over else current.lost_packets())

    def _empty_total(self) -> int:
        current = self._current
        return self.empty_packets + (0 if current is None or current.over else current.empty_packets())

    def _interrupt(self, reason: str, losses: dict[str, Any] | None = None) -> None:
        interruption = Interruption(wall_text(self._last_byte_at), wall_text(), reason)
        self.open_interruption = interruption
        self.interruption_count += 1
        self.state = "interrupted"
        self.streaming.clear()
        log.warning("live %s/%s interrupted: %s", self.device_id, self.channel_id, reason)
        for consumer in list(self.consumers):
            consumer._end(f"interrupted: {reason}")
        self.streams._ledger(EntryType.GAP, {"live": "interrupted", **self._where(), "call_id": self.call_id,
                                             "from": interruption.began_at,
                                             "detected_at": interruption.detected_at, "reason": reason,
                                             **(losses or {})})
        self._emit(LiveEventKind.INTERRUPTED, reason, interruption)

    def _problem(self, reason: str) -> None:
        reason = _shown(reason)
        self.last_problem = reason
        log.warning("live %s/%s: %s", self.device_id, self.channel_id, reason)
        if not self.started and not self._problem_recorded:
            self._problem_recorded = True  # once: a device that stays away would fill the ledger
            self.streams._ledger(EntryType.ERROR, {"stage": "gb28181-live", **self._where(),
                                                   "reason": f"{reason}; retrying"})
        elif self.open_interruption is not None:  # what keeps the interruption open: rate-limited
            self.failed_attempts += 1
            now = time.monotonic()
            if self._attempt_recorded_at is None or now - self._attempt_recorded_at >= RETRY_REPORT_S:
                self._attempt_recorded_at = now
                self.streams._ledger(EntryType.ERROR, {
                    "stage": "gb28181-live", **self._where(), "reason": f"{reason}; retrying",
                    "interrupted_since": self.open_interruption.began_at,
                    "failed_attempts": self.failed_attempts, "unrecorded_before": self._attempts_unrecorded})
                self._attempts_unrecorded = 0
            else:
                self._attempts_unrecorded += 1

    def _where(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "channel_id": self.channel_id}

    def _emit(self, kind: LiveEventKind, reason: str = "", interruption: Interruption | None = None) -> None:
        event = LiveEvent(kind, self.device_id, self.channel_id, wall_text(), reason, interruption)
        for handle in list(self.handles):
            handle._event(event)
        self.streams._broadcast(event)

    # -- the end -----------------------------------------------------------------------------------------

    async def stop(self, reason: str) -> None:
        """BYE (through the platform), consumers ended, socket removed, `stopped` told and recorded."""
        self.stopping = True
        self.state = "stopping"
        self.streaming.clear()
        self.wake.set()
        if self.linger is not None:
            self.linger.cancel()
        if self.session is not None:
            self.session.stop()
        if self.task is not None:
            if self._inviting:  # an INVITE the device may never answer (32 s): given up now, cleaned up below
                self.task.cancel()
            await asyncio.wait({self.task}, timeout=STOP_TIMEOUT_S)
            if not self.task.done():  # a Play that does not end: given up, the platform cleans it up
                self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for consumer in list(self.consumers):
            consumer._end(f"the live stream stopped: {reason}")
        if self.server is not None:
            self.server.close()
        self._stopped(reason)
        pumps = list(self._connection_tasks)
        if pumps:  # each connection gets what was buffered for it, then its end (bounded: a stuck reader)
            _, stuck = await asyncio.wait(pumps, timeout=STOP_DRAIN_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.closed.set()

    def stalled_since(self) -> str | None:
        """When media last came (station UTC), if it has not come for `stall_s` or longer in a Play that
        goes on (no interruption open): a stall in progress, which the live layer tells (`stalled`) only
        once media comes again; None otherwise."""
        if (self._flowing and self.open_interruption is None
                and time.monotonic() - self._last_byte_mono >= self.streams.settings.stall_s):
            return wall_text(self._last_byte_at)
        return None

    def _stopped(self, reason: str) -> None:
        """The channel's end on the ledger and to its holders (before its connections drain)."""
        # Stopped while media had stopped, before the idle timeout ended the Play.
        stalled_since = self.stalled_since()
        closed = None
        if self.open_interruption is not None:
            closed = Interruption(self.open_interruption.began_at, self.open_interruption.detected_at,
                                  self.open_interruption.reason, wall_text())
            self.interruptions.append(closed)
            self.open_interruption = None
        self.state = "stopped"
        log.info("live %s/%s stopped: %s", self.device_id, self.channel_id, reason)
        self.streams._ledger(EntryType.SESSION_STOPPED, {
            "live": "stopped", **self._where(), "reason": reason, "since": self.opened_at,
            "started": self.started, "interruptions": self.interruption_count, "bytes": self.bytes,
            "consumers_cut_off": self.cut_offs, "interrupted": None if closed is None else closed.view(),
            "lost_packets": self._lost_total(), "empty_packets": self._empty_total(),
            "loss_reports": self.loss_reports, "stalls": self.stalls,
            "stalled_s": round(self.stalled_s, 3), "stalls_unrecorded": self._stalls_unrecorded,
            "stalled_since": stalled_since, "failed_attempts": self.failed_attempts})
        self._emit(LiveEventKind.STOPPED, reason, closed)

    def view(self) -> dict[str, Any]:
        last = self.interruptions[-1] if self.interruptions else None
        return {
            "channel_id": self.channel_id, "state": self.state, "transport": self.transport,
            "since": self.opened_at, "streaming_since": self.streaming_since, "call_id": self.call_id,
            "holders": self.holders, "consumers": len(self.consumers), "connections": self.connections,
            "bytes": self.bytes, "interruptions": self.interruption_count,
            "interrupted": None if self.open_interruption is None else self.open_interruption.view(),
            "last_interruption": None if last is None else last.view(), "consumers_cut_off": self.cut_offs,
            "lost_packets": self._lost_total(), "empty_packets": self._empty_total(), "stalls": self.stalls,
            "last_problem": self.last_problem,
        }


class LiveStreams:
    """The live channels of one platform (see the module docstring). `run()` is its supervised task (it
    only holds them; stopping it stops them all)."""

    def __init__(self, platform: GbPlatform, settings: LiveSettings, *, record: Record) -> None:
        if settings.transport not in TRANSPORTS:
            raise LiveError(f"live media transport {settings.transport!r} is not one of "
                            f"{', '.join(TRANSPORTS)}")
        if len(str(settings.socket_dir).encode()) + 1 + SOCKET_NAME_BYTES > MAX_SOCKET_PATH_BYTES:
            raise LiveError(f"live socket directory {settings.socket_dir} is too long for a Unix socket path")
        self.platform = platform
        self.settings = settings
        self._record = record
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._listeners: list[Callable[[LiveEvent], None]] = []
        self._stops: set[asyncio.Task[None]] = set()
        self._closed = False
        platform.add_online_listener(self._device_online)

    def __repr__(self) -> str:
        return f"LiveStreams({len(self._channels)} channel(s), {self.settings.socket_dir})"

    def socket_path(self, device_id: str, channel_id: str) -> Path:
        return self.settings.socket_dir / f"{device_id}-{channel_id}{SOCKET_SUFFIX}"

    def open(self, device_id: str, channel_id: str, *, transport: str | None = None) -> LiveHandle:
        """A handle on the live channel (enter it to hold the channel). `LiveError` at once for ids that are
        not 20 digits or an unknown transport; on entering, for a closed service or a socket it cannot make.
        A channel already live keeps its transport (`handle.transport` says which)."""
        for what, value in (("device id", device_id), ("channel id", channel_id)):
            if not isinstance(value, str) or not GB_ID.fullmatch(value):
                raise LiveError(f"{what} {printable(str(value)[:40])!r} is not 20 digits")
        transport = transport or self.settings.transport
        if transport not in TRANSPORTS:
            raise LiveError(f"media transport {printable(str(transport)[:40])!r} is not one of "
                            f"{', '.join(TRANSPORTS)}")
        return LiveHandle(self, device_id, channel_id, transport)

    def add_listener(self, listener: Callable[[LiveEvent], None]) -> None:
        """Called with every event of every channel (it must not block)."""
        self._listeners.append(listener)

    # -- holding -------------------------------------------------------------------------------------------

    async def _acquire(self, handle: LiveHandle) -> _Channel:
        key = (handle.device_id, handle.channel_id)
        while True:
            if self._closed:
                raise LiveError("live streams are closed (the station is stopping)")
            channel = self._channels.get(key)
            if channel is None or not channel.stopping:
                break
            await channel.closed.wait()  # a Play being stopped: the next one starts after its BYE
        if channel is None:
            if len(self._channels) >= self.settings.max_channels:
                raise LiveError(f"{self.settings.max_channels} live channels already open")
            sock = self._bind(handle.socket_path)
            channel = _Channel(self, handle.device_id, handle.channel_id, handle.transport)
            self._channels[key] = channel
            try:
                await channel.serve(sock)
            except BaseException:
                sock.close()
                self._channels.pop(key, None)
                with contextlib.suppress(FileNotFoundError):
                    handle.socket_path.unlink()
                raise
            channel.begin()
        channel.handles.add(handle)
        self._hold(channel)
        return channel

    def _hold(self, channel: _Channel) -> None:
        channel.holders += 1
        if channel.linger is not None:
            channel.linger.cancel()
            channel.linger = None

    def _release(self, channel: _Channel) -> None:
        channel.holders -= 1
        if channel.holders > 0 or channel.stopping:
            return
        loop = asyncio.get_running_loop()
        channel.linger = loop.call_later(self.settings.linger_s, self._linger_over, channel)

    def _linger_over(self, channel: _Channel) -> None:
        channel.linger = None
        if channel.holders == 0 and not channel.stopping:
            self._stop(channel, "no consumer left")

    def _stop(self, channel: _Channel, reason: str) -> asyncio.Task[None]:
        async def stop() -> None:
            try:
                await channel.stop(reason)
            finally:
                key = (channel.device_id, channel.channel_id)
                if self._channels.get(key) is channel:
                    del self._channels[key]
        task = asyncio.ensure_future(stop())
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        return task

    def _bind(self, path: Path) -> socket.socket:
        """The channel's listening socket: directory 0700 and ours (made so, or refused: a directory the
        agent did not make is never chmod'ed), socket 0600, a stale socket of a crash replaced, anything
        else at its path refused."""
        directory = path.parent
        try:
            check_socket_parents(directory)
            for missing in reversed([d for d in directory.parents if not os.path.lexists(d)]):
                with contextlib.suppress(FileExistsError):
                    missing.mkdir(mode=0o755)  # then checked like any other
            check_socket_parents(directory)
            made = False
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
                made = True
            facts = os.lstat(directory)
            if not stat.S_ISDIR(facts.st_mode):
                raise LiveError(f"live socket directory {directory} is not a directory")
            if facts.st_uid != os.geteuid():
                raise LiveError(f"live socket directory {directory} belongs to uid {facts.st_uid}, "
                                "not the agent's")
            mode = stat.S_IMODE(facts.st_mode)
            if made and mode != 0o700:
                os.chmod(directory, 0o700)  # the umask took more than asked, never less
            elif mode & 0o077:
                # Not ours to change: it may be the runtime directory, whose 0755 lets the operators reach
                # the API socket beside it.
                raise LiveError(f"live socket directory {directory} is open to other users (mode "
                                f"{mode:04o}): give the live sockets a directory of their own (the agent "
                                "makes it 0700), or make it 0700")
            try:
                existing = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(existing.st_mode):
                    raise LiveError(f"{path} exists and is not a socket")
                path.unlink()  # a socket left by an agent that stopped without removing it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                os.fchmod(sock.fileno(), 0o600)  # Linux makes the socket file with this mode at bind
                sock.bind(str(path))
                os.chmod(path, 0o600)
                sock.listen(8)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock
        except OSError as exc:
            raise LiveError(f"live socket {path}: {exc.strerror or exc}") from exc

    # -- platform events -----------------------------------------------------------------------------------

    def _device_online(self, device_id: str) -> None:
        """A device came (back) online: its interrupted channels try again now, not at their next backoff."""
        for channel in self._channels.values():
            if channel.device_id == device_id:
                channel.wake.set()

    def _broadcast(self, event: LiveEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("live: an event listener failed")

    def _ledger(self, entry_type: str, data: dict[str, Any]) -> None:
        try:
            self._record(entry_type, {"source": SOURCE, **data})
        except Exception:  # the stream goes on; the store reports its own failures
            log.exception("gb28181 live: ledger entry %s not written", entry_type)

    # -- the operator view ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Live channels by device id (the status's `gb28181.live`)."""
        views: dict[str, list[dict[str, Any]]] = {}
        for (device_id, _), channel in sorted(self._channels.items()):
            views.setdefault(device_id, []).append(channel.view())
        return views

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The supervised task: holds the channels until cancelled, then stops them all."""
        self._closed = False
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop every channel (BYE, sockets removed); handles still held see `stopped`."""
        self._closed = True
        for channel in list(self._channels.values()):
            if not channel.stopping:
                self._stop(channel, "the station is stopping")
        await asyncio.gather(*list(self._stops), return_exceptions=True)
