"""Dock protocol 4's bay power cycle (PWR): the codec, the real driver against the real simulator over a pty,
a retransmitted command acted on once, and boards that cannot (an earlier protocol, a bay out of range)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest

from drivers.serial.dock import DockDriver, DockNakError, DockUsageError
from drivers.serial.dock_protocol import (
    DockProtocolError,
    NakReason,
    PowerCycleCommand,
    PowerCycleReply,
    crc16,
    decode_line,
)
from simulators.dock import DockSimulator

MakeSim = Callable[..., DockSimulator]
OpenDriver = Callable[..., Awaitable[DockDriver]]


def test_the_frames_round_trip_and_out_of_range_values_are_refused() -> None:
    command = PowerCycleCommand(7, 3, 1500)
    assert command.to_bytes().startswith(b"$7,PWR,3,1500*")
    assert decode_line(command.to_bytes()) == command
    reply = PowerCycleReply(7, 3, 1500)
    assert decode_line(reply.to_bytes()) == reply
    for bad in (b"$8,PWR,3,99", b"$8,PWR,3,10001", b"$8,PWR,33,1500", b"$8,PWR,3"):
        payload = bad[1:]
        line = bad + b"*%04X\r\n" % crc16(payload)
        with pytest.raises(DockProtocolError) as caught:
            decode_line(line)
        assert caught.value.reason in (NakReason.VALUE, NakReason.RANGE, NakReason.SYNTAX)
    with pytest.raises(DockProtocolError):
        PowerCycleCommand(1, 1, 50)


async def test_the_driver_power_cycles_a_bay_and_the_board_hands_it_to_its_hook(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    cycled: list[tuple[int, int]] = []
    done = threading.Event()

    def hook(bay: int, off_ms: int) -> None:
        cycled.append((bay, off_ms))
        done.set()

    sim = make_sim(4, on_power_cycle=hook)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    await driver.power_cycle(2, 400)
    assert done.wait(30)
    assert cycled == [(2, 400)] and sim.power_cycles(2) == 1 and sim.power_cycles(1) == 0
    with pytest.raises(DockUsageError):
        await driver.power_cycle(5, 400)  # refused before the wire: the board has 4 bays


async def test_a_retransmitted_power_cycle_is_acted_on_once(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.2, retries=3, heartbeat_s=60)
    sim.faults.reply_delay_s = 0.3  # the first ACK comes late: the driver sends the same frame again
    await driver.power_cycle(1, 200)
    sim.faults.reply_delay_s = 0.0
    await driver.ping()
    assert driver.stats.timeouts >= 1
    assert sim.power_cycles(1) == 1  # the same command number: one power cycle, not two


@pytest.mark.parametrize("protocol", [1, 2, 3])
async def test_an_earlier_board_cannot_power_cycle(make_sim: MakeSim, open_driver: OpenDriver, protocol: int
                                                   ) -> None:
    sim = make_sim(4, protocol=protocol)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    with pytest.raises(DockUsageError, match=f"protocol {protocol} board cannot"):
        await driver.power_cycle(1, 500)
    assert sim.power_cycles(1) == 0
    assert driver.connected


async def test_an_earlier_board_asked_anyway_answers_unknown(make_sim: MakeSim) -> None:
    # A board that says protocol 4 in VER but is older firmware underneath: NAK UNKNOWN, raised, link kept.
    sim = make_sim(4, protocol=3)
    driver = await DockDriver.open(sim.tty_path, heartbeat_s=60)
    try:
        object.__setattr__(driver.identity, "protocol", 4)
        with pytest.raises(DockNakError) as caught:
            await driver.power_cycle(1, 500)
        assert caught.value.reason is NakReason.UNKNOWN and driver.connected
    finally:
        await driver.close()
