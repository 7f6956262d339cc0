"""A device's media stream: frames → GB/T 28181 PS (Annex C.1) → RTP → UDP or TCP (RFC 4571), paced.

`MediaSender` muxes each frame with `drivers.gb28181.ps.PsMuxer` (one pack per video frame, audio packs of
their own), cuts each pack into RTP packets of at most `payload_bytes` that share the pack's timestamp
(marker on the last), and sends them in real time times `speed`. The packet faults (loss, reorder,
duplicate) and the SSRC fault act here, seeded, so a test can name exactly which sequence numbers it
should see missing, repeated or swapped (`SendStats`).

Outlets: `UdpOutlet` (a socket bound to the port the answer named, connected to the platform's),
`TcpConnectOutlet` (the device connects to the platform: the platform offered `a=setup:passive`),
`TcpListenOutlet` (the device listens on the port in its answer and the platform connects:
`a=setup:active`). TCP writes are awaited (`drain`), so a platform that does not read slows the device
down instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from drivers.gb28181.framing import frame_rfc4571
from drivers.gb28181.ps import Codec, PsMuxer
from drivers.gb28181.rtp import RtpPacket

from .media import CLOCK_HZ, MediaFrame

log = logging.getLogger(__name__)

PS_PAYLOAD_TYPE = 96
TCP_CONNECT_TIMEOUT_S = 10.0
TCP_ACCEPT_TIMEOUT_S = 30.0
KEEPALIVE_S = 0.2  # how often the keepalive-only fault sends a packet without payload while it stalls


class OutletError(Exception):
    """The media path to the platform could not be opened or broke."""


class Outlet:
    """Where RTP packets go. `open()` before the first packet, `close()` at the end (idempotent)."""

    local_port: int = 0

    async def open(self) -> None:
        raise NotImplementedError

    async def send(self, packet: bytes) -> None:
        raise NotImplementedError

    async def close(self, *, abort: bool = False) -> None:
        raise NotImplementedError


class UdpOutlet(Outlet):
    def __init__(self, bind_host: str, remote: tuple[str, int]) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind((bind_host, 0))
        self.local_port = self._sock.getsockname()[1]
        self._remote = remote

    async def open(self) -> None:
        self._sock.connect(self._remote)

    async def send(self, packet: bytes) -> None:
        try:
            self._sock.send(packet)
        except BlockingIOError:
            await asyncio.sleep(0.001)  # the socket buffer is full: a real device drops or waits; we wait
            with contextlib.suppress(BlockingIOError):
                self._sock.send(packet)
        except ConnectionRefusedError:
            pass  # an ICMP port unreachable from an earlier datagram: UDP senders carry on

    async def close(self, *, abort: bool = False) -> None:
        self._sock.close()


class _TcpOutlet(Outlet):
    def __init__(self) -> None:
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, packet: bytes) -> None:
        if self._writer is None:
            raise OutletError("TCP media connection not open")
        try:
            self._writer.write(frame_rfc4571(packet))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise OutletError(f"TCP media connection lost: {exc}") from exc

    async def close(self, *, abort: bool = False) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        if abort:
            writer.transport.abort()  # a device that dies sends a reset, not a clean FIN
            return
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


class TcpConnectOutlet(_TcpOutlet):
    """The device connects to the platform's port from the port it named in its answer."""

    def __init__(self, bind_host: str, remote: tuple[str, int]) -> None:
        super().__init__()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setblocking(False)
        self._sock.bind((bind_host, 0))
        self.local_port = self._sock.getsockname()[1]
        self._remote = remote

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(self._sock, self._remote), TCP_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self._sock.close()
            raise OutletError(f"cannot connect to the platform's media port {self._remote}: {exc}") from exc
        _, self._writer = await asyncio.open_connection(sock=self._sock)

    async def close(self, *, abort: bool = False) -> None:
        if self._writer is None:
            self._sock.close()
        await super().close(abort=abort)


class TcpListenOutlet(_TcpOutlet):
    """The device listens on the port it named in its answer; the platform connects (one connection)."""

    def __init__(self, bind_host: str) -> None:
        super().__init__()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.setblocking(False)
        self._listener.bind((bind_host, 0))
        self._listener.listen(1)  # listening from the answer on, so a fast platform's connect is not refused
        self.local_port = self._listener.getsockname()[1]

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(self._listener), TCP_ACCEPT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise OutletError(f"the platform did not connect to media port {self.local_port}: {exc}") from exc
        finally:
            self._listener.close()
        conn.setblocking(False)
        _, self._writer = await asyncio.open_connection(sock=conn)

    async def close(self, *, abort: bool = False) -> None:
        self._listener.close()
        await super().close(abort=abort)


