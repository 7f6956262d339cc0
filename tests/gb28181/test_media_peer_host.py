"""The media receiver takes media only from the device's host when it is told that host (review 16: the
platform passes the host the device registered from). Real receiver, real UDP and TCP sockets on loopback;
127.0.0.2 plays another host. Each refusal has its control: the same media from the device's host taken."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from drivers.gb28181.rtp import RtpPacket
from edge.gb28181.media import EndReason, MediaTransport, open_receiver, same_host

SSRC = 1100000042
PORTS = (31000, 31999)


def _packets(count: int, *, ssrc: int = SSRC, first: int = 1) -> list[bytes]:
    return [RtpPacket(payload_type=96, sequence=first + i, timestamp=3600 * i, ssrc=ssrc, marker=True,
                      payload=bytes([i % 256]) * 100).to_bytes() for i in range(count)]


def _send_from(source_host: str, port: int, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_host, 0))
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))


async def _receive(tmp_path: Path, senders: list[tuple[str, list[bytes]]], *,
                   expected: str | None = "127.0.0.1", ssrc: int | None = SSRC) -> tuple[object, bytes]:
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=ssrc,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=5.0, max_bytes=1 << 20,
                                   expected_peer_host=expected)
    for source, packets in senders:
        _send_from(source, receiver.local_port, packets)
    outcome = await receiver.close(drain_s=0.5)
    return outcome, (tmp_path / "raw.ps").read_bytes()


async def test_udp_media_from_another_host_is_counted_and_never_taken(tmp_path: Path) -> None:
    outcome, raw = await _receive(tmp_path, [("127.0.0.2", _packets(5))])
    assert raw == b"" and outcome.bytes == 0 and outcome.packets == 0  # type: ignore[attr-defined]
    assert outcome.refused_packets == 5 and outcome.peer is None  # type: ignore[attr-defined]
    assert outcome.refused_sources[0].startswith("127.0.0.2:")  # type: ignore[attr-defined]
    summary = outcome.summary()  # type: ignore[attr-defined]
    assert summary["refused_packets"] == 5 and summary["expected_peer_host"] == "127.0.0.1"


async def test_control_the_same_media_from_the_devices_host_is_taken(tmp_path: Path) -> None:
    outcome, raw = await _receive(tmp_path, [("127.0.0.1", _packets(5))])
    assert outcome.packets == 5 and len(raw) == 500 and outcome.refused_packets == 0  # type: ignore[attr-defined]
    assert outcome.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]


async def test_a_foreign_first_packet_does_not_lock_the_ssrc_nor_become_the_peer(tmp_path: Path) -> None:
    """With no SSRC expected the receiver locks on the first one it takes: a stranger's must not be it."""
    outcome, raw = await _receive(tmp_path, [("127.0.0.2", _packets(3, ssrc=77)),
                                             ("127.0.0.1", _packets(4, ssrc=SSRC))], ssrc=None)
    assert outcome.ssrc == SSRC and outcome.packets == 4 and outcome.ssrc_mismatches == 0  # type: ignore[attr-defined]
    assert outcome.refused_packets == 3 and outcome.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert len(raw) == 400


async def test_control_without_an_expected_host_any_host_is_taken(tmp_path: Path) -> None:
    outcome, _ = await _receive(tmp_path, [("127.0.0.2", _packets(3))], expected=None)
    assert outcome.packets == 3 and outcome.refused_packets == 0  # type: ignore[attr-defined]


async def test_foreign_datagrams_do_not_keep_a_session_from_going_idle(tmp_path: Path) -> None:
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=1.0, max_bytes=1 << 20,
                                   expected_peer_host="127.0.0.1")
    stop = asyncio.Event()

    async def keep_sending() -> None:
        sequence = 1
        while not stop.is_set():
            _send_from("127.0.0.2", receiver.local_port, _packets(1, first=sequence))
            sequence += 1
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(keep_sending())
    try:
        outcome = await asyncio.wait_for(receiver.wait_closed(), 10)
    finally:
        stop.set()
        await sender
    assert outcome.ended is EndReason.IDLE and outcome.refused_packets > 0


@pytest.mark.parametrize(("a", "b", "same"), [
    ("127.0.0.1", "::ffff:127.0.0.1", True), ("10.0.0.1", "10.0.0.1", True),
    ("10.0.0.1", "10.0.0.2", False), ("fe80::1", "FE80::1", True), ("camera.local", "CAMERA.local", True),
    ("10.0.0.1", "::ffff:10.0.0.2", False),
])
def test_same_host_reads_ipv4_mapped_addresses_as_ipv4(a: str, b: str, same: bool) -> None:
    assert same_host(a, b) is same
