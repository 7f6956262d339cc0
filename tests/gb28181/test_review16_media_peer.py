"""Review 16: the platform opens a Download's tcp-passive receiver without the device's address
(edge.gb28181.sessions `start` never passes `expected_peer_host` nor calls `expect_peer`), so the first
TCP connection from any host to the offered port is taken and the device's own is refused. A host on the
network that connects first (the port is open from before the INVITE; the range is small) and sends RTP
with the offered SSRC (sequential: '1' + the platform id's digits 3-8 + a 4-digit counter) has its stream
sealed as the device's recording. The receiver supports the check (media.py: "from the device's host when
`expected_peer_host` is given"); the platform does not use it. Over UDP the receiver has no source check
at all: a datagram from any host with the SSRC is taken (and one from elsewhere first makes the "peer").
Real platform, real media receiver, real TCP sockets on loopback (127.0.0.2 plays the other host)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.gb28181.rtp import RtpPacket
from drivers.gb28181.sdp import SessionKind
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import EndReason, MediaRequest

from .platform_peer import FakeClock, Ledger, TestDevice, offered_media, platform_settings

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
PASSWORD = "12345678"
START, END = 1_764_550_800, 1_764_551_100


@pytest.fixture
async def platform() -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


def _framed(ssrc: int, payload: bytes) -> bytes:
    packet = RtpPacket(payload_type=96, sequence=1, timestamp=0, ssrc=ssrc, marker=True,
                       payload=payload).to_bytes()
    return len(packet).to_bytes(2, "big") + packet


async def _connect_from(source_host: str, host: str, port: int) -> asyncio.StreamWriter:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source_host, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    _, writer = await asyncio.open_connection(sock=sock)
    return writer


async def _download(platform: GbPlatform, tmp_path: Path, first_from: str) -> tuple[str | None, int]:
    """A tcp-passive Download; a connection from `first_from` comes first with 1000 bytes, then the
    device's own (127.0.0.1) with 10 bytes, then MediaStatus 121. Returns the outcome's peer and bytes."""
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "tcp-passive", tmp_path / "raw.ps", START, END, speed=1))
        host, port = offered_media(device.invites[0])
        first = await _connect_from(first_from, host, port)
        first.write(_framed(session.ssrc_offered, b"S" * 1000))
        await first.drain()
        own = await _connect_from("127.0.0.1", host, port) if first_from != "127.0.0.1" else None
        if own is not None:
            own.write(_framed(session.ssrc_offered, b"D" * 10))
            await own.drain()
        await device.send_media_status(device.invites[0])
        result = await session.wait()
        assert result.end_reason is EndReason.FILE_END
        for writer in (first, own):
            if writer is not None:
                writer.close()
        return result.outcome.peer, result.outcome.bytes
    finally:
        await device.close()


async def test_a_tcp_passive_connection_from_another_host_is_not_taken(platform: GbPlatform,
                                                                       tmp_path: Path) -> None:
    peer, _ = await _download(platform, tmp_path, "127.0.0.2")
    assert peer is None or peer.startswith("127.0.0.1:"), f"the stream sealed came from {peer}"


async def test_control_the_devices_own_connection_is_taken(platform: GbPlatform, tmp_path: Path) -> None:
    peer, size = await _download(platform, tmp_path, "127.0.0.1")
    assert peer is not None and peer.startswith("127.0.0.1:") and size == 1000


async def _udp_download(platform: GbPlatform, tmp_path: Path, sender: str) -> tuple[str | None, int]:
    """A UDP Download; one RTP datagram with the offered SSRC from `sender`, then MediaStatus 121."""
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "udp", tmp_path / "raw.ps", START, END, speed=1))
        host, port = offered_media(device.invites[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((sender, 0))
            sock.sendto(_framed(session.ssrc_offered, b"S" * 1000)[2:], (host, port))
        await device.send_media_status(device.invites[0])
        result = await session.wait()
        return result.outcome.peer, result.outcome.bytes
    finally:
        await device.close()


async def test_udp_media_from_another_host_is_not_taken(platform: GbPlatform, tmp_path: Path) -> None:
    peer, size = await _udp_download(platform, tmp_path, "127.0.0.2")
    assert size == 0, f"{size} bytes from {peer} taken as the device's recording"


async def test_control_udp_media_from_the_devices_host_is_taken(platform: GbPlatform, tmp_path: Path) -> None:
    peer, size = await _udp_download(platform, tmp_path, "127.0.0.1")
    assert size == 1000 and peer is not None and peer.startswith("127.0.0.1:")
