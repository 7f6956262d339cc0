"""A download as the scheduler's `completeness` judges it, over a real receiver and real UDP: the review
tests of stalled, lossy and hour-long transfers share it.

`tiny_video` makes one tiny H.264 frame every `step_s` of media (one RTP packet each, key frames every
`key_every` frames), with the packets of `lost` (frame numbers) left out as if lost on the way;
`judged_transfer` sends them to a receiver that ends idle (the device stops sending: many send no
MediaStatus 121) and returns `completeness` of the result for `ref`.
"""

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

HZ = 90000


def tiny_video(seconds: int, *, ssrc: int, step_s: int = 1, key_every: int = 10,
               lost: range = range(0)) -> list[bytes]:
    """Frames at media times 0, step_s, .. seconds; those numbered in `lost` not sent (their sequence
    numbers skipped)."""
    muxer = PsMuxer()
    packets = []
    for n, t in enumerate(range(0, seconds + 1, step_s)):
        key = n % key_every == 0
        slice_header = (b"\x65" if key else b"\x41") + b"\x88"
        frame = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + slice_header + b"\xaa" * 40
        pts = (1000 + t) * HZ
        pack = muxer.video_frame(frame, pts % PTS_MODULO, key=key)
        if n in lost:
            continue
        packets.append(RtpPacket(payload_type=96, sequence=n + 1, timestamp=pts % (1 << 32), ssrc=ssrc,
                                 marker=True, payload=pack).to_bytes())
    return packets


async def judged_transfer(tmp_path: Path, packets: list[bytes], *, ref: RecordingRef, length_s: int,
                          ssrc: int, ports: tuple[int, int], lost_packets: int = 0) -> dict[str, object]:
    """`packets` sent to a real receiver, which ends idle when they stop; `completeness` of the result."""
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=ports, ssrc=ssrc,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=1.0, max_bytes=1 << 26,
                                   expected_peer_host="127.0.0.1", max_media_span_s=length_s * 1.05 + 30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", receiver.local_port))
    outcome = await receiver.wait_closed()
    assert outcome.ended is EndReason.IDLE and outcome.lost_packets == lost_packets
    result = SessionResult(call_id="c", end_reason=SessionEnd.RECEIVER_ENDED, ssrc_offered=ssrc,
                           ssrc_answered=ssrc, ssrc_answer_text=str(ssrc), ssrc_used=ssrc,
                           file_size_bytes=None, outcome=outcome)
    return completeness(result, ref, float(length_s))
