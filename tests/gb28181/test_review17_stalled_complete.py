"""Review 17: a download whose stream stalls near its end is sealed complete and never fetched again.

`completeness` takes the session as ended by the device when its media stopped (`idle`: many devices send
no MediaStatus 121), and the video span as enough when it falls short of the recording's time range by up
to SHORT_TOLERANCE_FRACTION (5 %) of it: meant for the one frame a PTS span lacks, it is 30 s of a 10-min
recording and 3 min of an hour. A 4G uplink that drops for longer than `idle_timeout_s` (while the device's
keepalives, every 60 s with 3 misses allowed, keep it online, so it is not `interrupted`) in the last 5 %
ends the transfer `idle` with the end missing: `complete: true`, the recording is skipped at every later
pass, the missing minutes are never downloaded, and nothing but the two numbers in the manifest says so.

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

SSRC = 1100000077
PORTS = (34000, 34999)
HZ = 90000
LENGTH_S = 600  # a 10-minute recording, as RecordInfo lists it
REF = RecordingRef(device_id="34020000001320000021", channel_id="34020000001310000021", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T10:10:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


def _packets(seconds: int) -> list[bytes]:
    """One tiny H.264 frame a second of media, 0 .. seconds, one RTP packet each."""
    muxer = PsMuxer()
    packets = []
    for i in range(seconds + 1):
        slice_header = (b"\x65" if i % 10 == 0 else b"\x41") + b"\x88"
        frame = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + slice_header + b"\xaa" * 40
        pts = (1000 + i) * HZ
        pack = muxer.video_frame(frame, pts % PTS_MODULO, key=i % 10 == 0)
        packets.append(RtpPacket(payload_type=96, sequence=i + 1, timestamp=pts % (1 << 32), ssrc=SSRC,
                                 marker=True, payload=pack).to_bytes())
    return packets


async def _transfer_stalling_after(tmp_path: Path, seconds: int) -> dict[str, object]:
    """The device sends `seconds` of the recording's video, then nothing more (its uplink dropped): the
    receiver ends idle; the result checked as the scheduler checks it."""
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=1.0, max_bytes=1 << 26,
                                   expected_peer_host="127.0.0.1", max_media_span_s=LENGTH_S * 1.05 + 30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in _packets(seconds):
            sock.sendto(packet, ("127.0.0.1", receiver.local_port))
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.IDLE and outcome.lost_packets == 0
    result = SessionResult(call_id="c", end_reason=SessionEnd.RECEIVER_ENDED, ssrc_offered=SSRC,
                           ssrc_answered=SSRC, ssrc_answer_text=str(SSRC), ssrc_used=SSRC,
                           file_size_bytes=None, outcome=outcome)
    return completeness(result, REF, float(LENGTH_S))


async def test_a_transfer_stalling_with_its_last_29_seconds_missing_is_not_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S - 29)
    assert check["complete"] is False, (
        f"{check['received_video_s']} s of the {LENGTH_S} s recording came before the stream stalled, and it "
        "is sealed complete: never downloaded again")


async def test_control_the_whole_recording_is_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S)
    assert check["complete"] is True, check
