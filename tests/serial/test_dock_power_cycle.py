"""Dock protocol 4's bay power cycle (PWR): the codec, the real driver against the real simulator over a pty,
a retransmitted command acted on once, and boards that cannot (an earlier protocol, a bay out of range)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

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
from drivers.usb.recorder import RecorderMode
from simulators.bay_power import bay_power_to_bus_socket
from simulators.dock import DockSimulator
from simulators.recorder.bus import BusClient, RecorderBus, RecorderBusServer
from tests.station.harness import spec

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


async def test_the_standalone_simulators_power_cycle_a_recorder_through_the_bus_socket(
    make_sim: MakeSim, open_driver: OpenDriver, tmp_path: Path
) -> None:
    # What `python -m simulators dock --recorder-bus SOCKET` wires: the recorder at bay 2's port (1-1.2) drops
    # off the bus and enumerates again; bay 1's (1-1.1) is left alone.
    bus = RecorderBus(tmp_path / "state", tmp_path / "media")
    server = RecorderBusServer(bus, tmp_path / "bus.sock")
    server.start()
    client = BusClient(tmp_path / "bus.sock")
    try:
        for index, s in enumerate((spec(0), spec(1))):
            await asyncio.to_thread(bus.add_recorder, s)
            bus.plug(s.device_serial, f"1-1.{index + 1}")
        serials = (spec(0).device_serial, spec(1).device_serial)
        address_before = {serial: bus.recorder_state(serial).address for serial in serials}
        sim = make_sim(4, on_power_cycle=bay_power_to_bus_socket(client, lambda bay: f"1-1.{bay}"))
        driver = await open_driver(sim.tty_path, heartbeat_s=60)
        await driver.power_cycle(2, 200)

        def replugged() -> bool:
            state = bus.recorder_state(spec(1).device_serial)
            return state.plugged and state.address != address_before[spec(1).device_serial]

        async with asyncio.timeout(30):
            while not replugged():
                await asyncio.sleep(0.02)
        second = bus.recorder_state(spec(1).device_serial)
        assert second.port_path == "1-1.2" and second.mode is RecorderMode.CONTROL
        assert bus.recorder_state(spec(0).device_serial).address == address_before[spec(0).device_serial]
    finally:
        client.close()
        server.stop()
        bus.close()
