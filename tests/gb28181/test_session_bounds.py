"""A history session is bounded from above (review 16, finding 8): it ends `past-end` when the received
video's media time (the longest monotonic run of its PTS) passes the recording's length plus a tolerance,
and `time-limit` when its video stalls (less than 6 s of video per 60 s of clock) or a hard cap from the
length passes (review 17, finding 5: a wall-clock limit alone cut steady slow transfers). Real receiver
and sockets; each end with its control (a stream within the bounds ends as it did)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.gb28181.ps import PsMuxer
from drivers.gb28181.rtp import RtpPacket
from drivers.gb28181.sdp import SessionKind
from edge.gb28181 import media, sessions
from edge.gb28181.media import PTS_MODULO, EndReason, MediaOutcome, MediaTransport, open_receiver
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import MediaRequest, SessionBounds, session_bounds

from .media_sender import tcp_bytes
from .platform_peer import FakeClock, Ledger, ReceiverFactory, TestDevice, offered_media, platform_settings

SSRC = 1100000042
PORTS = (32000, 32999)
HZ = 90000
DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
PASSWORD = "12345678"


def _packets(pts_list: list[int], *, ssrc: int = SSRC, first_sequence: int = 1) -> list[bytes]:
    """One RTP packet per video frame (tiny H.264 frames in PS packs), PTS as given."""
    muxer = PsMuxer()
    packets = []
    for i, pts in enumerate(pts_list):
        # An access unit delimiter, then one slice with first_mb_in_slice 0: one access unit per PES.
        slice_header = (b"\x65" if i % 10 == 0 else b"\x41") + b"\x88"
        frame = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + slice_header + b"\xaa" * 40
        pack = muxer.video_frame(frame, pts % PTS_MODULO, key=i % 10 == 0)
        packets.append(RtpPacket(payload_type=96, sequence=first_sequence + i, timestamp=pts % (1 << 32),
                                 ssrc=ssrc, marker=True, payload=pack).to_bytes())
    return packets


def _send(port: int, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))


async def _receive(tmp_path: Path, pts_list: list[int], *, max_media_span_s: float | None) -> MediaOutcome:
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=5.0, max_bytes=1 << 24,
                                   max_media_span_s=max_media_span_s)
    _send(receiver.local_port, _packets(pts_list))
    return await receiver.close(drain_s=1.0)


def _seconds(first_s: float, count: int, start: int = 1000 * HZ) -> list[int]:
    return [start + round((first_s + i) * HZ) for i in range(count)]


# -- past-end --------------------------------------------------------------------------------------------


async def test_video_past_the_recordings_length_ends_the_session_past_end(tmp_path: Path) -> None:
    outcome = await _receive(tmp_path, _seconds(0, 60), max_media_span_s=40.0)
    assert outcome.ended is EndReason.PAST_END and "past the 40 s" in outcome.detail
    assert outcome.summary()["ended"] == "past-end"
    assert outcome.video_run_span_s is not None and outcome.video_run_span_s > 40
    assert outcome.video_run_span_s < 59  # it ended there, not at the stream's end


async def test_control_video_within_the_length_ends_as_closed(tmp_path: Path) -> None:
    outcome = await _receive(tmp_path, _seconds(0, 30), max_media_span_s=40.0)
    assert outcome.ended is EndReason.CLOSED and outcome.video_run_span_s == pytest.approx(29, abs=1)


async def test_a_pts_restart_starts_a_new_run_and_the_longest_run_is_the_span(tmp_path: Path) -> None:
    """30 s, then the encoder restarts its PTS near 0 for 25 s: neither a 26-hour span (the wrap read
    naively) nor past-end (no run passes 40 s); the restart is counted."""
    outcome = await _receive(tmp_path, _seconds(0, 30) + _seconds(0, 25, start=HZ), max_media_span_s=40.0)
    assert outcome.ended is EndReason.CLOSED
    assert outcome.video_pts_restarts == 1 and outcome.video_run_span_s == pytest.approx(29, abs=1)
    assert outcome.video_span_s is not None and outcome.video_span_s > 3600  # what last - first says


async def test_a_pts_wrap_inside_a_run_is_one_run(tmp_path: Path) -> None:
    near_wrap = PTS_MODULO - 10 * HZ
    outcome = await _receive(tmp_path, _seconds(0, 50, start=near_wrap), max_media_span_s=40.0)
    assert outcome.ended is EndReason.PAST_END and outcome.video_pts_restarts == 0


async def test_b_frames_stepping_back_a_little_stay_in_the_run(tmp_path: Path) -> None:
    pts = [1000 * HZ + i * 3600 for i in range(0, 300)]
    for i in range(1, len(pts) - 1, 3):  # decode order I P B: B's PTS below the P before it
        pts[i], pts[i + 1] = pts[i + 1], pts[i]
    outcome = await _receive(tmp_path, pts, max_media_span_s=40.0)
    assert outcome.video_pts_restarts == 0 and outcome.video_run_span_s == pytest.approx(299 * 3600 / HZ)


# -- time-limit ------------------------------------------------------------------------------------------


class SteppedClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _trickle_over_tcp(tmp_path: Path, time_limit_s: float | None) -> MediaOutcome:
    """A TCP-passive receiver on a stepped clock; one frame every 4 s of that clock (never idle for 5 s)
    up to 64 s, each awaited until the receiver took it; then closed unless it ended by itself."""
    clock = SteppedClock()
    receiver = await open_receiver(MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS,
                                   ssrc=SSRC, raw_path=tmp_path / "raw.ps", idle_timeout_s=5.0,
                                   max_bytes=1 << 24, time_limit_s=time_limit_s, clock=clock)
    _, writer = await asyncio.open_connection("127.0.0.1", receiver.local_port)
    try:
        for n, second in enumerate(range(0, 64, 4)):
            if receiver.ended is not None:
                break
            clock.now = 100.0 + second
            writer.write(tcp_bytes(_packets([1000 * HZ + second * HZ], first_sequence=n + 1)))
            await writer.drain()
            async with asyncio.timeout(10):  # until the receiver took it (TCP: no reorder window)
                while receiver.progress.packets < n + 1 and receiver.ended is None:
                    await asyncio.sleep(0.001)
            if second < 60:
                assert receiver.ended is None
        if receiver.ended is None and time_limit_s is None:
            return await receiver.close(drain_s=0)
        return await asyncio.wait_for(receiver.wait_closed(), 10)
    finally:
        writer.close()


async def test_the_time_limit_ends_a_session_that_keeps_trickling(tmp_path: Path) -> None:
    outcome = await _trickle_over_tcp(tmp_path, 60.0)
    assert outcome.ended is EndReason.TIME_LIMIT and "60 s" in outcome.detail
    assert outcome.summary()["ended"] == "time-limit"


async def test_control_without_a_time_limit_the_same_trickle_goes_on(tmp_path: Path) -> None:
    outcome = await _trickle_over_tcp(tmp_path, None)
    assert outcome.ended is EndReason.CLOSED and outcome.packets == 16


async def _stream_over_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, media_per_step_s: float, *,
                           steps: int = 40, step_s: float = 4.0) -> MediaOutcome:
    """A TCP-passive receiver with the stall rule (6 s of video per 60 s) and no hard cap, on a stepped
    clock; one frame every `step_s` of that clock (never idle) whose PTS advances `media_per_step_s`, for
    `steps` frames, each awaited until taken and the receiver's watch has seen the step; then the device
    closes its connection unless the receiver ended first. The watch looks every 0.05 s here."""
    monkeypatch.setattr(media, "IDLE_CHECK_S", 0.05)
    clock = SteppedClock()
    receiver = await open_receiver(MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS,
                                   ssrc=SSRC, raw_path=tmp_path / "raw.ps", idle_timeout_s=30.0,
                                   max_bytes=1 << 24, progress_window_s=60.0, min_progress_s=6.0, clock=clock)
    _, writer = await asyncio.open_connection("127.0.0.1", receiver.local_port)
    try:
        for n in range(steps):
            if receiver.ended is not None:
                break
            clock.now = 100.0 + n * step_s
            writer.write(tcp_bytes(_packets([1000 * HZ + round(n * media_per_step_s * HZ)],
                                            first_sequence=n + 1)))
            await writer.drain()
            async with asyncio.timeout(10):
                while receiver.progress.packets < n + 1 and receiver.ended is None:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(media.IDLE_CHECK_S * 2)  # the watch looks at the clock every IDLE_CHECK_S
        if receiver.ended is None:
            writer.close()
        return await asyncio.wait_for(receiver.wait_closed(), 10)
    finally:
        writer.close()


async def test_a_stream_whose_video_trickles_ends_stalled(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """0.1 s of video per 4 s of clock (1/40 of real time, bytes all along): cut at the end of a window."""
    outcome = await _stream_over_tcp(tmp_path, monkeypatch, 0.1)
    assert outcome.ended is EndReason.TIME_LIMIT and "stalled" in outcome.detail
    assert outcome.elapsed_s <= 2 * 60 + 4 and outcome.packets < 40


async def test_a_stream_whose_video_does_not_advance_ends_stalled(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _stream_over_tcp(tmp_path, monkeypatch, 0.0)
    assert outcome.ended is EndReason.TIME_LIMIT and "stalled: 0.0 s of video" in outcome.detail


async def test_a_pts_that_restarts_every_frame_makes_no_progress(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each frame steps back over PTS_BACKSTEP: every one starts a new run, none advances."""
    outcome = await _stream_over_tcp(tmp_path, monkeypatch, -2.0)
    assert outcome.ended is EndReason.TIME_LIMIT and outcome.video_pts_restarts > 0


