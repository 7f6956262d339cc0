"""The media receiver against what hostile or broken devices send, over real sockets: RTP with CSRC lists,
header extensions and padding (the payload is what is kept), random payloads and wild sequence numbers under
the session's own SSRC (recorded, never an exception in the event loop), random bytes on TCP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec, PsMuxer
from drivers.gb28181.rtp import RtpExtension, RtpPacket, parse_rtp
from edge.gb28181.media import EndReason, MediaTransport, open_receiver
from tests.gb28181.media_sender import send_udp

SSRC = 1200000007
PORTS = (32000, 32999)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (an exception escaping a protocol callback)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


def _ps(frames: int) -> bytes:
    muxer = PsMuxer(Codec.H264)
    rng = random.Random(2)
    out = b""
    for i in range(frames):
        key = i % 10 == 0
        unit = (b"\x00\x00\x00\x01\x67\x42\x00\x1e\x00\x00\x00\x01\x68\xce\x3c\x80" if key else b"")
        unit += b"\x00\x00\x00\x01" + (b"\x65\x88" if key else b"\x41\x9a") + rng.randbytes(3000).replace(
            b"\x00\x00", b"\x00\x03")
        out += muxer.video_frame(unit, 3600 * i, key=key)
    return out


async def _receive(spool: Path, datagrams: list[bytes]) -> tuple[Any, bytes]:
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=spool / "rec.ps", idle_timeout_s=1.0, max_bytes=1 << 30)
    await send_udp(datagrams, receiver.local_port)
    outcome = await receiver.wait_closed()
    return outcome, (spool / "rec.ps").read_bytes()


async def test_csrc_extension_and_padding_are_not_written(tmp_path: Path,
                                                          loop_errors: list[dict[str, Any]]) -> None:
    ps = _ps(30)
    chunks = [ps[at:at + 1200] for at in range(0, len(ps), 1200)]
    packets = [RtpPacket(payload_type=96, sequence=i, timestamp=0, ssrc=SSRC, payload=chunk,
                         csrcs=(1, 2) if i % 3 == 0 else (), padding_bytes=4 if i % 2 else 0,
                         extension=RtpExtension(0xABAC, b"\x01\x02\x03\x04") if i % 5 == 0 else None
                         ).to_bytes()
               for i, chunk in enumerate(chunks)]
    assert any(parse_rtp(p).extension for p in packets) and any(parse_rtp(p).padding_bytes for p in packets)
    outcome, raw = await _receive(tmp_path, packets)
    assert raw == ps and outcome.video_frames == 30
    assert loop_errors == []


@pytest.mark.parametrize("seed", range(4))
async def test_random_payloads_and_sequence_numbers_are_recorded_not_fatal(
    tmp_path: Path, seed: int, loop_errors: list[dict[str, Any]]
) -> None:
    rng = random.Random(seed)
    datagrams = []
    for _ in range(300):
        sequence = rng.choice([rng.randrange(65536), rng.randrange(10), 65535, 32768])
        payload = rng.choice([b"", rng.randbytes(rng.randrange(1, 1400)),
                              b"\x00\x00\x01\xba" + rng.randbytes(50)])
        datagrams.append(RtpPacket(payload_type=rng.randrange(128), sequence=sequence,
                                   timestamp=rng.randrange(1 << 32), ssrc=SSRC, payload=payload,
                                   marker=rng.random() < 0.5).to_bytes())
    datagrams += [rng.randbytes(rng.randrange(0, 40)) for _ in range(50)]  # not even RTP
    outcome, raw = await _receive(tmp_path, datagrams)
    assert outcome.ended is EndReason.IDLE
    assert len(raw) == outcome.bytes
    assert outcome.packets + outcome.duplicates + outcome.late <= 300
    assert loop_errors == [], "nothing escaped into the event loop"


@pytest.mark.parametrize("seed", range(4))
async def test_random_bytes_on_tcp_end_the_session_cleanly(tmp_path: Path, seed: int,
                                                           loop_errors: list[dict[str, Any]]) -> None:
    receiver = await open_receiver(MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS,
                                   ssrc=None, raw_path=tmp_path / "rec.ps", idle_timeout_s=2,
                                   max_bytes=1 << 30)
    _, writer = await asyncio.open_connection("127.0.0.1", receiver.local_port)
    writer.write(random.Random(seed).randbytes(20000))
    await writer.drain()
    writer.close()
    outcome = await receiver.wait_closed()
    assert outcome.ended in (EndReason.ERROR, EndReason.CLOSED)
    assert (tmp_path / "rec.ps").stat().st_size == outcome.bytes
    assert loop_errors == []


async def test_control_the_probe_sees_an_exception_escaping_a_callback(
    loop_errors: list[dict[str, Any]],
) -> None:
    asyncio.get_running_loop().call_soon(lambda: 1 // 0)
    await asyncio.sleep(0)
    assert len(loop_errors) == 1 and isinstance(loop_errors[0]["exception"], ZeroDivisionError)