MAX_RECORDED_FAULTS = 100_000  # sequence numbers kept per fault list (a long live stream stays bounded)


@dataclass
class SendStats:
    """What the sender did, by RTP sequence number (16-bit, as on the wire); the fault lists keep the
    first MAX_RECORDED_FAULTS, the counters count them all."""

    packets_sent: int = 0  # datagrams/frames written, duplicates included
    frames: int = 0  # video access units muxed
    audio_frames: int = 0
    bytes_ps: int = 0  # PS bytes of the packets that were sent (not of dropped ones)
    dropped: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)  # sent after their successor
    ssrcs: set[int] = field(default_factory=set)
    dropped_count: int = 0
    duplicated_count: int = 0
    reordered_count: int = 0
    completed: bool = False  # every frame of the source was handed to the outlet
    died: bool = False
    stalled_s: float = 0.0  # seconds the stall fault held the stream
    keepalives_sent: int = 0  # RTP packets without payload sent during a stall (the keepalive-only fault)
    audio_dropped: int = 0  # audio frames the audio-drop fault left out
    audio_dropped_pts: tuple[int, int] | None = None  # (first, last) PTS of those frames


@dataclass(frozen=True)
class PacketFaults:
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int = 0


def _record(sequences: list[int], sequence: int) -> None:
    if len(sequences) < MAX_RECORDED_FAULTS:
        sequences.append(sequence)