async def test_control_a_stream_at_a_quarter_of_real_time_is_not_cut(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s of video per 4 s of clock: 15 s per window
    outcome = await _stream_over_tcp(tmp_path, monkeypatch, 1.0)
    assert outcome.ended is EndReason.CLOSED and outcome.packets == 40
    assert outcome.elapsed_s >= 150  # well past two windows


async def test_control_a_stream_just_above_a_tenth_of_real_time_is_not_cut(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _stream_over_tcp(tmp_path, monkeypatch, 0.55, step_s=4.5)  # 7.3 s of video per 60 s
    assert outcome.ended is EndReason.CLOSED and outcome.packets == 40


def test_the_bounds_follow_the_length_not_the_speed() -> None:
    """Past-end: the length + 5 % + 30 s; the hard cap: 10 x the length + 60 s whatever the speed asked
    (devices may ignore it); the stall rule: 6 s of video per 60 s of clock."""
    assert session_bounds(SessionKind.DOWNLOAD, 0, 600, 1) == SessionBounds(600 * 1.05 + 30, 600 * 10 + 60,
                                                                            60.0, 6.0)
    assert session_bounds(SessionKind.DOWNLOAD, 0, 600, 4) == session_bounds(SessionKind.DOWNLOAD, 0, 600, 1)
    assert session_bounds(SessionKind.PLAYBACK, 0, 600, None).time_limit_s == 600 * 10 + 60
    assert session_bounds(SessionKind.PLAY, 0, 0, None) == SessionBounds(None, None, None, None)
    # A recording listed with EndTime == StartTime (or a reversed range) is bounded as 1 s long.
    one_second = SessionBounds(1 * 1.05 + 30, 1 * 10 + 60, 60.0, 6.0)
    assert session_bounds(SessionKind.DOWNLOAD, 600, 600, 4) == one_second
    assert session_bounds(SessionKind.DOWNLOAD, 600, 500, 4) == one_second


# -- through the platform ------------------------------------------------------------------------------


@pytest.fixture
async def platform() -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


async def _download(platform: GbPlatform, tmp_path: Path, length_s: int,
                    stream: list[int] | None) -> sessions.SessionResult:
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    stop = asyncio.Event()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "udp", tmp_path / "raw.ps", 1_764_550_800,
            1_764_550_800 + length_s, speed=4))
        host, port = offered_media(device.invites[0])

        async def trickle() -> None:  # one frame a second of media, every 0.2 s: never idle
            second = 0
            while not stop.is_set():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    packet = _packets([1000 * HZ + second * HZ], ssrc=session.ssrc_offered)[0]
                    sock.sendto(packet, (host, port))
                second += 1
                await asyncio.sleep(0.2)

        if stream is None:
            sender = asyncio.ensure_future(trickle())
        else:
            _send(port, _packets(stream, ssrc=session.ssrc_offered))
            sender = None
        result = await asyncio.wait_for(session.wait(), 30)
        stop.set()
        if sender is not None:
            await sender
        return result
    finally:
        stop.set()
        await device.close()


