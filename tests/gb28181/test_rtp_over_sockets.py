"""The media codecs end to end over real loopback sockets: GB/T 28181 PS in RTP, over TCP with RFC 4571 or
`$` framing (as the kernel splits and joins the writes) and over UDP with reordering, duplication and loss
injected by the sender; frames and gaps come out as sent."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Sequence

import pytest

from drivers.gb28181.framing import Framing, StreamDeframer, frame_interleaved, frame_rfc4571
from drivers.gb28181.ps import Codec, EsFrame, PsDemuxer, PsEvent, PsMuxer, Resync
from drivers.gb28181.rtp import Delivered, Gap, ReorderBuffer, RtpPacket, parse_rtp

SSRC = 1100000001
MTU_PAYLOAD = 1400


def _units(count: int, seed: int = 9) -> list[tuple[bytes, bool]]:
    rng = random.Random(seed)
    units = []
    for i in range(count):
        key = i % 10 == 0
        head = b"\x00\x00\x00\x01\x67\x42\x00\x1e\x00\x00\x00\x01\x68\xce\x3c\x80" if key else b""
        slice_header = b"\x00\x00\x00\x01" + (b"\x65\x88" if key else b"\x41\x9a")
        body = rng.randbytes(rng.choice([300, 1500, 6000])).replace(b"\x00\x00", b"\x00\x03")
        units.append((head + slice_header + body, key))
    return units


def _rtp_packets(units: list[tuple[bytes, bool]]) -> list[bytes]:
    """Each PS pack cut into MTU-sized RTP payloads, one timestamp per pack, marker on its last packet
    (how ZLMediaKit and devices packetize, gb28181.md §7)."""
    muxer = PsMuxer(Codec.H264)
    packets, sequence = [], 65500  # wraps during the test
    for i, (unit, key) in enumerate(units):
        pack = muxer.video_frame(unit, 3600 * i, key=key)
        chunks = [pack[at:at + MTU_PAYLOAD] for at in range(0, len(pack), MTU_PAYLOAD)]
        for j, chunk in enumerate(chunks):
            packets.append(RtpPacket(payload_type=96, sequence=sequence % 65536, timestamp=3600 * i,
                                     ssrc=SSRC, marker=j == len(chunks) - 1, payload=chunk).to_bytes())
            sequence += 1
    return packets


class _Receiver:
    """What a platform's media session does with each RTP packet: reorder, and feed the PS demuxer,
    telling it about every gap."""

    def __init__(self) -> None:
        self.reorder = ReorderBuffer(window=32)
        self.demuxer = PsDemuxer()
        self.events: list[PsEvent] = []
        self.gaps: list[Gap] = []

    def packet(self, data: bytes) -> None:
        packet = parse_rtp(data)
        assert packet.ssrc == SSRC
        self._take(self.reorder.push(packet))

    def end(self) -> list[EsFrame]:
        self._take(self.reorder.flush())
        self.events += self.demuxer.flush()
        return [e for e in self.events if isinstance(e, EsFrame)]

    def _take(self, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, Delivered):
                self.events += self.demuxer.feed(event.packet.payload)
            elif isinstance(event, Gap):
                self.gaps.append(event)
                self.events += self.demuxer.discontinuity(f"RTP {event.first}..{event.last} lost")


@pytest.mark.parametrize("framing", [Framing.RFC4571, Framing.INTERLEAVED])
async def test_ps_over_rtp_over_tcp(framing: Framing) -> None:
    units = _units(60)
    packets = _rtp_packets(units)
    frame = frame_rfc4571 if framing is Framing.RFC4571 else frame_interleaved
    stream = b"".join(frame(p) for p in packets)
    receiver = _Receiver()
    deframer = StreamDeframer(Framing.AUTO)
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(rng.choice([7, 1000, 65536])):
            for tcp_frame in deframer.feed(data):
                receiver.packet(tcp_frame.payload)
        writer.close()
        done.set()

    rng = random.Random(4)
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    at = 0
    while at < len(stream):  # writes of odd sizes: frames split and coalesced on the way
        size = rng.choice([1, 13, 1500, 9000])
        writer.write(stream[at:at + size])
        await writer.drain()
        at += size
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(done.wait(), 30)
    server.close()
    await server.wait_closed()
    frames = receiver.end()
    assert deframer.framing is framing and deframer.buffered_bytes == 0
    assert [(f.data, f.key, f.pts) for f in frames] == [(u, k, 3600 * i) for i, (u, k) in enumerate(units)]
    assert receiver.gaps == []


async def test_ps_over_rtp_over_udp_with_reordering_duplication_and_loss() -> None:
    units = _units(80)
    packets = _rtp_packets(units)
    rng = random.Random(12)
    lost = {40, 41, 42}  # three packets in the middle of the stream
    order = [i for i in range(len(packets)) if i not in lost]
    for i in range(0, len(order) - 6, 6):  # reordered within 6 packets
        window = order[i:i + 6]
        rng.shuffle(window)
        order[i:i + 6] = window
    order[20:20] = [order[25], order[26]]  # duplicated

    receiver_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    receiver_socket.bind(("127.0.0.1", 0))
    receiver_socket.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = _Receiver()
    loop = asyncio.get_running_loop()
    try:
        for index in order:
            sender.sendto(packets[index], receiver_socket.getsockname())
            receiver.packet(await asyncio.wait_for(loop.sock_recv(receiver_socket, 65535), 10))
    finally:
        sender.close()
        receiver_socket.close()
    frames = receiver.end()
    first_lost = 65500 + 40
    assert receiver.gaps == [Gap(first_lost, first_lost + 2)]
    assert receiver.reorder.stats.duplicates == 2
    (resync,) = [e for e in receiver.events if isinstance(e, Resync)]
    assert resync.reason == f"RTP {first_lost}..{first_lost + 2} lost"
    # The frames touched by the lost packets are missing; every other frame is whole, in order, with its PTS.
    expected = [(u, k, 3600 * i) for i, (u, k) in enumerate(units)]
    got = [(f.data, f.key, f.pts) for f in frames]
    assert set(got) <= set(expected) and got == sorted(got, key=lambda g: g[2] or 0)
    assert 1 <= len(expected) - len(got) <= 4
    assert got[-20:] == expected[-20:]