class MediaSender:
    """Sends `frames` over `outlet` as PS/RTP with SSRC `ssrc`, paced at `speed` × real time (None: as
    fast as the outlet takes them). `stop_after_frames` makes the stream die there (the die fault);
    `stall` (frames, seconds) pauses it once after that many frames for that long, then it goes on at its
    pace (the stall fault: the pause is not caught up in a burst). `audio_drop` (frames, seconds) leaves
    out the audio frames of that many seconds after that many video frames (the audio-drop fault: a
    microphone's packets lost while the picture goes on; the PTS of the audio that follows do not close
    up). With `stall_keepalives` the stall sends RTP packets without payload every `KEEPALIVE_S`, in the
    stream's numbering (RFC 6263's keepalive; every other one all padding): the keepalive-only fault."""

    def __init__(self, outlet: Outlet, *, ssrc: int, video: Codec, audio: bool, speed: float | None,
                 faults: PacketFaults = PacketFaults(), payload_bytes: int = 1400,
                 stop_after_frames: int | None = None, first_sequence: int | None = None,
                 stall: tuple[int, float] | None = None,
                 audio_drop: tuple[int, float] | None = None, stall_keepalives: bool = False) -> None:
        self._outlet = outlet
        self._ssrc = ssrc
        self._muxer = PsMuxer(video, Codec.G711A if audio else None)
        self._audio = audio
        self._speed = speed
        self._payload_bytes = payload_bytes
        self._random = random.Random(faults.seed)
        self._faults = faults
        self._stop_after_frames = stop_after_frames
        self._stall = stall
        self._stall_keepalives = stall_keepalives
        self._last_timestamp = 0  # the RTP timestamp of the last pack sent (a keepalive repeats it)
        self._audio_drop = audio_drop
        self._audio_drop_until: int | None = None  # PTS up to which audio is left out, once begun
        self._sequence = (first_sequence if first_sequence is not None
                          else self._random.randrange(1 << 16))  # RFC 3550: random initial sequence
        self._held: tuple[int, bytes] | None = None  # a packet the reorder fault sends after the next
        self.stats = SendStats()

    async def run(self, frames: AsyncIterator[MediaFrame]) -> SendStats:
        # Closed however the stream ends (died, cancelled): its ffmpeg readers stop now, not whenever the
        # generator is collected (a live Play loops the file for as long as the platform wants it).
        try:
            return await self._run(frames)
        finally:
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _run(self, frames: AsyncIterator[MediaFrame]) -> SendStats:
        loop = asyncio.get_running_loop()
        started = 0.0
        first_time: int | None = None
        async for frame in frames:
            if self._stop_after_frames is not None and self.stats.frames >= self._stop_after_frames:
                self.stats.died = True
                self._held = None
                return self.stats
            if self._stall is not None and self.stats.frames >= self._stall[0]:
                pause = self._stall[1]
                self._stall = None
                self.stats.stalled_s += pause
                if self._stall_keepalives:
                    await self._send_keepalives(pause)
                else:
                    await asyncio.sleep(pause)
                started += pause
            if frame.video:
                pack = self._muxer.video_frame(frame.data, frame.pts, key=frame.key, dts=frame.dts)
                self.stats.frames += 1
            elif self._audio:
                if self._drops_audio(frame):
                    continue
                pack = self._muxer.audio_frame(frame.data, frame.pts)
                self.stats.audio_frames += 1
            else:
                continue
            if first_time is None:  # the clock starts with the first frame, not with ffmpeg's start-up
                first_time, started = frame.send_time, loop.time()
            if self._speed is not None:
                due = started + (frame.send_time - first_time) / CLOCK_HZ / self._speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._send_pack(pack, frame.pts)
        await self._flush_held()
        self.stats.completed = True
        return self.stats

    def _drops_audio(self, frame: MediaFrame) -> bool:
        """Whether the audio-drop fault leaves `frame` out (recorded in the stats)."""
        if self._audio_drop is None or self.stats.frames < self._audio_drop[0]:
            return False
        if self._audio_drop_until is None:
            self._audio_drop_until = frame.pts + round(self._audio_drop[1] * CLOCK_HZ)
        if frame.pts >= self._audio_drop_until:
            self._audio_drop = None
            return False
        self.stats.audio_dropped += 1
        first = frame.pts if self.stats.audio_dropped_pts is None else self.stats.audio_dropped_pts[0]
        self.stats.audio_dropped_pts = (first, frame.pts)
        return True

    async def _send_keepalives(self, seconds: float) -> None:
        """`seconds` of RTP packets without payload (header only, or all padding), no media."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            sequence = self._sequence
            self._sequence = (self._sequence + 1) & 0xFFFF
            padding = 4 if self.stats.keepalives_sent % 2 else 0
            await self._write(RtpPacket(payload_type=PS_PAYLOAD_TYPE, sequence=sequence,
                                        timestamp=self._last_timestamp, ssrc=self._ssrc,
                                        padding_bytes=padding).to_bytes())
            self.stats.keepalives_sent += 1
            await asyncio.sleep(min(left, KEEPALIVE_S))

    async def _send_pack(self, pack: bytes, timestamp: int) -> None:
        self._last_timestamp = timestamp & 0xFFFFFFFF
        chunks = [pack[i:i + self._payload_bytes] for i in range(0, len(pack), self._payload_bytes)]
        for number, chunk in enumerate(chunks):
            sequence = self._sequence
            self._sequence = (self._sequence + 1) & 0xFFFF
            packet = RtpPacket(payload_type=PS_PAYLOAD_TYPE, sequence=sequence,
                               timestamp=timestamp & 0xFFFFFFFF, ssrc=self._ssrc, payload=chunk,
                               marker=number == len(chunks) - 1).to_bytes()
            await self._emit(sequence, packet, len(chunk))

    async def _emit(self, sequence: int, packet: bytes, ps_bytes: int) -> None:
        faults = self._faults
        stats = self.stats
        if faults.loss and self._random.random() < faults.loss:
            stats.dropped_count += 1
            _record(stats.dropped, sequence)
            return
        if faults.reorder and self._held is None and self._random.random() < faults.reorder:
            self._held = (sequence, packet)
            stats.reordered_count += 1
            _record(stats.reordered, sequence)
            self.stats.bytes_ps += ps_bytes
            return
        await self._write(packet)
        self.stats.bytes_ps += ps_bytes
        if faults.duplicate and self._random.random() < faults.duplicate:
            stats.duplicated_count += 1
            _record(stats.duplicated, sequence)
            await self._write(packet)
        await self._flush_held()

    async def _flush_held(self) -> None:
        if self._held is not None:
            _, packet = self._held
            self._held = None
            await self._write(packet)

    async def _write(self, packet: bytes) -> None:
        await self._outlet.send(packet)
        self.stats.packets_sent += 1
        self.stats.ssrcs.add(self._ssrc)
