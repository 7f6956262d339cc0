"""Review 26 (LOW): when the SIP TCP budget is full, review 24's eviction closes the unproven connection
that "never completed a message" before any that did, oldest first. A device's connection is unproven
and has completed no message from the moment it is accepted until its first REGISTER has arrived whole
(a 4G round trip, or longer on a loaded station). Strangers who send one cheap message (an OPTIONS) on
each connection they hold -- so none of theirs is ever preferred -- and keep opening new ones (they must,
every 30 s, anyway) close the device's fresh connection instead of their own oldest one whenever a
newcomer of theirs lands in that window. With the default budget (1024, 64 per address) that is 16
addresses refreshing ~34 connections a second; churning faster widens the odds.

Real transport on loopback, real TCP from several 127.0.0.x addresses. Control: the same strangers
holding silent connections: the newcomer closes the oldest of theirs and the device's stays."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from drivers.gb28181.sip import SipRequest, SipResponse, request
from drivers.gb28181.sip_transport import Peer, SipTransport, Transport, TransportLimits

STRANGERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
LATE_STRANGER = "127.0.0.6"
DEVICE_HOST = "127.0.0.9"


def _options(number: int) -> bytes:
    return request("OPTIONS", "sip:34020000002000000001@3402000000", [
        ("Via", f"SIP/2.0/TCP 127.0.0.2:5060;rport;branch=z9hG4bK-review26-{number}"),
        ("From", f"<sip:stranger{number}@3402000000>;tag=s{number}"),
        ("To", "<sip:34020000002000000001@3402000000>"),
        ("Call-ID", f"review26-{number}@stranger"), ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70"),
    ]).to_bytes()


def _reaches(count: Callable[[], int], expected: int) -> Callable[[], bool]:
    return lambda: count() == expected


async def _until(condition: str, check: Callable[[], bool]) -> None:
    for _ in range(1000):  # up to 10 s on a loaded machine
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached in 10 s: {condition}")


async def _connect(transport: SipTransport, host: str) -> tuple[socket.socket, Peer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", transport.port))
    return sock, Peer(Transport.TCP, host, int(sock.getsockname()[1]))


async def _device_kept(strangers_speak: bool) -> bool:
    handled: list[Peer] = []

    async def record(req: SipRequest, peer: Peer) -> SipResponse | None:
        handled.append(peer)
        return None

    transport = SipTransport(record, host="127.0.0.1", port=0,
                             limits=TransportLimits(max_tcp_connections=len(STRANGERS)))
    await transport.start()
    sockets: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        for number, host in enumerate(STRANGERS, start=1):
            sock, _ = await _connect(transport, host)
            sockets.append(sock)
            if strangers_speak:
                await loop.sock_sendall(sock, _options(number))
                await _until(f"{number} OPTIONS handled", _reaches(lambda: len(handled), number))
            await _until(f"{number} connections open",
                         _reaches(lambda: transport.open_connections, number))
        sock, device = await _connect(transport, DEVICE_HOST)  # its REGISTER is still on its way
        sockets.append(sock)
        await _until("room made for the device", lambda: transport.connections_shed == 1)
        sock, _ = await _connect(transport, LATE_STRANGER)
        sockets.append(sock)
        await _until("room made for the late stranger", lambda: transport.connections_shed == 2)
        await _until("the budget full", lambda: transport.open_connections == len(STRANGERS))
        transport.mark_proven(device)  # its REGISTER arrives and passes: is its connection still there?
        return transport.proven_connections == 1
    finally:
        for sock in sockets:
            sock.close()
        await transport.close()


async def test_strangers_that_each_sent_a_message_do_not_evict_a_device_connection_just_accepted() -> None:
    assert await _device_kept(strangers_speak=True), (
        "a stranger's newcomer closed the device's connection, accepted a moment before and awaiting its "
        "REGISTER, while four unproven stranger connections, all older, stayed open")


async def test_control_silent_strangers_give_way_first() -> None:
    assert await _device_kept(strangers_speak=False)
