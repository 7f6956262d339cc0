"""Every move of a device's registered address is a `device_authenticated` entry (review 24), and a device
flapping between addresses beyond `MAX_MOVES_RECORDED` an hour costs the ledger one entry saying so (with
the count and the addresses), the moves after it counted and told at the first registration after the hour.

Real platform, SIP over UDP, real digest; the platform's monotonic clock is moved, not waited for."""

from __future__ import annotations

from edge.gb28181.address_moves import MAX_MOVES_RECORDED, MOVES_WINDOW_S
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000072"
PASSWORD = "12345678"
HELD_BACK = 4


async def test_a_flapping_device_is_one_entry_with_the_count_then_told_after_the_hour() -> None:
    ledger = Ledger()
    clock = FakeClock()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=clock, open_receiver=open_receiver)
    await platform.start()
    devices = [await TestDevice(DEVICE, PASSWORD, platform.transport.port).start() for _ in range(2)]
    try:
        assert (await devices[0].register()).status == 200  # "first"
        moves = MAX_MOVES_RECORDED + 1 + HELD_BACK
        for move in range(1, moves + 1):
            assert (await devices[move % 2].register()).status == 200
        entries = ledger.of("device_authenticated")
        assert len(entries) == 1 + MAX_MOVES_RECORDED + 1  # the first, each move within the bound, one more
        assert all(e["changed"] == ["address"] for e in entries[1:])
        flapping = entries[-1]["flapping"]
        addresses = {str(d.sip.port) for d in devices if d.sip is not None}
        assert flapping["moves_in_window"] == MAX_MOVES_RECORDED + 1
        assert {a.rsplit(":", 1)[1] for a in flapping["addresses_seen"]} == addresses
        assert not any("flapping" in e for e in entries[1:-1])
        # Within the hour: a refresh at the same address stays limited, nothing more is written.
        assert (await devices[moves % 2].register()).status == 200
        assert len(ledger.of("device_authenticated")) == len(entries)
        clock.now += MOVES_WINDOW_S + 1
        assert (await devices[(moves + 1) % 2].register()).status == 200  # the next move, after the hour
        after = ledger.of("device_authenticated")
        assert len(after) == len(entries) + 1
        assert after[-1]["flapping_ended"]["moves_not_recorded"] == HELD_BACK
        assert "flapping" not in after[-1]
    finally:
        for device in devices:
            await device.close()
        await platform.close()


async def test_control_moves_within_the_bound_are_each_an_entry_without_flapping() -> None:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    devices = [await TestDevice(DEVICE, PASSWORD, platform.transport.port).start() for _ in range(2)]
    try:
        for move in range(MAX_MOVES_RECORDED + 1):  # the first registration and MAX_MOVES_RECORDED moves
            assert (await devices[move % 2].register()).status == 200
        entries = ledger.of("device_authenticated")
        assert len(entries) == MAX_MOVES_RECORDED + 1
        assert not any("flapping" in e or "flapping_ended" in e for e in entries)
    finally:
        for device in devices:
            await device.close()
        await platform.close()