async def test_a_download_past_its_recording_ends_past_end_and_says_so(platform: GbPlatform,
                                                                       tmp_path: Path) -> None:
    result = await _download(platform, tmp_path, 10, _seconds(0, 60))  # 60 s of video for a 10 s recording
    assert result.end_reason is sessions.EndReason.PAST_END
    facts = result.facts()
    assert facts["end_reason"] == "past-end" and facts["max_media_span_s"] == pytest.approx(40.5)
    assert result.outcome.summary()["ended"] == "past-end"


async def test_a_trickling_download_ends_at_its_time_limit(platform: GbPlatform, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s recording: a hard cap of 2 x 1 s + 0.5 s (the trickle's video advances: no stall)
    monkeypatch.setattr(sessions, "TIME_LIMIT_SLACK_S", 0.5)
    monkeypatch.setattr(sessions, "TIME_LIMIT_FACTOR", 2.0)
    result = await _download(platform, tmp_path, 1, None)
    assert result.end_reason is sessions.EndReason.TIME_LIMIT and result.time_limit_s == pytest.approx(2.5)
    assert result.facts()["end_reason"] == "time-limit" and result.outcome.ended is EndReason.TIME_LIMIT


async def test_the_platform_keeps_the_time_limit_even_when_its_receiver_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that ignores its bounds (here the test's counting one) is stopped by the platform."""
    monkeypatch.setattr(sessions, "TIME_LIMIT_SLACK_S", 0.5)
    monkeypatch.setattr(sessions, "TIME_LIMIT_FACTOR", 2.0)
    monkeypatch.setattr(sessions, "TIME_LIMIT_GRACE_S", 0.1)
    receivers = ReceiverFactory()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=receivers)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "udp", tmp_path / "raw.ps", 1_764_550_800, 1_764_550_801,
            speed=4))
        assert receivers.calls[0]["time_limit_s"] == pytest.approx(2.5)
        assert receivers.calls[0]["progress_window_s"] == 60.0 and receivers.calls[0]["min_progress_s"] == 6.0
        assert receivers.calls[0]["expected_peer_host"] == "127.0.0.1"
        result = await asyncio.wait_for(session.wait(), 30)
        assert result.end_reason is sessions.EndReason.TIME_LIMIT and receivers.made[0].closed.is_set()
        await asyncio.wait_for(device.bye_received.wait(), 10)  # and hung up
    finally:
        await device.close()
        await platform.close()
