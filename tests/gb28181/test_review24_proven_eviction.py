"""Review 24: the SIP TCP connection budget (review 22) keeps a connection proven by an authenticated
REGISTER up to the idle timeout and, when every slot is taken, makes room by closing "a connection not
proven first" -- but only among the connections of the most crowded address. When devices behind one
carrier NAT address hold proven connections and strangers at other addresses hold as many unproven ones,
a newcomer from a third address closes a proven device's connection (the first address found among the
most crowded) while the strangers' unproven connections stay. The device is then unreachable until its
next REGISTER (README: a TCP device that reconnects without registering is unreachable), and a stranger
can repeat this with each new address.

Real transport on loopback, real TCP from 127.0.0.1/.2/.3. Control: the same connections opened in the
other order (strangers first) make room from the strangers' unproven connections."""

from __future__ import annotations

import asyncio
import socket

from drivers.gb28181.sip import SipRequest, SipResponse
from drivers.gb28181.sip_transport import Peer, SipTransport, Transport, TransportLimits

DEVICES_HOST = "127.0.0.1"  # devices behind one carrier NAT address
STRANGERS_HOST = "127.0.0.2"
NEWCOMER_HOST = "127.0.0.3"


async def _nothing(request: SipRequest, peer: Peer) -> SipResponse | None:
    return None


async def _connect(transport: SipTransport, host: str) -> tuple[socket.socket, Peer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", transport.port))
    return sock, Peer(Transport.TCP, host, int(sock.getsockname()[1]))


async def _settled(transport: SipTransport, expected: int) -> None:
    for _ in range(500):
        if transport.open_connections == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{transport.open_connections} connections open, {expected} expected")


async def _proven_left(strangers_first: bool) -> int:
    transport = SipTransport(_nothing, host="127.0.0.1", port=0,
                             limits=TransportLimits(max_tcp_connections=4, max_tcp_connections_per_host=3))
    await transport.start()
    sockets: list[socket.socket] = []
    try:
        order = [STRANGERS_HOST, STRANGERS_HOST, DEVICES_HOST, DEVICES_HOST] if strangers_first else \
            [DEVICES_HOST, DEVICES_HOST, STRANGERS_HOST, STRANGERS_HOST]
        for count, host in enumerate(order, start=1):
            sock, peer = await _connect(transport, host)
            sockets.append(sock)
            await _settled(transport, count)
            if host == DEVICES_HOST:
                transport.mark_proven(peer)  # as the platform does on an authenticated REGISTER
        assert transport.proven_connections == 2 and transport.open_connections == 4  # the budget is full
        sock, _ = await _connect(transport, NEWCOMER_HOST)
        sockets.append(sock)
        for _ in range(500):
            if transport.connections_shed:
                break
            await asyncio.sleep(0.01)
        await _settled(transport, 4)
        assert transport.connections_shed == 1  # room was made: one connection closed for the newcomer
        return transport.proven_connections
    finally:
        for sock in sockets:
            sock.close()
        await transport.close()


async def test_a_newcomer_does_not_close_a_proven_connection_while_unproven_ones_are_open() -> None:
    proven = await _proven_left(strangers_first=False)
    assert proven == 2, ("a stranger's connection closed a device's proven connection while two unproven "
                         "ones from another address stayed open")


async def test_control_strangers_first_their_unproven_connection_makes_room() -> None:
    assert await _proven_left(strangers_first=True) == 2


async def _newcomer_let_in(stranger_hosts: list[str]) -> bool:
    """The budget (4) filled by unproven connections from `stranger_hosts`; whether a connection from
    another address is then accepted (kept open past the refusal)."""
    transport = SipTransport(_nothing, host="127.0.0.1", port=0,
                             limits=TransportLimits(max_tcp_connections=4, max_tcp_connections_per_host=3))
    await transport.start()
    sockets: list[socket.socket] = []
    try:
        for count, host in enumerate(stranger_hosts, start=1):
            sock, _ = await _connect(transport, host)
            sockets.append(sock)
            await _settled(transport, count)
        sock, peer = await _connect(transport, "127.0.0.9")
        sockets.append(sock)
        for _ in range(500):
            if transport.connections_shed:
                break
            await asyncio.sleep(0.01)
        await _settled(transport, 4)
        transport.mark_proven(peer)  # its REGISTER would pass now, if it is still connected
        return transport.proven_connections == 1
    finally:
        for sock in sockets:
            sock.close()
        await transport.close()


async def test_strangers_one_connection_per_address_do_not_lock_a_device_out() -> None:
    """Strangers holding every slot with one unproven connection from each of as many addresses (an IPv6
    /64 has plenty) refuse every device that comes next, until they stop: each slot is renewed within the
    30 s an unproven connection may stay."""
    assert await _newcomer_let_in(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]), (
        "a device connecting while four unproven strangers hold the budget was refused")


async def test_control_strangers_crowding_one_address_make_room_for_a_device() -> None:
    assert await _newcomer_let_in(["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"])
