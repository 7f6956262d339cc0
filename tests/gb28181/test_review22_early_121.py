"""Review 22: a MediaStatus 121 that comes while the recording's media is still flowing cuts the download
2 s later, dropping what the device was still sending.

A device sends 121 when it has finished reading the file, which over a slow uplink is before the media has
reached the station: over TCP the device's socket buffer (megabytes, autotuned) drains at the uplink's
rate; over UDP a device paces what it queued. `MediaReceiver.close()` (the 121 path: `_run` ends the
session and closes the receiver) reads on only until 0.2 s without a packet, and at most `DRAIN_S` = 2 s
whatever still flows, then the station sends BYE. The rest of the recording, already on its way, is
lost; the copy is sealed incomplete (short), and so is each of the 3 attempts (the same device, the same
link): the recording is given up with what the first 2 s after the 121 brought.

Real platform and receiver; the device connects to the station's tcp-passive media port and sends the
recording's RTP (real PS of an ffmpeg-made H.264 clip) at a steady pace, as a slow uplink drains it; its
121 goes out when it has handed half of it to its socket. Control: the 121 after the last packet (the
same session, the same pace) keeps every byte."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.gb28181.framing import frame_rfc4571
from drivers.gb28181.ps import Codec
from drivers.gb28181.sdp import SessionKind
from edge.gb28181.media import DRAIN_S, open_receiver
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import EndReason, MediaRequest
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets
from tests.prerequisites import require

from .platform_peer import FakeClock, Ledger, TestDevice, offered_media, platform_settings

DEVICE = "34020000001320000081"
CHANNEL = "34020000001310000081"
PASSWORD = "12345678"
PACE_S = 0.08  # one packet per 80 ms: the rest after a half-way 121 takes longer than 2 s


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=4, audio=False)


async def _received(tmp_path: Path, media: SourceMedia, status_after: float) -> tuple[int, int, EndReason]:
    """(bytes received, RTP payload bytes the device sent, end reason): the 121 goes out once
    `status_after` of the packets are sent."""
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, idle_timeout_s=10.0), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "tcp-passive", tmp_path / "raw.ps", 1_764_550_800,
            1_764_550_804, speed=1))
        invite = device.invites[0]
        packets = rtp_packets(ps_packs(media), ssrc=session.ssrc_offered)
        host, port = offered_media(invite)
        _, writer = await asyncio.open_connection(host, port)
        status_at = int(len(packets) * status_after)
        for n, packet in enumerate(packets):
            if n == status_at:
                assert (await device.send_media_status(invite)).status == 200
            writer.write(frame_rfc4571(packet))
            await writer.drain()
            await asyncio.sleep(PACE_S)
            if session.end_reason is not None and session.result is not None:
                break  # the station has hung up: the rest cannot arrive
        if status_at >= len(packets):
            assert (await device.send_media_status(invite)).status == 200
        result = await session.wait()
        writer.close()
        sent = sum(len(p) - 12 for p in packets)
        return result.outcome.bytes, sent, result.end_reason
    finally:
        await device.close()
        await platform.close()


async def test_a_121_while_media_still_flows_does_not_cut_the_download(tmp_path: Path,
                                                                        media: SourceMedia) -> None:
    # The premise: what follows a half-way 121 takes the device longer than the station's drain.
    count = len(rtp_packets(ps_packs(media), ssrc=1))
    assert count * PACE_S / 2 > 1.5 * DRAIN_S, count
    received, sent, ended = await _received(tmp_path, media, status_after=0.5)
    assert ended is EndReason.FILE_END
    assert received == sent, (f"the device sent {sent} bytes of RTP payload without a pause; the 121 came "
                              f"half-way and the station kept {received}: the rest was still flowing")


async def test_control_a_121_after_the_last_packet_keeps_every_byte(tmp_path: Path,
                                                                    media: SourceMedia) -> None:
    received, sent, ended = await _received(tmp_path, media, status_after=1.0)
    assert ended is EndReason.FILE_END and received == sent
