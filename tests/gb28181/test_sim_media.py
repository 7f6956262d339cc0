"""The device simulator's media side: INVITE Download / Playback / Play over UDP, TCP passive and TCP
active, received by the test's minimal platform and reassembled with drivers/gb28181/{framing,rtp,ps};
the received PS has the frame count ffprobe reports for the source file (and ffmpeg reads it too);
MediaStatus 121 ends a download in its dialog; each media fault shows on the wire."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181 import manscdp
from drivers.gb28181.framing import StreamDeframer
from drivers.gb28181.ps import Codec, EsFrame, PsDemuxer, is_video
from drivers.gb28181.rtp import Delivered, Duplicate, Gap, ReorderBuffer, RtpPacket, parse_rtp
from drivers.gb28181.sdp import (
    MediaTransport,
    SessionDescription,
    SessionKind,
    Setup,
    build_sdp,
    history_offer,
    parse_sdp,
    play_offer,
)
from drivers.gb28181.sip import Dialog, request
from drivers.gb28181.sip_transport import SipTimers, SipTransport
from simulators.gb28181.device import MediaSession, SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import SipTransportKind, parse_faults

from ..prerequisites import require
from .test_sim_device import (
    CHANNEL_ID,
    DEVICE_ID,
    DOMAIN,
    HAVE_FFMPEG,
    PASSWORD,
    PLATFORM_ID,
    MiniPlatform,
    run_device,
    settings_for,
    stop_device,
)

START = datetime(2026, 12, 5, 9, 0, 0)  # device-local (UTC+8)
UNIX_START = int((START - timedelta(hours=8)).timestamp() - datetime(1970, 1, 1).timestamp())


def make_clip(media_dir: Path, *, codec: str = "h264", audio: bool = False, seconds: float = 2.0,
              rate: int = 25, name: str = "REC0001.mp4") -> Path:
    """A source file as a recorder stores it, with its time range in a sidecar."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media_dir.mkdir(parents=True, exist_ok=True)
    path = media_dir / name
    argv = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={rate}"]
    if audio:
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
    argv += ["-t", str(seconds), "-g", str(rate)]
    if name.endswith((".h264", ".h265")):
        argv += ["-bf", "0"]  # raw streams carry no timestamps: recorders encode them without B-frames
    argv += ["-c:v", "libx265", "-x265-params", "log-level=error"] if codec == "h265" else ["-c:v", "libx264"]
    if audio:
        argv += ["-c:a", "aac", "-shortest"]
    subprocess.run([*argv, str(path)], check=True, timeout=120)
    end = START + timedelta(seconds=seconds)
    path.with_name(path.name + ".json").write_text(json.dumps({"start": START.isoformat(),
                                                               "end": end.isoformat()}))
    return path


def ffprobe_frames(path: Path, *, input_format: str | None = None) -> tuple[str, int]:
    argv = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
            "stream=codec_name,nb_read_frames", "-of", "json"]
    if input_format:
        argv += ["-f", input_format]
    out = subprocess.run([*argv, str(path)], check=True, capture_output=True, timeout=120).stdout
    stream = json.loads(out)["streams"][0]
    return stream["codec_name"], int(stream["nb_read_frames"])


