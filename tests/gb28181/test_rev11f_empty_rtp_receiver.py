"""Review rev11f (MEDIUM, the receiver's side): an RTP packet with no payload (header only, or all of it
padding: RFC 6263's keepalive, a hostile sender) is no media (edge.gb28181.media). It keeps its place in the
numbering (no loss), is counted (`empty_packets`) and dropped: the sink (live) and the raw PS (downloads)
never see it, and it does not keep the session from going idle nor move `last_packet_at`, the stamp the live
layer's stall clock reads. Real receiver, real UDP and TCP sockets, packets from the real RTP codec."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import RtpPacket, parse_rtp
from edge.gb28181.media import open_receiver
from tests.prerequisites import require

from .media_sender import HAVE_FFMPEG, make_source, ps_packs, send_tcp, send_udp

SSRC = 200001234
PORTS = (31000, 31999)


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, int]]:
    require(HAVE_FFMPEG, "needs ffmpeg")
    return ps_packs(make_source(tmp_path_factory.mktemp("empty-rtp"), Codec.H264, seconds=2, audio=False))


def _empty(sequence: int, *, padded: bool) -> bytes:
    """A packet without payload: header only, or all padding (RTP's P bit, 4 bytes of it)."""
    return RtpPacket(payload_type=96, sequence=sequence % 65536, timestamp=90000, ssrc=SSRC,
                     padding_bytes=4 if padded else 0).to_bytes()


def with_keepalives(packs: list[tuple[bytes, int]], every: int) -> tuple[list[bytes], int]:
    """The packs as RTP packets of 300-byte payloads with, after every `every`-th, a header-only and a
    padding-only packet in the same numbering (as RFC 3550 numbers every packet sent); how many those are."""
    packets: list[bytes] = []
    sequence = 65000  # the numbering wraps on the way
    empties = 0
    for pack, pts in packs:
        for at in range(0, len(pack), 300):
            packets.append(RtpPacket(payload_type=96, sequence=sequence % 65536, timestamp=pts % (1 << 32),
                                     ssrc=SSRC, payload=pack[at:at + 300]).to_bytes())
            sequence += 1
            if len(packets) % every == 0:
                for padded in (False, True):
                    packets.append(_empty(sequence, padded=padded))
                    sequence += 1
                    empties += 1
    return packets, empties


def test_the_empty_packets_sent_parse_with_an_empty_payload() -> None:
    for padded in (False, True):
        packet = parse_rtp(_empty(1, padded=padded))
        assert packet.payload == b"" and packet.padding_bytes == (4 if padded else 0)


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
async def test_empty_payloads_are_counted_and_reach_neither_the_sink_nor_the_raw_file(
        packs: list[tuple[bytes, int]], tmp_path: Path, transport: str) -> None:
    taken: list[bytes] = []
    receiver = await open_receiver(transport, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=5, max_bytes=1 << 30,
                                   sink=taken.append)
    packets, empties = with_keepalives(packs, every=5)
    if transport == "udp":
        await send_udp(packets, receiver.local_port)
        outcome = await receiver.close()
    else:
        await send_tcp(packets, receiver.local_port)
        outcome = await receiver.wait_closed()
    whole = b"".join(pack for pack, _ in packs)
    assert empties > 20 and outcome.empty_packets == empties, (empties, outcome.summary())
    assert outcome.summary()["empty_packets"] == empties
    assert b"" not in taken, "an empty payload reached the sink (the live stream's consumers)"
    assert b"".join(taken) == whole == (tmp_path / "raw.ps").read_bytes()
    # Their place in the numbering is kept: no loss, no stray; only media counts as packets.
    assert outcome.lost_packets == 0 and outcome.strays == 0 and outcome.gaps == []
    assert outcome.packets == len(packets) - empties


async def _paced(port: int, packets: list[bytes], every_s: float) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       remote_addr=("127.0.0.1", port))
    try:
        for packet in packets:
            transport.sendto(packet)
            await asyncio.sleep(every_s)
    finally:
        transport.close()


@pytest.mark.parametrize("padded", [False, True])
async def test_a_device_sending_only_empty_packets_goes_idle_like_a_silent_one(
        packs: list[tuple[bytes, int]], padded: bool) -> None:
    """Media for a few packets, then only empty packets every 0.1 s for 4 s, idle timeout 1.5 s: the session
    ends idle while they still come, and the last packet's stamp stays the last media's. Control: the same
    pace of media packets keeps the session going."""
    idle_s = 1.5
    results = {}
    for keepalives in (True, False):
        receiver = await open_receiver("udp", bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                       raw_path=None, idle_timeout_s=idle_s, max_bytes=1 << 30,
                                       sink=lambda data: None)
        first_pack = packs[0][0]
        media = [RtpPacket(payload_type=96, sequence=n, timestamp=90000, ssrc=SSRC,
                           payload=first_pack[n * 100:n * 100 + 100] or b"\x00").to_bytes()
                 for n in range(48)]
        await _paced(receiver.local_port, media[:8], 0.01)  # past the reorder buffer's startup hold
        await asyncio.sleep(0.2)
        media_stamp = receiver.last_packet_at
        assert media_stamp is not None
        later = ([_empty(n, padded=padded) for n in range(8, 48)] if keepalives else media[8:48])
        sending = asyncio.ensure_future(_paced(receiver.local_port, later, 0.1))
        await asyncio.wait({sending}, timeout=30)
        results[keepalives] = (receiver.ended, media_stamp, receiver.last_packet_at,
                               receiver.progress.empty_packets)
        await receiver.close(drain_s=0)
    ended, media_stamp, stamp, empty_count = results[True]
    assert str(ended) == "idle", f"empty packets kept the session from going idle: {ended}"
    assert stamp == media_stamp and empty_count > 0
    ended, media_stamp, stamp, _ = results[False]
    assert ended is None and stamp is not None and stamp > media_stamp  # the control: media keeps it going
