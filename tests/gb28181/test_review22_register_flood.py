"""Review 22: every authenticated REGISTER is a `device_authenticated` ledger entry, with no bound: a
device that registers again and again (a firmware loop re-registering after each answer, or a recorder in
the field whose configured password someone has read out of it) writes the station's append-only ledger as
fast as it can send, and each entry goes on to the central too. Refusals, bad input and keepalives from
another port are limited (one a minute per device and address, a budget over all); the authenticated
path, the one any device holding its own password reaches, is not. Nothing the device does here is new
(same address, same expiry): the entries say nothing the first did not.

Real platform, SIP over UDP, real digest. Control: one registration is one entry."""

from __future__ import annotations

from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000071"
PASSWORD = "12345678"
REGISTRATIONS = 200


async def _entries(registrations: int) -> int:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        for _ in range(registrations):
            assert (await device.register()).status == 200
        return len(ledger.of("device_authenticated"))
    finally:
        await device.close()
        await platform.close()


async def test_a_device_registering_in_a_loop_does_not_write_one_ledger_entry_per_registration() -> None:
    entries = await _entries(REGISTRATIONS)
    assert entries <= 10, (f"{REGISTRATIONS} registrations from the same address within seconds wrote "
                           f"{entries} device_authenticated entries")


async def test_control_one_registration_is_one_entry() -> None:
    assert await _entries(1) == 1


async def test_a_registration_from_another_address_is_on_the_ledger_at_once() -> None:
    """Limiting the refreshes must not hide what a registration changes: the same device registering from
    a second port, then back, is an entry each time it moves, naming what changed; refreshes between
    them from one place are one entry."""
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    first = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    moved = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        for _ in range(5):
            assert (await first.register()).status == 200
        assert (await moved.register()).status == 200
        entries = ledger.of("device_authenticated")
        assert [e["registration"] for e in entries] == ["first", "refresh", "changed"]
        assert entries[-1]["changed"] == ["address"]
        assert moved.sip is not None and entries[-1]["address"].endswith(f":{moved.sip.port}")
        assert (await moved.register(expires=7200)).status == 200  # granted 3600 here: the same state
        assert len(ledger.of("device_authenticated")) == 3
    finally:
        await moved.close()
        await first.close()
        await platform.close()
