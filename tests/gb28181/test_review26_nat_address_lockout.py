"""Review 26: review 24 made the SIP TCP budget close the oldest *unproven* connection for a newcomer, so
that strangers cannot lock devices out. But the per-address bound (`max_tcp_connections_per_host`, 64)
is checked first and refuses outright: a stranger behind the same carrier NAT address as the devices
(any subscriber of the same 4G carrier, or anyone behind the same site's NAT) who keeps that address's
slots filled with unproven connections -- each reopened the moment the 30 s unproven timeout closes it --
locks every device behind that address out of SIP over TCP, although every connection it holds is
unproven and would be the first to give way if it came from another address.

Real transport on loopback, real TCP from 127.0.0.1 (the shared NAT address). Control: with one slot of
the address still free the device's connection is accepted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from drivers.gb28181.sip import SipRequest, SipResponse
from drivers.gb28181.sip_transport import Peer, SipTransport, Transport, TransportLimits

SHARED_NAT = "127.0.0.1"
PER_ADDRESS = 3


async def _nothing(request: SipRequest, peer: Peer) -> SipResponse | None:
    return None


async def _connect(transport: SipTransport, host: str) -> tuple[socket.socket, Peer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", transport.port))
    return sock, Peer(Transport.TCP, host, int(sock.getsockname()[1]))


async def _open(transport: SipTransport, count: int) -> None:
    await _until(f"{count} connections open", lambda: transport.open_connections == count)


async def _until(condition: str, check: Callable[[], bool]) -> None:
    for _ in range(1000):  # up to 10 s on a loaded machine
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached in 10 s: {condition}")


async def _device_let_in(strangers: int) -> bool:
    """`strangers` unproven connections from the shared address, then a device's from the same address:
    whether the device's connection is kept (its authenticated REGISTER could then prove it)."""
    transport = SipTransport(_nothing, host="127.0.0.1", port=0,
                             limits=TransportLimits(max_tcp_connections=16,
                                                    max_tcp_connections_per_host=PER_ADDRESS))
    await transport.start()
    sockets: list[socket.socket] = []
    try:
        for count in range(1, strangers + 1):
            sock, _ = await _connect(transport, SHARED_NAT)
            sockets.append(sock)
            await _open(transport, count)
        sock, device = await _connect(transport, SHARED_NAT)
        sockets.append(sock)
        if strangers >= PER_ADDRESS:
            await _until("the newcomer refused or room made", lambda: transport.connections_shed >= 1)
        await _open(transport, min(strangers + 1, PER_ADDRESS))
        transport.mark_proven(device)  # as the platform does on the device's authenticated REGISTER
        return transport.proven_connections == 1
    finally:
        for sock in sockets:
            sock.close()
        await transport.close()


async def test_a_stranger_filling_a_shared_nat_address_with_unproven_connections_does_not_lock_devices_out(
        ) -> None:
    assert await _device_let_in(PER_ADDRESS), (
        f"{PER_ADDRESS} unproven connections from the devices' shared NAT address (the address's limit, the "
        "budget far from full): the device's connection from that address was refused instead of the "
        "oldest unproven one giving way")


async def test_control_with_a_slot_of_the_address_free_the_device_gets_in() -> None:
    assert await _device_let_in(PER_ADDRESS - 1)
