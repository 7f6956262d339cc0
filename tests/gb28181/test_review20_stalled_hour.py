"""Review 20 (MEDIUM): review 17's finding 2 (a download stalled near its end, ended `idle`, sealed complete
and never fetched again) is closed for its 10-minute case only: the tolerance is now max(2 s, 1 %), so an
hour-long recording (NVRs and interview-room recorders cut hourly files) may lack its last 35 s and be
sealed complete; a 4-hour interview file, its last 2 min 20 s.

Many devices send no MediaStatus 121 and no a=filesize (then only the span is checked): a 4G or Wi-Fi
uplink that drops for longer than `idle_timeout_s` in the last 1 % (the device stays online: keepalives
allow 3 misses) ends the transfer `idle` with the end missing. The recording is then skipped at every
later pass, and the missing end (in an interview, its last statements) is never downloaded. The 1 % is
said to cover "encoders that cut files on a keyframe near, not at, the listed time": a keyframe interval
is seconds, whatever the file's length, so a tolerance that grows with the length is not what that needs.

Real receiver over real UDP (a frame every 5 s of media, so an hour is 721 packets); `completeness` as the
scheduler calls it."""

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
PORTS = (34000, 34999)
HZ = 90000
LENGTH_S = 3600  # an hour-long recording, as RecordInfo lists it
STEP_S = 5
REF = RecordingRef(device_id="34020000001320000028", channel_id="34020000001310000028", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T11:00:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


def _packets(seconds: int) -> list[bytes]:
    """One tiny H.264 frame every STEP_S of media, 0 .. seconds, one RTP packet each."""
    muxer = PsMuxer()
    packets = []
    for n, t in enumerate(range(0, seconds + 1, STEP_S)):
        key = n % 2 == 0
        slice_header = (b"\x65" if key else b"\x41") + b"\x88"
        frame = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + slice_header + b"\xaa" * 40
        pts = (1000 + t) * HZ
        pack = muxer.video_frame(frame, pts % PTS_MODULO, key=key)
        packets.append(RtpPacket(payload_type=96, sequence=n + 1, timestamp=pts % (1 << 32), ssrc=SSRC,
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


async def test_an_hour_long_transfer_stalling_with_its_last_35_seconds_missing_is_not_complete(
        tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S - 35)
    assert check["complete"] is False, (
        f"{check['received_video_s']} s of the {LENGTH_S} s recording came before the stream stalled, and it "
        "is sealed complete: its end is never downloaded")


async def test_control_the_whole_hour_is_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S)
    assert check["complete"] is True, check
