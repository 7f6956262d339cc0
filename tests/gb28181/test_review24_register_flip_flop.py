"""Review 24: the limiter of `device_authenticated` entries (review 22) keys a registration by its state
(address, expiry, User-Agent, why no Date) and lets each state through once an hour. A device that moves
to an address it was already at within the hour is held back: someone holding the device's password at a
second address, registering in turn with the real device, moves the device there (its queries, INVITEs
and DeviceStatus answers, hence the clock offset on its recordings, go to them) with only the first move
on the ledger. The docstring promises "a change (another address, expiry, reason) is on it at once".

Real platform, SIP over UDP, real digest. Control: moves to addresses not seen within the hour are each
an entry (test_review22_register_flood shows one move; here two)."""

from __future__ import annotations

from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000071"
PASSWORD = "12345678"


async def _moves(order: list[int]) -> tuple[list[str], list[str]]:
    """Registers `DEVICE` from the test devices in `order` (indexes); the addresses registered from, and
    the addresses of the device_authenticated entries."""
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    devices = [await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
               for _ in range(max(order) + 1)]
    try:
        registered_from: list[str] = []
        for index in order:
            assert (await devices[index].register()).status == 200
            state = platform.registry.get(DEVICE)
            assert state is not None and state.address is not None
            registered_from.append(str(state.address))
        return registered_from, [entry["address"] for entry in ledger.of("device_authenticated")]
    finally:
        for device in devices:
            await device.close()
        await platform.close()


async def test_a_device_moved_back_to_an_address_it_was_at_is_on_the_ledger() -> None:
    registered_from, entries = await _moves([0, 1, 0, 1, 0, 1])
    assert len(set(registered_from)) == 2  # six moves between two addresses
    assert entries == registered_from, (
        f"the device moved {len(registered_from) - 1} times between two addresses; the ledger's "
        f"device_authenticated entries name only {entries}")


async def test_control_moves_to_new_addresses_are_each_on_the_ledger() -> None:
    registered_from, entries = await _moves([0, 1, 2])
    assert len(set(registered_from)) == 3
    assert entries == registered_from
