"""Review 29: review 28 made `completeness` refuse every copy whose media receiver ended `error` ("it did not
write everything it received"). But the receiver ends `error` for more than a refused write: a TCP media
connection the device ends with a reset (RST: an embedded stack's abortive close, SO_LINGER 0, or a close
with unread bytes in its own socket) after its last packet gives `connection_lost(ConnectionResetError)`,
and the receiver ends `error` ("the TCP media connection ... failed"), every byte received and written.
The device said 121 (the session's end reason is the device's, `device_ended`): before review 28 this copy
was complete; now it is sealed incomplete ("the media receiver ended error"), downloaded twice more, and
given up after MAX_INCOMPLETE_ATTEMPTS as "incomplete at each of its 3 downloads": every recording of such
a device is stored three times and none is ever marked whole, though each was. The written-vs-received
check (`bytes_written`) already catches a refused write; the blanket `error` check adds only this.

Real ffmpeg-made H.264 in PS, RTP over a real TCP connection into a real receiver; the device's reset is
a real RST (SO_LINGER 0), sent once the receiver has taken every packet and the session is draining after
the device's 121 (as `GbSession` does). The verdict is the scheduler's own `completeness`. Control: the
same transfer ended with an orderly close (FIN) is complete."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.gb28181.media import EndReason, MediaOutcome, MediaTransport, receiver_keeping_free
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.sources.gb28181.scheduler import completeness
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.prerequisites import require

SSRC = 1100000292
PORTS = (34000, 34999)
EXPECTED_S = 3.0  # RECORDING: 08:00:00 to 08:00:03


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=3)
    return rtp_packets(ps_packs(media), ssrc=SSRC)


async def _transfer(tmp_path: Path, packets: list[bytes], *,
                    reset: bool) -> tuple[MediaOutcome, dict[str, object]]:
    raw = tmp_path / "download.ps"
    receiver = await receiver_keeping_free(1)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC, raw_path=raw,
        idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None, max_media_span_s=None,
        time_limit_s=None, progress_window_s=None, min_progress_s=None)
    writer = await send_tcp(packets, receiver.local_port, close=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    while receiver.progress.packets < len(packets) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert receiver.progress.packets == len(packets), "the receiver took every packet before the close"
    draining = asyncio.ensure_future(receiver.drain())  # the device said 121: the session drains
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST
    else:
        writer.close()  # FIN
    await draining
    await receiver.close()
    outcome = await receiver.wait_closed()
    result = SessionResult(call_id="review29@station", end_reason=SessionEnd.FILE_END, ssrc_offered=SSRC,
                           ssrc_answered=SSRC, ssrc_answer_text=str(SSRC), ssrc_used=SSRC,
                           file_size_bytes=None, outcome=outcome)
    return outcome, completeness(result, RECORDING, EXPECTED_S)


async def test_a_whole_copy_the_device_ends_with_a_reset_is_complete(
        tmp_path: Path, packets: list[bytes]) -> None:
    outcome, verdict = await _transfer(tmp_path, packets, reset=True)
    # the fault as modelled: a reset after every byte was received and written
    assert outcome.ended is EndReason.ERROR and "reset" in outcome.detail.lower(), outcome.detail
    assert outcome.bytes_written == outcome.bytes and outcome.lost_packets == 0, outcome
    assert verdict["complete"] is True, (
        f"the device sent the whole recording, said 121, then reset its TCP media connection; the raw PS "
        f"holds all {outcome.bytes} bytes received ({outcome.bytes_written} written, none lost), yet the "
        f"copy is judged incomplete ({verdict.get('incomplete')!r}): downloaded twice more and given up as "
        "incomplete though each copy was whole")


async def test_control_the_same_copy_ended_with_an_orderly_close_is_complete(
        tmp_path: Path, packets: list[bytes]) -> None:
    outcome, verdict = await _transfer(tmp_path, packets, reset=False)
    assert outcome.ended is EndReason.CLOSED and outcome.bytes_written == outcome.bytes, outcome
    assert verdict["complete"] is True, verdict
