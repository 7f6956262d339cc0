"""A GB/T 28181 media sender for the receiver's tests and benchmark: real ffmpeg-made H.264 / H.265 and G.711
A-law, muxed by drivers/gb28181/ps.PsMuxer (one pack per video frame, system header and PSM before key
frames, audio in packs of its own), cut into RTP packets the way devices and ZLMediaKit do it (MTU-sized
payloads, one timestamp per pack, marker on its last packet), sent over real UDP or TCP sockets.

Faults are applied to the packet list (`reorder`, `drop`, `duplicate`) so that the real receiver code
sees them on real sockets.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from drivers.gb28181.framing import frame_interleaved, frame_rfc4571
from drivers.gb28181.ps import Codec, PsMuxer
from drivers.gb28181.rtp import RtpPacket

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
FRAME_TICKS = 3600  # 25 fps at 90 kHz
AUDIO_FRAME_BYTES = 160  # 20 ms of 8 kHz G.711
AUDIO_TICKS = 1800
MTU_PAYLOAD = 1400
START_PTS = 90000 * 3600  # devices start at an arbitrary clock, never at 0
AUDIO_DELAY_TICKS = 9000  # audio starts 0.1 s after video: the MP4 must keep that offset


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=300)


@dataclass(frozen=True)
class SourceMedia:
    """An elementary stream made by ffmpeg, cut into access units by ffprobe, and optional audio (G.711
    A-law or µ-law at 8 kHz, or ADTS AAC at 16 kHz)."""

    codec: Codec
    units: list[tuple[bytes, bool]]  # (access unit, key)
    audio: bytes | None
    audio_codec: Codec = Codec.G711A

    @property
    def duration_s(self) -> float:
        return len(self.units) * FRAME_TICKS / 90000


def make_source(folder: Path, codec: Codec, *, seconds: float = 4, audio: bool = True,
                size: str = "320x240", bitrate: str | None = None,
                audio_codec: Codec = Codec.G711A) -> SourceMedia:
    folder.mkdir(parents=True, exist_ok=True)
    es = folder / f"v.{codec}"
    video = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25", "-t", f"{seconds}", "-pix_fmt", "yuv420p"]
    rate = ["-b:v", bitrate] if bitrate else []
    if codec is Codec.H264:
        ffmpeg(*video, "-c:v", "libx264", "-g", "25", "-bf", "0", *rate, "-bsf:v", "h264_mp4toannexb",
               "-f", "h264", str(es))
    else:
        ffmpeg(*video, "-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-bf", "0", *rate,
               "-f", "hevc", str(es))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "h264" if codec is Codec.H264 else "hevc", "-show_entries",
         "packet=size,pos,flags", "-of", "csv=p=0", str(es)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    data = es.read_bytes()
    units = []
    for line in out:
        size_text, pos, flags = line.split(",")[:3]
        units.append((data[int(pos):int(pos) + int(size_text)], "K" in flags))
    assert b"".join(u for u, _ in units) == data
    sound = None
    if audio:
        path = folder / "a.audio"
        encoder = {Codec.G711A: ("pcm_alaw", "8000", "alaw"), Codec.G711U: ("pcm_mulaw", "8000", "mulaw"),
                   Codec.AAC: ("aac", "16000", "adts")}[audio_codec]
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={encoder[1]}", "-t", f"{seconds}",
               "-c:a", encoder[0], "-ar", encoder[1], "-ac", "1", "-f", encoder[2], str(path))
        sound = path.read_bytes()
    return SourceMedia(codec, units, sound, audio_codec)


def audio_frames(media: SourceMedia) -> list[tuple[bytes, int]]:
    """The audio cut into frames with their duration in 90 kHz ticks: 20 ms of G.711, or one ADTS frame
    (1024 samples at 16 kHz)."""
    audio = media.audio or b""
    if media.audio_codec is not Codec.AAC:
        cuts = range(0, len(audio), AUDIO_FRAME_BYTES)
        return [(audio[at:at + AUDIO_FRAME_BYTES], AUDIO_TICKS) for at in cuts]
    frames, at = [], 0
    while at + 7 <= len(audio):
        length = ((audio[at + 3] & 0x03) << 11) | (audio[at + 4] << 3) | (audio[at + 5] >> 5)
        frames.append((audio[at:at + length], 1024 * 90000 // 16000))
        at += length
    return frames


def ps_packs(media: SourceMedia) -> list[tuple[bytes, int]]:
    """The PS packs of the recording in sending order: (pack, PTS)."""
    muxer = PsMuxer(media.codec, media.audio_codec if media.audio is not None else None)
    packs = [(muxer.video_frame(unit, START_PTS + FRAME_TICKS * i, key=key), START_PTS + FRAME_TICKS * i)
             for i, (unit, key) in enumerate(media.units)]
    if media.audio is not None:
        pts = START_PTS + AUDIO_DELAY_TICKS
        for frame, ticks in audio_frames(media):
            packs.append((muxer.audio_frame(frame, pts), pts))
            pts += ticks
        packs.sort(key=lambda p: p[1])  # stable: a video pack before an audio pack of the same time
    return packs


def rtp_packets(packs: list[tuple[bytes, int]], *, ssrc: int, first_sequence: int = 65000,
                payload_type: int = 96) -> list[bytes]:
    packets = []
    sequence = first_sequence
    for pack, pts in packs:
        chunks = [pack[at:at + MTU_PAYLOAD] for at in range(0, len(pack), MTU_PAYLOAD)]
        for j, chunk in enumerate(chunks):
            packets.append(RtpPacket(payload_type=payload_type, sequence=sequence % 65536,
                                     timestamp=pts % (1 << 32), ssrc=ssrc, marker=j == len(chunks) - 1,
                                     payload=chunk).to_bytes())
            sequence += 1
    return packets


def reorder(packets: list[bytes], seed: int, *, span: int = 5) -> list[bytes]:
    """Swap packets within `span` of each other (what UDP on a 4G link does)."""
    rng = random.Random(seed)
    out = list(packets)
    for i in range(0, len(out) - span, span * 3):
        j = i + rng.randrange(1, span)
        out[i], out[j] = out[j], out[i]
    return out


async def send_udp(packets: list[bytes], port: int, *, host: str = "127.0.0.1", pace_every: int = 64,
                   pace_s: float = 0.002) -> None:
    """Send over a real UDP socket, pausing a little every `pace_every` packets so the loopback's socket
    buffer is not overrun (a test is about the receiver, not about the kernel dropping a burst)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
    try:
        for i, packet in enumerate(packets):
            transport.sendto(packet)
            if i % pace_every == pace_every - 1:
                await asyncio.sleep(pace_s)
    finally:
        transport.close()


def tcp_bytes(packets: list[bytes], *, interleaved: bool = False) -> bytes:
    return b"".join(frame_interleaved(p) if interleaved else frame_rfc4571(p) for p in packets)


async def send_tcp(packets: list[bytes], port: int, *, host: str = "127.0.0.1", interleaved: bool = False,
                   close: bool = True) -> asyncio.StreamWriter:
    """Connect (the device's TCP active role) and send every packet framed; close unless told not to."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(tcp_bytes(packets, interleaved=interleaved))
    await writer.drain()
    if close:
        writer.close()
        await writer.wait_closed()
    return writer


class TcpDevice:
    """The device's side of TCP passive media (we connect to it): listens, and on the platform's
    connection sends the packets and closes."""

    def __init__(self, packets: list[bytes], *, interleaved: bool = False) -> None:
        self.data = tcp_bytes(packets, interleaved=interleaved)
        self.server: asyncio.Server | None = None
        self.connected = asyncio.Event()
        self.peer: tuple[str, int] | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peer = writer.get_extra_info("peername")
        self.connected.set()
        writer.write(self.data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
