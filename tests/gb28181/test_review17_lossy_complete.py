"""Review 17: a download that lost packets is sealed complete and never fetched again.

`completeness` judges a transfer by who ended it, the video's PTS span and a=filesize; lost packets count
for nothing. A UDP download over a 4G uplink that loses 30 s of a 10-minute recording in its middle
(RTP numbering gaps, each a `gap` entry) still spans the whole range, ends by the device, and is sealed
`complete: true`: the recording, still whole on the recorder, is skipped at every later pass, and the
evidence keeps the hole for good. The gap entries say media was lost; nothing ever asks for it again
(over TCP, or at all), unlike a short transfer, which is retried.

Real receiver over real UDP; `completeness` as the scheduler calls it."""


from __future__ import annotations

import socket
from pathlib import Path

from drivers.gb28181.ps import PsMuxer
from drivers.gb28181.rtp import RtpPacket
from edge.gb28181.media import PTS_MODULO, EndReason, MediaTransport, open_receiver
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.sources.gb28181.recordings import RecordingRef
from edge.sources.gb28181.scheduler import completeness

SSRC = 1100000078
PORTS = (35000, 35999)
HZ = 90000
LENGTH_S = 600  # a 10-minute recording, as RecordInfo lists it
REF = RecordingRef(device_id="34020000001320000021", channel_id="34020000001310000021", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T10:10:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


def _packets(seconds: int, lost: range = range(0)) -> list[bytes]:
    """One tiny H.264 frame a second of media, 0 .. seconds, one RTP packet each; those of `lost` are not
    sent (their sequence numbers skipped: lost on the way)."""
    muxer = PsMuxer()
    packets = []
    for i in range(seconds + 1):
        slice_header = (b"\x65" if i % 10 == 0 else b"\x41") + b"\x88"
        frame = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + slice_header + b"\xaa" * 40
        pts = (1000 + i) * HZ
        pack = muxer.video_frame(frame, pts % PTS_MODULO, key=i % 10 == 0)
        if i in lost:
            continue
        packets.append(RtpPacket(payload_type=96, sequence=i + 1, timestamp=pts % (1 << 32), ssrc=SSRC,
                                 marker=True, payload=pack).to_bytes())
    return packets


async def _transfer_losing(tmp_path: Path, lost: range) -> dict[str, object]:
    """The device sends the whole recording, the packets of `lost` are lost on the way; then it stops
    sending (the end: many devices send no 121); checked as the scheduler checks it."""
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=1.0, max_bytes=1 << 26,
                                   expected_peer_host="127.0.0.1", max_media_span_s=LENGTH_S * 1.05 + 30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in _packets(LENGTH_S, lost):
            sock.sendto(packet, ("127.0.0.1", receiver.local_port))
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.IDLE and outcome.lost_packets == len(lost)
    result = SessionResult(call_id="c", end_reason=SessionEnd.RECEIVER_ENDED, ssrc_offered=SSRC,
                           ssrc_answered=SSRC, ssrc_answer_text=str(SSRC), ssrc_used=SSRC,
                           file_size_bytes=None, outcome=outcome)
    return completeness(result, REF, float(LENGTH_S))


async def test_a_transfer_that_lost_30_seconds_in_its_middle_is_not_complete(tmp_path: Path) -> None:
    check = await _transfer_losing(tmp_path, range(300, 330))
    assert check["complete"] is False, (
        "30 s of the 600 s recording were lost on the way (30 packets, gap entries), and it is sealed "
        f"complete: never downloaded again ({check})")


async def test_control_a_transfer_without_loss_is_complete(tmp_path: Path) -> None:
    check = await _transfer_losing(tmp_path, range(0))
    assert check["complete"] is True, check
