"""The media receiver over real UDP sockets when the device renumbers its RTP packets mid-stream and a stray
packet far off the numbering reaches the port (review 12): the restart is recorded as one, not as loss or
duplicates, the stray is dropped and counted, and every genuine payload is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import RtpPacket, parse_rtp
from edge.gb28181.media import EndReason, MediaTransport, open_receiver
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets, send_udp
from tests.prerequisites import require

SSRC = 1100000042
PORTS = (30000, 30999)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("h264"), Codec.H264, seconds=2, audio=False)


@pytest.mark.parametrize("restart_to", [100, 40_000])
async def test_a_device_renumbering_lower_or_higher_is_recorded_as_a_restart_and_a_stray_as_a_stray(
        media: SourceMedia, tmp_path: Path, restart_to: int) -> None:
    packs = ps_packs(media)
    half = len(packs) // 2
    before = rtp_packets(packs[:half], ssrc=SSRC, first_sequence=30_000)
    after = rtp_packets(packs[half:], ssrc=SSRC, first_sequence=restart_to)
    stray = RtpPacket(payload_type=96, sequence=(30_000 + 20_000) % 65536, timestamp=0, ssrc=SSRC,
                      payload=b"not the device's").to_bytes()
    sent = [*before[:40], stray, *before[40:], *after]
    (tmp_path / "spool").mkdir()
    raw = tmp_path / "spool" / "rec.ps"
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", raw_path=raw, ssrc=SSRC,
                                   idle_timeout_s=1.0, max_bytes=1 << 30, port_range=PORTS)
    await send_udp(sent, receiver.local_port)
    outcome = await receiver.wait_closed()

    assert outcome.ended is EndReason.IDLE
    genuine = before + after
    assert raw.read_bytes() == b"".join(parse_rtp(p).payload for p in genuine), "every genuine payload"
    last_before = 30_000 + len(before) - 1
    first_after = last_before + 1 + (restart_to - last_before - 1) % 65536
    assert outcome.restarts == [(last_before, first_after)]
    assert (outcome.strays, outcome.lost_packets, outcome.gaps, outcome.duplicates, outcome.late) == (
        1, 0, [], 0, 0)
    summary = outcome.summary()
    assert summary["restarts"] == [[last_before, first_after]] and summary["strays"] == 1
    # The restart is a discontinuity of the PS: the frame in progress at the jump is not counted whole
    # across it, every frame after it is.
    assert len(media.units) - 2 <= outcome.video_frames <= len(media.units)

