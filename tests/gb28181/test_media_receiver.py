"""The media receiver (edge/gb28181/media.py) over real sockets: real ffmpeg-made H.264 / H.265 with G.711
A-law, muxed into GB/T 28181 PS and sent as RTP over UDP, TCP passive and TCP active (RFC 4571 and `$`
framing).
The raw PS written is byte for byte what was sent; loss and reordering give recorded gaps; wrong SSRCs,
wrong peers and garbage are refused and counted; the session ends on idle, size limit and close."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec, EsFrame, PsDemuxer
from drivers.gb28181.rtp import parse_rtp
from edge.gb28181.media import (
    FLUSH_BYTES,
    EndReason,
    MediaError,
    MediaOutcome,
    MediaReceiver,
    MediaTransport,
    open_receiver,
)
from tests.gb28181.disk_rig import StalledDisk
from tests.gb28181.media_sender import (
    HAVE_FFMPEG,
    SourceMedia,
    TcpDevice,
    make_source,
    ps_packs,
    reorder,
    rtp_packets,
    send_tcp,
    send_udp,
    tcp_bytes,
)
from tests.prerequisites import require

SSRC = 1100000042
PORTS = (30000, 30999)


@dataclass(frozen=True)
class Stream:
    media: SourceMedia
    ps: bytes  # the whole program stream as sent
    packets: list[bytes]


def _stream(media: SourceMedia) -> Stream:
    packs = ps_packs(media)
    return Stream(media, b"".join(p for p, _ in packs), rtp_packets(packs, ssrc=SSRC))


@pytest.fixture(scope="module")
def h264(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return _stream(make_source(tmp_path_factory.mktemp("h264"), Codec.H264, seconds=3))


@pytest.fixture(scope="module")
def h265(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return _stream(make_source(tmp_path_factory.mktemp("h265"), Codec.H265, seconds=2, audio=False))


async def _open(spool: Path, transport: MediaTransport, **kwargs: object) -> MediaReceiver:
    settings: dict[str, object] = {"ssrc": SSRC, "idle_timeout_s": 1.0, "max_bytes": 1 << 30,
                                   "port_range": PORTS}
    settings.update(kwargs)
    return await open_receiver(transport, bind_host="127.0.0.1",
                               raw_path=spool / "rec.ps", **settings)  # type: ignore[arg-type]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir()
    return tmp_path / "spool"


def _video_frames(data: bytes) -> list[EsFrame]:
    demuxer = PsDemuxer()
    events = demuxer.feed(data) + demuxer.flush()
    return [e for e in events if isinstance(e, EsFrame) and e.stream_id == 0xE0]


def _assert_whole(outcome: MediaOutcome, stream: Stream, raw: Path, *, ssrc_policy: str = "expected") -> None:
    assert raw.read_bytes() == stream.ps, "the raw PS is exactly what the device sent"
    assert outcome.bytes == len(stream.ps) and outcome.packets == len(stream.packets)
    assert outcome.gaps == [] and outcome.lost_packets == 0
    assert outcome.video_frames == len(stream.media.units)
    frames = _video_frames(raw.read_bytes())
    # The same frames come out (ffmpeg's parser gives a 4-byte start code's leading zero to the unit before).
    assert len(frames) == len(stream.media.units)
    assert b"".join(f.data for f in frames) == b"".join(u for u, _ in stream.media.units)
    assert [f.key for f in frames] == [k for _, k in stream.media.units]
    if stream.media.audio is not None:
        assert outcome.audio_frames == -(-len(stream.media.audio) // 160)
        assert outcome.streams == {0xE0: str(stream.media.codec), 0xC0: "g711a"}
    assert outcome.ssrc == SSRC and outcome.ssrc_policy == ssrc_policy
    assert oct(raw.stat().st_mode & 0o777) == "0o600"


# -- the three transports ----------------------------------------------------------------------------------


async def test_udp_h264_with_g711a_arrives_byte_for_byte(h264: Stream, spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    assert PORTS[0] <= receiver.local_port <= PORTS[1]
    await send_udp(h264.packets, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.IDLE, "a download without MediaStatus 121 ends on idle"
    _assert_whole(outcome, h264, spool / "rec.ps")
    assert outcome.peer is not None and outcome.peer.startswith("127.0.0.1:")
    assert outcome.payload_types == [96]


@pytest.mark.parametrize("interleaved", [False, True], ids=["rfc4571", "dollar"])
async def test_tcp_passive_h264_and_h265(h264: Stream, h265: Stream, spool: Path,
                                         interleaved: bool) -> None:
    stream = h265 if interleaved else h264
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE, expected_peer_host="127.0.0.1")
    await send_tcp(stream.packets, receiver.local_port, interleaved=interleaved)
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.CLOSED and "device closed" in outcome.detail
    assert outcome.framing == ("interleaved" if interleaved else "rfc4571")
    _assert_whole(outcome, stream, spool / "rec.ps")


@pytest.mark.parametrize("codec", ["h264", "h265"])
async def test_tcp_active_connects_to_the_device(h264: Stream, h265: Stream, spool: Path, codec: str) -> None:
    stream = h264 if codec == "h264" else h265
    device = TcpDevice(stream.packets, interleaved=codec == "h265")
    device_port = await device.start()
    try:
        receiver = await _open(spool, MediaTransport.TCP_ACTIVE)
        await receiver.connect("127.0.0.1", device_port)
        outcome = await receiver.wait_closed()
    finally:
        await device.stop()
    assert device.peer is not None and device.peer[1] == receiver.local_port, (
        "we connect from the port our offer named"
    )
    assert outcome.ended is EndReason.CLOSED
    _assert_whole(outcome, stream, spool / "rec.ps")


async def test_udp_h265(h265: Stream, spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    await send_udp(reorder(h265.packets, seed=8), receiver.local_port)
    _assert_whole(await receiver.wait_closed(), h265, spool / "rec.ps")


async def test_tcp_active_to_a_closed_port_is_a_clear_error(spool: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    receiver = await _open(spool, MediaTransport.TCP_ACTIVE)
    with pytest.raises(MediaError, match=f"127.0.0.1:{free_port}"):
        await receiver.connect("127.0.0.1", free_port)
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.ERROR and "cannot connect" in outcome.detail


# -- loss, reordering, duplicates ------------------------------------------------------------------------


async def test_reordering_and_duplicates_on_udp_are_put_right(h264: Stream, spool: Path) -> None:
    packets = reorder(h264.packets, seed=3)
    assert packets != h264.packets
    packets = packets[:50] + packets[40:45] + packets[50:]  # five repeated
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    await send_udp(packets, receiver.local_port)
    outcome = await receiver.wait_closed()
    _assert_whole(outcome, h264, spool / "rec.ps")
    assert outcome.duplicates == 5


async def test_loss_is_a_recorded_gap_never_silent_corruption(h264: Stream, spool: Path) -> None:
    rng = random.Random(5)
    lost = sorted(rng.sample(range(20, len(h264.packets) - 20), 6))
    sent = [p for i, p in enumerate(h264.packets) if i not in set(lost)]
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    await send_udp(reorder(sent, seed=4), receiver.local_port)
    outcome = await receiver.wait_closed()
    first = parse_rtp(h264.packets[0]).sequence
    expected = [(first + i, first + i) for i in lost]
    # Neighbouring losses merge into one gap: compare the lost sequence numbers.
    assert sorted(n for a, b in outcome.gaps for n in range(a, b + 1)) == [n for n, _ in expected]
    assert outcome.lost_packets == len(lost)
    raw = (spool / "rec.ps").read_bytes()
    assert raw == b"".join(parse_rtp(p).payload for p in sent), "what came is written, nothing invented"
    frames = _video_frames(raw)
    units = [u for u, _ in h264.media.units]
    assert frames and len(frames) < len(units)
    assert all(f.data.rstrip(b"\0") in units or f.data in units for f in frames), (
        "no frame is delivered with a hole in it"
    )
    assert outcome.video_frames < len(units) and outcome.resyncs >= 1


# -- refusals ---------------------------------------------------------------------------------------------


async def test_packets_of_another_ssrc_are_dropped_and_counted(h264: Stream, spool: Path) -> None:
    stranger = rtp_packets(ps_packs(h264.media)[:30], ssrc=SSRC + 1, first_sequence=100)
    mixed = [p for pair in zip(h264.packets, stranger, strict=False) for p in pair]
    mixed += h264.packets[len(stranger):]
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    await send_udp(mixed, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.ssrc_mismatches == len(stranger) and outcome.mismatched_ssrcs == [SSRC + 1]
    _assert_whole(outcome, h264, spool / "rec.ps")


async def test_with_no_ssrc_expected_the_first_one_is_taken_and_recorded(h264: Stream, tmp_path: Path,
                                                                        spool: Path) -> None:
    stranger = rtp_packets(ps_packs(h264.media)[:5], ssrc=7, first_sequence=100)
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0, ssrc=None)
    await send_udp(h264.packets + stranger, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.ssrc_policy == "first-seen" and outcome.ssrc_expected is None
    assert outcome.ssrc_mismatches == len(stranger)
    _assert_whole(outcome, h264, spool / "rec.ps", ssrc_policy="first-seen")


async def test_tcp_passive_refuses_the_wrong_address_and_a_second_connection(
    h264: Stream, spool: Path
) -> None:
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE, expected_peer_host="127.0.0.2")
    # From 127.0.0.1: refused before a byte is taken.
    _, intruder = await asyncio.open_connection("127.0.0.1", receiver.local_port)
    intruder.write(b"\x00\x10" + bytes(16))
    await intruder.drain()
    _, device = await asyncio.open_connection("127.0.0.1", receiver.local_port, local_addr=("127.0.0.2", 0))
    # A second connection from the right host while the first is taken: refused too.
    _, second = await asyncio.open_connection("127.0.0.1", receiver.local_port, local_addr=("127.0.0.2", 0))
    second.close()
    device.write(tcp_bytes(h264.packets))
    await device.drain()
    device.close()
    outcome = await receiver.wait_closed()
    intruder.close()
    assert outcome.refused_connections == 2
    assert outcome.peer is not None and outcome.peer.startswith("127.0.0.2:")
    _assert_whole(outcome, h264, spool / "rec.ps")


async def test_garbage_on_tcp_ends_the_session_with_an_error(h264: Stream, spool: Path) -> None:
    good = tcp_bytes(h264.packets[:40])
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE)
    _, writer = await asyncio.open_connection("127.0.0.1", receiver.local_port)
    writer.write(good + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + random.Random(1).randbytes(5000))
    await writer.drain()
    outcome = await receiver.wait_closed()
    writer.close()
    assert outcome.ended is EndReason.ERROR and "TCP media from 127.0.0.1" in outcome.detail
    assert outcome.packets == 40
    assert (spool / "rec.ps").read_bytes() == b"".join(parse_rtp(p).payload for p in h264.packets[:40]), (
        "what came before the garbage is kept"
    )


async def test_garbage_datagrams_are_counted_not_taken(h264: Stream, spool: Path) -> None:
    junk = [random.Random(i).randbytes(200) for i in range(10)]
    junk = [bytes([j[0] & 0x3F]) + j[1:] for j in junk]  # not RTP version 2
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    await send_udp(junk + h264.packets, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.invalid_packets == 10
    _assert_whole(outcome, h264, spool / "rec.ps")


# -- ends -------------------------------------------------------------------------------------------------


async def test_no_media_ends_on_the_idle_timeout(spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=0.3)
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.IDLE and "no media arrived" in outcome.detail
    assert outcome.bytes == 0 and (spool / "rec.ps").read_bytes() == b""


async def test_the_idle_timeout_runs_on_the_clock_it_is_given(spool: Path) -> None:
    now = [1000.0]
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=3600, clock=lambda: now[0])
    await asyncio.sleep(0)
    assert receiver.ended is None
    now[0] += 3601  # an hour without media, on the monotonic clock
    outcome = await asyncio.wait_for(receiver.wait_closed(), 5)
    assert outcome.ended is EndReason.IDLE and outcome.elapsed_s == 3601


async def test_the_size_limit_ends_the_session_at_a_packet_boundary(h264: Stream, tmp_path: Path,
                                                                   spool: Path) -> None:
    limit = len(h264.ps) // 2
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE, max_bytes=limit)
    await send_tcp(h264.packets, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.LIMIT and str(limit) in outcome.detail
    raw = (spool / "rec.ps").read_bytes()
    assert 0 < len(raw) <= limit and h264.ps.startswith(raw)
    assert len(raw) > limit - 1500, "stopped at the packet that would pass the limit"


async def test_close_ends_a_running_session_and_progress_is_readable(h264: Stream, tmp_path: Path,
                                                                    spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE)
    half = h264.packets[: len(h264.packets) // 2]
    writer = await send_tcp(half, receiver.local_port, close=False)
    expected = sum(len(parse_rtp(p).payload) for p in half)
    for _ in range(500):  # wait for the bytes to arrive (an event, not a duration)
        if receiver.progress.bytes == expected:
            break
        await asyncio.sleep(0.01)
    progress = receiver.progress
    assert progress.bytes == expected and progress.packets == len(half) and progress.frames > 0
    assert progress.rate_bps > 0
    outcome = await receiver.close()
    writer.close()
    assert outcome.ended is EndReason.CLOSED and outcome.detail == "closed by the platform"
    assert (spool / "rec.ps").read_bytes() == h264.ps[:expected]


# -- the raw file -----------------------------------------------------------------------------------------


async def test_the_raw_file_is_never_overwritten_nor_written_through_a_symlink(tmp_path: Path,
                                                                             spool: Path) -> None:
    (spool / "rec.ps").write_bytes(b"earlier")
    with pytest.raises(MediaError, match=r"rec\.ps"):
        await _open(spool, MediaTransport.UDP)
    assert (spool / "rec.ps").read_bytes() == b"earlier"
    (spool / "rec.ps").unlink()
    target = tmp_path / "elsewhere"
    os.symlink(target, spool / "rec.ps")
    with pytest.raises(MediaError):
        await _open(spool, MediaTransport.UDP)
    assert not target.exists()
    # Control: a new name in the spool opens.
    (spool / "rec.ps").unlink()
    receiver = await _open(spool, MediaTransport.UDP)
    await receiver.close()


async def test_every_port_of_the_range_taken_is_a_clear_error(spool: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(MediaError, match=f"no free udp media port on 127.0.0.1 in {port}-{port}"):
            await _open(spool, MediaTransport.UDP, port_range=(port, port))
    assert not (spool / "rec.ps").exists(), "nothing is left behind"


# -- a disk slower than the stream ------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], what: str, bound_s: float = 60.0) -> None:
    """Until `condition` holds (a generous bound: the machine may be loaded; a failure names `what`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not condition():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def test_tcp_pauses_reading_when_the_disk_falls_behind_and_loses_nothing(
    h264: Stream, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packs = ps_packs(h264.media) * 32  # a longer recording: several times the buffer bound
    packets = rtp_packets(packs, ssrc=SSRC)
    assert len(b"".join(p for p, _ in packs)) > 6 * FLUSH_BYTES
    disk = StalledDisk()  # the first write is held until released: the disk falls behind, whatever the load
    disk.install(monkeypatch)
    bound = 2 * FLUSH_BYTES
    receiver = await _open(spool, MediaTransport.TCP_PASSIVE, max_buffered_bytes=bound)
    sending = asyncio.ensure_future(send_tcp(packets, receiver.local_port))
    try:
        # Taken past the held write and the buffer's bound: the receiver is behind, its reading paused.
        def behind_the_bound() -> bool:
            return disk.held_bytes is not None and receiver.progress.bytes > disk.held_bytes + bound

        await _until(behind_the_bound, "the receiver fell its buffer's bound behind the held write")
        behind, held = receiver.progress.bytes, disk.held_bytes
    finally:
        disk.release()
    await sending
    outcome = await receiver.wait_closed()
    # Past the bound by at most what one read brings (asyncio reads up to 256 KiB at a time).
    whole = b"".join(p for p, _ in packs)
    assert held is not None and behind <= held + bound + 512 * 1024 < len(whole), "memory did not grow"
    assert outcome.write_stalls >= 1, "the device was slowed down, not the memory grown"
    assert outcome.ended is EndReason.CLOSED and outcome.gaps == []
    assert (spool / "rec.ps").read_bytes() == whole


async def test_udp_ends_disk_slow_when_the_disk_falls_behind(
    h264: Stream, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packs = ps_packs(h264.media) * 32
    whole = b"".join(p for p, _ in packs)
    disk = StalledDisk()
    disk.install(monkeypatch)
    receiver = await _open(spool, MediaTransport.UDP, max_buffered_bytes=2 * FLUSH_BYTES, idle_timeout_s=5)
    try:
        await send_udp(rtp_packets(packs, ssrc=SSRC), receiver.local_port)
        await _until(lambda: receiver.ended is not None, "the UDP session ended while its disk was stalled")
    finally:
        disk.release()
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.DISK_SLOW and "fell more than" in outcome.detail
    raw = (spool / "rec.ps").read_bytes()
    assert len(raw) == outcome.bytes < len(whole) and whole.startswith(raw), "what was taken is written whole"


# -- what the platform tells the receiver after the 200 OK ------------------------------------------------


async def test_the_ssrc_the_device_answered_replaces_the_offered_one(h264: Stream, spool: Path) -> None:
    answered = SSRC + 77
    theirs = rtp_packets(ps_packs(h264.media), ssrc=answered)
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)  # opened with our offer's SSRC
    receiver.expect_ssrc(answered)
    await send_udp(h264.packets[:10] + theirs, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert outcome.ssrc == answered == outcome.ssrc_expected and outcome.ssrc_policy == "expected"
    assert outcome.ssrc_mismatches == 10 and outcome.mismatched_ssrcs == [SSRC]
    assert (spool / "rec.ps").read_bytes() == h264.ps


async def test_an_answer_without_ssrc_can_leave_it_to_the_first_seen(h264: Stream, spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=1.0)
    receiver.expect_ssrc(None)
    await send_udp(rtp_packets(ps_packs(h264.media), ssrc=0), receiver.local_port)  # Dahua sends SSRC 0
    outcome = await receiver.wait_closed()
    assert outcome.ssrc == 0 and outcome.ssrc_policy == "first-seen"
    assert (spool / "rec.ps").read_bytes() == h264.ps


async def test_the_transport_may_be_named_by_its_string(h264: Stream, spool: Path) -> None:
    receiver = await _open(spool, "tcp-passive")  # type: ignore[arg-type]
    await send_tcp(h264.packets, receiver.local_port)
    _assert_whole(await receiver.wait_closed(), h264, spool / "rec.ps")
    with pytest.raises(MediaError, match="'sctp' is not one of udp, tcp-passive, tcp-active"):
        await open_receiver("sctp", bind_host="127.0.0.1", port_range=PORTS, ssrc=None,
                            raw_path=spool / "other.ps", idle_timeout_s=1, max_bytes=1)


async def test_close_after_media_status_121_still_takes_the_packets_on_their_way(h264: Stream,
                                                                                 spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=30)
    # The device has sent everything and its MediaStatus 121 beat the last packets to the platform.
    sending = asyncio.create_task(send_udp(h264.packets, receiver.local_port))
    await asyncio.sleep(0)
    outcome = await receiver.close()
    await sending
    assert outcome.ended is EndReason.CLOSED
    _assert_whole(outcome, h264, spool / "rec.ps")


async def test_close_without_drain_ends_at_once(h264: Stream, spool: Path) -> None:
    receiver = await _open(spool, MediaTransport.UDP, idle_timeout_s=30)
    sending = asyncio.create_task(send_udp(h264.packets, receiver.local_port))
    await asyncio.sleep(0)
    outcome = await receiver.close(drain_s=0)
    await sending
    assert outcome.ended is EndReason.CLOSED and outcome.bytes < len(h264.ps)