@dataclass
class Receiver:
    """The platform's media endpoint: collects RTP packets (as bytes, arrival order)."""

    mode: str  # udp | tcp-passive | tcp-active
    packets: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _server: asyncio.Server | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _got(self, packet: bytes) -> None:
        self.packets.append(packet)
        self.arrivals.append(asyncio.get_running_loop().time())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.mode == "udp":
            receiver = self

            class Protocol(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    receiver._got(data)

            self._udp, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
            self.port = self._udp.get_extra_info("sockname")[1]
        elif self.mode == "tcp-passive":
            self._server = await asyncio.start_server(self._read, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        else:
            self.port = 9  # a=setup:active: we connect; the port in our offer is not listened on

    async def connect(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        self._tasks.append(asyncio.ensure_future(self._read(reader, writer)))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = StreamDeframer()
        try:
            while data := await reader.read(65536):
                for frame in deframer.feed(data):
                    self._got(frame.payload)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.closed.set()

    async def idle(self, quiet_s: float = 0.3) -> None:
        """UDP has no end: the platform's rule is an idle timeout after the last packet."""
        count = -1
        while count != len(self.packets):
            count = len(self.packets)
            await asyncio.sleep(quiet_s)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Reassembled:
    rtp: list[RtpPacket]
    video_frames: int
    audio_frames: int
    gaps: list[Gap]
    duplicates: int
    ps: bytes


def reassemble(packets: list[bytes]) -> Reassembled:
    """Received RTP → in-order PS bytes (drivers/gb28181/rtp) → frames (drivers/gb28181/ps)."""
    rtp = [parse_rtp(p) for p in packets]
    buffer = ReorderBuffer(window=64)
    demuxer = PsDemuxer()
    events: list[object] = []
    gaps: list[Gap] = []
    duplicates = 0
    ps = bytearray()

    def take(reorder_events: list[object]) -> None:
        nonlocal duplicates
        for event in reorder_events:
            if isinstance(event, Delivered):
                ps.extend(event.packet.payload)
                events.extend(demuxer.feed(event.packet.payload))
            elif isinstance(event, Gap):
                gaps.append(event)
                events.extend(demuxer.discontinuity("rtp gap"))
            elif isinstance(event, Duplicate):
                duplicates += 1

    for packet in rtp:
        take(list(buffer.push(packet)))
    take(list(buffer.flush()))
    events.extend(demuxer.flush())
    frames = [e for e in events if isinstance(e, EsFrame)]
    return Reassembled(rtp=rtp, video_frames=sum(is_video(f.stream_id) for f in frames),
                       audio_frames=sum(not is_video(f.stream_id) for f in frames), gaps=gaps,
                       duplicates=duplicates, ps=bytes(ps))


@dataclass
class Call:
    dialog: Dialog
    answer: SessionDescription
    offer: SessionDescription
    receiver: Receiver


class MediaPlatform(MiniPlatform):
    async def invite(self, receiver: Receiver, *, kind: SessionKind = SessionKind.DOWNLOAD,
                     seconds: float = 2.0, ssrc: int = 1100000001, speed: int | None = 8,
                     ack: bool = True) -> Call:
        assert self.transport is not None
        tcp = receiver.mode != "udp"
        setup = None if not tcp else Setup.PASSIVE if receiver.mode == "tcp-passive" else Setup.ACTIVE
        transport = MediaTransport.TCP if tcp else MediaTransport.UDP
        if kind is SessionKind.PLAY:
            offer = play_offer(owner_id=PLATFORM_ID, address="127.0.0.1", port=receiver.port, ssrc=ssrc,
                               transport=transport, setup=setup)
        else:
            offer = history_offer(kind, owner_id=PLATFORM_ID, channel_id=CHANNEL_ID, address="127.0.0.1",
                                  port=receiver.port, ssrc=ssrc, start_time=UNIX_START,
                                  stop_time=UNIX_START + int(seconds), transport=transport, setup=setup,
                                  download_speed=speed if kind is SessionKind.DOWNLOAD else None)
        peer = self.registered[DEVICE_ID]
        invite = request("INVITE", f"sip:{CHANNEL_ID}@{peer.host}:{peer.port}", [
            ("From", f"<sip:{PLATFORM_ID}@{DOMAIN}>;tag=inv{os.urandom(3).hex()}"),
            ("To", f"<sip:{CHANNEL_ID}@{DOMAIN}>"), ("Call-ID", f"call-{os.urandom(6).hex()}"),
            ("CSeq", "20 INVITE"), ("Contact", f"<sip:{PLATFORM_ID}@127.0.0.1:{self.port}>"),
            ("Subject", f"{CHANNEL_ID}:{ssrc},{PLATFORM_ID}:0"), ("Max-Forwards", "70"),
            ("Content-Type", "APPLICATION/SDP")], build_sdp(offer))
        ok = await self.transport.request(invite, peer)
        assert ok.status == 200, ok
        dialog = Dialog.from_2xx(invite, ok)
        self.transport.add_dialog(dialog.call_id, dialog.local_tag, self)
        answer = parse_sdp(ok.body)
        if receiver.mode == "tcp-active":
            assert answer.video.setup is Setup.PASSIVE
            await receiver.connect(answer.media_address() or "127.0.0.1", answer.video.port)
        if ack:
            await self.transport.send_ack(dialog.ack(), peer)
        return Call(dialog, answer, offer, receiver)

    async def bye(self, call: Call) -> int:
        assert self.transport is not None
        call.dialog, bye = call.dialog.request("BYE")
        response = await self.transport.request(bye, self.registered[DEVICE_ID])
        return response.status

    async def wait_121(self, call: Call) -> None:
        while (await asyncio.wait_for(self.media_status.get(), 30)) != call.dialog.call_id:
            pass


@pytest.fixture
async def platform() -> AsyncIterator[MediaPlatform]:
    mini = MediaPlatform({DEVICE_ID: PASSWORD})
    async with SipTransport(mini, host="127.0.0.1", port=0) as transport:
        mini.transport = transport
        yield mini


async def start(platform: MediaPlatform, media_dir: Path, faults: list[str] | None = None,
                **overrides: object) -> tuple[SimulatedDevice, asyncio.Task[None]]:
    device = SimulatedDevice(settings_for(platform, media_dir=media_dir, keepalive_interval_s=3600,
                                          faults=parse_faults(faults or []), **overrides))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    return device, task


async def download(platform: MediaPlatform, mode: str, **invite: object) -> Call:
    receiver = Receiver(mode)
    await receiver.open()
    return await platform.invite(receiver, **invite)  # type: ignore[arg-type]


def session_of(device: SimulatedDevice, call: Call) -> MediaSession:
    return device.sessions.get(call.dialog.call_id) or next(
        s for s in device.finished_sessions if s.call_id == call.dialog.call_id)


async def finished(device: SimulatedDevice, call: Call) -> None:
    """The device's stream task for this call has ended (whatever it was going to send, it sent)."""
    session = session_of(device, call)
    while session.task is None:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.shield(session.task), 60)


@pytest.mark.parametrize(("mode", "codec", "audio", "sip"), [
    ("udp", "h264", True, "udp"), ("tcp-passive", "h265", False, "udp"), ("tcp-active", "h264", False, "udp"),
    ("tcp-passive", "h264", True, "tcp"), ("udp", "raw-h265", False, "udp"),
])
async def test_download_delivers_every_frame_and_ends_with_media_status_121(
    platform: MediaPlatform, tmp_path: Path, mode: str, codec: str, audio: bool, sip: str
) -> None:
    raw = codec.startswith("raw-")
    codec = codec.removeprefix("raw-")
    source = make_clip(tmp_path / "media", codec=codec, audio=audio, name=f"REC0001.{codec}" if raw else
                       "REC0001.mp4")
    source_codec, source_frames = ffprobe_frames(source)
    device, task = await start(platform, tmp_path / "media", transport=SipTransportKind(sip))
    call = await download(platform, mode, ssrc=1100000042)
    assert call.answer.ssrc == 1100000042
    assert call.answer.video.file_size_bytes == source.stat().st_size
    await platform.wait_121(call)
    if mode == "udp":
        await call.receiver.idle()
    else:
        await asyncio.wait_for(call.receiver.closed.wait(), 30)  # the device closes after the last packet
    assert await platform.bye(call) == 200
    got = reassemble(call.receiver.packets)
    assert {p.ssrc for p in got.rtp} == {1100000042} and {p.payload_type for p in got.rtp} == {96}
    assert got.gaps == [] and got.duplicates == 0
    assert got.video_frames == source_frames
    if audio:
        assert got.audio_frames > 0  # G.711A frames of 20 ms
    # An independent reader of the same PS: ffmpeg's own MPEG-PS demuxer.
    ps_path = tmp_path / "received.ps"
    ps_path.write_bytes(got.ps)
    assert ffprobe_frames(ps_path, input_format="mpeg") == (source_codec, source_frames)
    (_, message), *_ = platform.in_dialog
    assert message.cmd_type == "MediaStatus" and isinstance(message.payload, manscdp.MediaStatus)
    assert message.payload.is_file_end and message.device_id == CHANNEL_ID
    await stop_device(device, task)
    await call.receiver.close()


async def test_no_121_ends_the_stream_without_media_status(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=1.0)
    device, task = await start(platform, tmp_path / "media", ["no-121"])
    call = await download(platform, "tcp-passive")
    await asyncio.wait_for(call.receiver.closed.wait(), 30)
    await finished(device, call)
    assert platform.media_status.empty() and platform.in_dialog == []
    assert reassemble(call.receiver.packets).video_frames == 25
    assert await platform.bye(call) == 200
    await stop_device(device, task)
    await call.receiver.close()


@pytest.mark.parametrize("fault", ["different-y", "missing-y", "ssrc-mismatch", None])
async def test_ssrc_faults(platform: MediaPlatform, tmp_path: Path, fault: str | None) -> None:
    make_clip(tmp_path / "media", seconds=0.5)
    device, task = await start(platform, tmp_path / "media", [fault] if fault else [])
    call = await download(platform, "udp", ssrc=1100000007)
    await platform.wait_121(call)
    await call.receiver.idle()
    rtp_ssrcs = {parse_rtp(p).ssrc for p in call.receiver.packets}
    if fault == "different-y":
        assert call.answer.ssrc not in (None, 1100000007) and rtp_ssrcs == {call.answer.ssrc}
    elif fault == "missing-y":
        assert call.answer.ssrc_text is None and rtp_ssrcs == {1100000007}
    elif fault == "ssrc-mismatch":
        assert call.answer.ssrc == 1100000007 and len(rtp_ssrcs) == 1 and 1100000007 not in rtp_ssrcs
    else:  # the control: y= as offered, RTP as answered
        assert call.answer.ssrc == 1100000007 and rtp_ssrcs == {1100000007}
    await platform.bye(call)
    await stop_device(device, task)
    await call.receiver.close()


@pytest.mark.parametrize("mode", ["udp", "tcp-active"])
async def test_loss_reorder_and_duplicate_show_as_gaps_swaps_and_repeats(
    platform: MediaPlatform, tmp_path: Path, mode: str
) -> None:
    make_clip(tmp_path / "media", seconds=2.0)
    device, task = await start(platform, tmp_path / "media", ["loss=0.05", "reorder=0.05", "duplicate=0.05"],
                               seed=7, rtp_payload_bytes=400)
    call = await download(platform, mode)
    await platform.wait_121(call)
    if mode == "udp":
        await call.receiver.idle()
    else:
        await asyncio.wait_for(call.receiver.closed.wait(), 30)
    stats = session_of(device, call).stats
    assert stats.dropped and stats.reordered and stats.duplicated
    got = reassemble(call.receiver.packets)
    sequences = [p.sequence for p in got.rtp]
    # Loss: exactly the dropped sequence numbers are missing, and the receiver reports them as gaps.
    assert not set(stats.dropped) & set(sequences)
    assert sum(gap.count for gap in got.gaps) == len(stats.dropped)
    # Duplicates: each duplicated packet came twice.
    assert got.duplicates == len(stats.duplicated)
    assert all(sequences.count(s) == 2 for s in stats.duplicated)
    # Reordering: each held packet came after a later one.
    for held in stats.reordered:
        position = sequences.index(held)
        assert position > 0 and sequences[position - 1] != (held - 1) & 0xFFFF
    assert got.video_frames < 50  # frames touched by loss are dropped, never delivered with holes
    await platform.bye(call)
    await stop_device(device, task)
    await call.receiver.close()


async def test_same_seed_same_faults(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=1.0)
    dropped = []
    for _ in range(2):
        device, task = await start(platform, tmp_path / "media", ["loss=0.1"], seed=3)
        call = await download(platform, "tcp-passive")
        await asyncio.wait_for(call.receiver.closed.wait(), 30)
        await finished(device, call)
        session = session_of(device, call)
        dropped.append(len(session.stats.dropped))
        await platform.bye(call)
        await stop_device(device, task)
        await call.receiver.close()
    assert dropped[0] == dropped[1] > 0


async def test_die_mid_stream_stops_halfway_without_121(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=2.0)
    device, task = await start(platform, tmp_path / "media", ["die-mid-stream"])
    call = await download(platform, "tcp-passive")
    await asyncio.wait_for(call.receiver.closed.wait(), 30)
    await finished(device, call)
    got = reassemble(call.receiver.packets)
    assert 0 < got.video_frames <= 25  # of 50
    assert platform.media_status.empty()
    await platform.bye(call)
    await stop_device(device, task)
    await call.receiver.close()


async def test_slow_ignores_the_download_speed(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=0.6, rate=10)
    device, task = await start(platform, tmp_path / "media", ["slow"])
    call = await download(platform, "udp", speed=4)
    assert call.offer.video.download_speed == 4
    await platform.wait_121(call)
    session = session_of(device, call)
    assert session.speed == 0.25
    arrivals = call.receiver.arrivals
    # 6 frames 0.1 s apart at a quarter speed: at least 5 x 0.4 s between the first and the last packet
    # (a lower bound only: a slow machine is slower, never faster).
    assert arrivals[-1] - arrivals[0] >= 1.9
    await platform.bye(call)
    await stop_device(device, task)
    await call.receiver.close()


async def test_live_play_streams_until_bye(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=0.4)  # shorter than what we watch: Play loops the file
    device, task = await start(platform, tmp_path / "media")
    receiver = Receiver("udp")
    await receiver.open()
    call = await platform.invite(receiver, kind=SessionKind.PLAY, ssrc=100000001)
    while reassemble(list(receiver.packets)).video_frames < 15:
        await asyncio.sleep(0.05)
    assert await platform.bye(call) == 200
    session = device.finished_sessions[-1]
    assert session.kind is SessionKind.PLAY and session.end_reason == "BYE" and session.task is not None
    assert session.task.done() and platform.media_status.empty()
    got = reassemble(receiver.packets)
    # More frames than the 0.4 s file holds, and timestamps that run on past its end: it looped.
    assert got.video_frames > 10 and max(p.timestamp for p in got.rtp) > 0.4 * 90000
    await stop_device(device, task)
    await receiver.close()


async def _live_audio_pts(platform: MediaPlatform, tmp_path: Path, faults: list[str]) -> list[int]:
    """The audio PTS (90 kHz) of about 2.5 s of a live Play looping a 1.2 s clip with sound."""
    make_clip(tmp_path / "media", seconds=1.2, rate=10, audio=True)
    device, task = await start(platform, tmp_path / "media", faults)
    receiver = Receiver("udp")
    await receiver.open()
    call = await platform.invite(receiver, kind=SessionKind.PLAY, ssrc=100000001)
    while reassemble(list(receiver.packets)).video_frames < 25:
        await asyncio.sleep(0.05)
    await platform.bye(call)
    await stop_device(device, task)
    await receiver.close()
    demuxer = PsDemuxer()
    events = demuxer.feed(reassemble(receiver.packets).ps) + demuxer.flush()
    sound = [e for e in events if isinstance(e, EsFrame) and not is_video(e.stream_id)]
    assert sound and all(f.codec is Codec.G711A and f.pts is not None for f in sound)
    assert demuxer.stream_map is not None
    assert [s.stream_type for s in demuxer.stream_map.streams] == [0x1B, 0x90]
    return [f.pts for f in sound if f.pts is not None]


async def test_live_play_sends_the_file_s_sound_as_g711a_without_holes_or_overlaps_across_loops(
    platform: MediaPlatform, tmp_path: Path
) -> None:
    pts = await _live_audio_pts(platform, tmp_path, [])
    steps = [b - a for a, b in itertools.pairwise(pts)]
    assert pts[-1] > 1.5 * 90000  # it looped (the clip is 1.2 s)
    # 20 ms packets, never overlapping; where the clip begins again its sound follows its picture (the
    # clip's AAC, cut by -shortest, ends up to an AAC frame of 128 ms before its picture).
    assert all(step > 0 for step in steps)
    loops = [step for step in steps if step != 1800]
    assert 1 <= len(loops) <= 2 and all(step <= 0.2 * 90000 for step in loops), loops


async def test_audio_drop_leaves_out_that_many_seconds_of_sound_once(
    platform: MediaPlatform, tmp_path: Path
) -> None:
    pts = await _live_audio_pts(platform, tmp_path, ["audio-drop=0.5"])
    steps = [b - a for a, b in itertools.pairwise(pts)]
    holes = [step for step in steps if step > 0.2 * 90000]
    assert len(holes) == 1 and 0.5 * 90000 <= holes[0] <= 0.5 * 90000 + 1800 * 2, holes
    # From halfway through the clip's first round (0.6 s of its 1.2 s).
    hole_at = pts[steps.index(holes[0])]
    assert 0.4 * 90000 <= hole_at <= 0.7 * 90000


async def test_unknown_time_range_channel_and_bad_sdp_are_refused(
    platform: MediaPlatform, tmp_path: Path
) -> None:
    make_clip(tmp_path / "media", seconds=0.5)
    device, task = await start(platform, tmp_path / "media")
    receiver = Receiver("udp")
    await receiver.open()
    offer = history_offer(SessionKind.DOWNLOAD, owner_id=PLATFORM_ID, channel_id=CHANNEL_ID,
                          address="127.0.0.1", port=receiver.port, ssrc=1, start_time=UNIX_START - 86400,
                          stop_time=UNIX_START - 86000)
    assert platform.transport is not None
    peer = platform.registered[DEVICE_ID]
    cases = ((CHANNEL_ID, build_sdp(offer), 404), ("34020000001310000999", build_sdp(offer), 404),
             (CHANNEL_ID, b"v=0\r\nm=video 99999 RTP/AVP 96\r\n", 488), (CHANNEL_ID, b"\x00garbage", 488))
    for channel, body, expected in cases:
        invite = request("INVITE", f"sip:{channel}@127.0.0.1:{peer.port}", [
            ("From", f"<sip:{PLATFORM_ID}@{DOMAIN}>;tag=x"), ("To", f"<sip:{channel}@{DOMAIN}>"),
            ("Call-ID", f"c-{os.urandom(4).hex()}"), ("CSeq", "1 INVITE"), ("Max-Forwards", "70"),
            ("Content-Type", "APPLICATION/SDP")], body)
        response = await platform.transport.request(invite, peer)
        assert response.status == expected
    assert device.sessions == {} and receiver.packets == []
    await stop_device(device, task)
    await receiver.close()


def test_ffmpeg_is_present_under_ci() -> None:
    require(HAVE_FFMPEG and shutil.which("ffprobe") is not None, "needs ffmpeg and ffprobe")


async def test_playback_runs_in_real_time_and_ends_with_121(platform: MediaPlatform, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "media", seconds=0.8, rate=10)
    _, source_frames = ffprobe_frames(source)
    device, task = await start(platform, tmp_path / "media")
    receiver = Receiver("tcp-active")
    await receiver.open()
    call = await platform.invite(receiver, kind=SessionKind.PLAYBACK, seconds=0.8)
    assert call.offer.video.download_speed is None and session_of(device, call).speed == 1.0
    await platform.wait_121(call)
    await asyncio.wait_for(receiver.closed.wait(), 30)
    assert reassemble(receiver.packets).video_frames == source_frames
    # 8 frames 0.1 s apart at real time: at least 0.7 s from the first packet to the last (lower bound).
    assert receiver.arrivals[-1] - receiver.arrivals[0] >= 0.65
    assert await platform.bye(call) == 200
    await stop_device(device, task)
    await receiver.close()


async def test_a_session_the_platform_never_ends_is_ended_by_the_device(
    platform: MediaPlatform, tmp_path: Path
) -> None:
    make_clip(tmp_path / "media", seconds=0.3)
    device, task = await start(platform, tmp_path / "media", max_sessions=1, bye_wait_s=0.5)
    first = await download(platform, "udp")
    await platform.wait_121(first)
    session = session_of(device, first)
    await asyncio.wait_for(session.ended.wait(), 10)  # no BYE came: the slot is given back
    assert session.end_reason == "end of file" and device.sessions == {}
    second = await download(platform, "udp")  # max_sessions=1: this would get 486 had the slot leaked
    await platform.wait_121(second)
    assert await platform.bye(second) == 200
    assert await platform.bye(first) == 481  # the device forgot the first dialog
    await stop_device(device, task)
    await first.receiver.close()
    await second.receiver.close()


async def test_sessions_beyond_the_limit_get_486(platform: MediaPlatform, tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=0.3)
    device, task = await start(platform, tmp_path / "media", max_sessions=1)
    live = Receiver("udp")
    await live.open()
    call = await platform.invite(live, kind=SessionKind.PLAY, ssrc=100000002)
    refused = Receiver("udp")
    await refused.open()
    with pytest.raises(AssertionError, match="486"):
        await platform.invite(refused)
    await refused.close()
    assert list(device.sessions) == [call.dialog.call_id]
    assert await platform.bye(call) == 200
    await stop_device(device, task)
    await live.close()


async def test_a_second_invite_with_the_same_subject_replaces_the_first(
    platform: MediaPlatform, tmp_path: Path
) -> None:
    make_clip(tmp_path / "media", seconds=0.3)
    device, task = await start(platform, tmp_path / "media")
    first_receiver, second_receiver = Receiver("udp"), Receiver("udp")
    await first_receiver.open()
    await second_receiver.open()
    first = await platform.invite(first_receiver, kind=SessionKind.PLAY, ssrc=100000003)
    second = await platform.invite(second_receiver, kind=SessionKind.PLAY, ssrc=100000003)  # same Subject
    old = session_of(device, first)
    assert old.ended.is_set() and old.end_reason == "replaced by a new INVITE with the same Subject"
    assert list(device.sessions) == [second.dialog.call_id]
    third_receiver = Receiver("udp")
    await third_receiver.open()
    third = await platform.invite(third_receiver, kind=SessionKind.PLAY, ssrc=100000004)  # the control
    assert set(device.sessions) == {second.dialog.call_id, third.dialog.call_id}
    assert await platform.bye(second) == 200 and await platform.bye(third) == 200
    await stop_device(device, task)
    for receiver in (first_receiver, second_receiver, third_receiver):
        await receiver.close()


def test_generated_recordings_are_distinct_media_with_their_times(tmp_path: Path) -> None:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    paths = generate_recordings(tmp_path, 3, start=START, seconds=1.0, size="160x120", rate=10,
                                spacing=timedelta(minutes=5))
    assert len({path.read_bytes() for path in paths}) == 3
    for index, path in enumerate(paths):
        assert ffprobe_frames(path) == ("h264", 10)
        times = json.loads(path.with_name(path.name + ".json").read_text())
        began = START + index * timedelta(minutes=5)
        assert times == {"start": began.isoformat(), "end": (began + timedelta(seconds=1)).isoformat()}


async def test_cli_generates_recordings_and_lists_them(platform: MediaPlatform, tmp_path: Path) -> None:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "gb28181-device", "--platform", f"127.0.0.1:{platform.port}",
        "--platform-id", PLATFORM_ID, "--device-id", DEVICE_ID, "--password-file", str(password_file),
        "--media-dir", str(tmp_path / "media"), "--generate", "2", "--keepalive-interval", "3600",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await platform.wait_for(lambda: DEVICE_ID in platform.registered, timeout_s=60)
        answer = await platform.query(lambda sn: manscdp.build_record_info_query(
            sn, CHANNEL_ID, manscdp.RecordInfoQuery(datetime(2000, 1, 1), datetime(2100, 1, 1))))
        assert isinstance(answer, manscdp.AssembledAnswer) and answer.sum_num == 2
        names = sorted(path.name for path in (tmp_path / "media").glob("*.mp4"))
        assert [item.name for item in answer.items if isinstance(item, manscdp.RecordItem)] == names
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


async def test_the_200_is_repeated_until_the_ack_and_a_call_never_acked_ends(tmp_path: Path) -> None:
    make_clip(tmp_path / "media", seconds=0.3)
    repeated: asyncio.Queue[int] = asyncio.Queue()
    mini = MediaPlatform({DEVICE_ID: PASSWORD})
    async with SipTransport(mini, host="127.0.0.1", port=0,
                            on_unmatched_response=lambda response, _peer: repeated.put_nowait(response.status)
                            ) as transport:
        mini.transport = transport
        device = SimulatedDevice(settings_for(mini, media_dir=tmp_path / "media", keepalive_interval_s=3600),
                                 sip_timers=SipTimers(t1_s=0.05, t2_s=0.2))
        task = await run_device(device)
        await mini.wait_for(lambda: DEVICE_ID in mini.registered)
        receiver = Receiver("udp")
        await receiver.open()
        call = await mini.invite(receiver, ack=False)
        assert await asyncio.wait_for(repeated.get(), 10) == 200  # no ACK yet: the 200 comes again
        session = session_of(device, call)
        assert not session.acked.is_set() and receiver.packets == []  # nothing streams before the ACK
        await asyncio.wait_for(session.ended.wait(), 10)  # 64*T1 without an ACK: the call is over
        assert session.end_reason == "no ACK" and device.sessions == {}
        await stop_device(device, task)
        await receiver.close()
