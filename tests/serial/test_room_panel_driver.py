"""The real RoomPanelDriver against the room panel simulator over a real pty: lamp, buttons, the climate
sensor, and a hostile line (junk, bad checksums, overlong lines, lost events, a hung or restarted panel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from drivers.serial.room_panel import (
    ButtonPressed,
    EventsLost,
    PanelConnectionError,
    PanelConnectionLost,
    PanelInput,
    PanelNakError,
    PanelRestarted,
    ReadingTaken,
    RoomPanelDriver,
)
from drivers.serial.room_panel_protocol import Button, Lamp, NakReason, Reading
from simulators.room_panel import PanelFaults, RoomPanelSimulator

FAST: dict[str, Any] = {"reply_timeout_s": 0.3, "retries": 2, "heartbeat_s": 0.2}
WAIT_S = 20.0  # a generous bound on a loaded machine, never a timing premise

MakePanel = Callable[..., RoomPanelSimulator]
OpenDriver = Callable[..., Awaitable[RoomPanelDriver]]


@pytest.fixture
def make_panel() -> Iterator[MakePanel]:
    panels: list[RoomPanelSimulator] = []

    def make(**options: Any) -> RoomPanelSimulator:
        panel = RoomPanelSimulator(**options).start()
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.stop()


@pytest.fixture
async def open_driver() -> AsyncIterator[OpenDriver]:
    drivers: list[RoomPanelDriver] = []

    async def opener(url: str, **options: Any) -> RoomPanelDriver:
        driver = await RoomPanelDriver.open(url, **{**FAST, **options})
        drivers.append(driver)
        return driver

    yield opener
    for driver in drivers:
        await driver.close()


async def _next(driver: RoomPanelDriver, kind: type[PanelInput] | None = None) -> PanelInput:
    """The next input (of `kind`, skipping others)."""
    async with asyncio.timeout(WAIT_S):
        async for item in driver.inputs():
            if kind is None or isinstance(item, kind):
                return item
    raise AssertionError("inputs ended")


async def test_identity_lamp_buttons_and_sensor(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    panel = make_panel(reading=Reading(231, 554))
    driver = await open_driver(panel.tty_path)
    assert (driver.identity.panel_serial, driver.identity.has_sensor) == ("SIMPANEL-0001", True)
    for lamp in (Lamp.STEADY, Lamp.BLINK, Lamp.REFUSE, Lamp.OFF):
        await driver.set_lamp(lamp)
        assert panel.lamp is lamp  # acknowledged means shown
    assert panel.lamp_history() == [Lamp.OFF, Lamp.STEADY, Lamp.BLINK, Lamp.REFUSE, Lamp.OFF]
    buttons = (Button.START, Button.MARK, Button.STOP)
    seqs = [await asyncio.to_thread(panel.press, button) for button in buttons]
    pressed = [await _next(driver) for _ in range(3)]
    assert pressed == [ButtonPressed(b, s) for b, s in zip(buttons, seqs, strict=True)]
    reading = await driver.read_environment()
    assert reading == Reading(231, 554) and reading.temperature_c == 23.1 and reading.humidity_percent == 55.4
    panel.set_reading(Reading(-52, 901))
    await asyncio.to_thread(panel.send_reading)
    assert await _next(driver) == ReadingTaken(Reading(-52, 901))
    panel.set_reading(None)  # the sensor stops answering the panel: the fields come empty
    assert await driver.read_environment() is None
    assert driver.stats.bad_frames == 0 and driver.stats.lost_events == 0


async def test_a_panel_without_a_sensor_says_so(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    driver = await open_driver(make_panel(sensor=False).tty_path)
    assert driver.identity.has_sensor is False
    with pytest.raises(PanelNakError) as caught:
        await driver.read_environment()
    assert caught.value.reason is NakReason.NOSENSOR
    await driver.set_lamp(Lamp.BLINK)  # the link is fine after the refusal


async def test_periodic_readings_arrive_on_their_own(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    panel = make_panel(reading=Reading(200, 400), reading_every_s=0.1)
    driver = await open_driver(panel.tty_path)
    assert await _next(driver, ReadingTaken) == ReadingTaken(Reading(200, 400))


@pytest.mark.parametrize(
    "faults",
    [PanelFaults(garbage_every_n=1), PanelFaults(garbage_every_n=2), PanelFaults(bad_checksum_every_n=3)],
    ids=["junk before every frame", "junk before every 2nd frame", "every 3rd checksum bad"],
)
async def test_presses_get_through_a_noisy_line(
    make_panel: MakePanel, open_driver: OpenDriver, faults: PanelFaults
) -> None:
    panel = make_panel(seed=5)
    driver = await open_driver(panel.tty_path)
    panel.faults = faults
    await driver.set_lamp(Lamp.STEADY)  # a lost reply is re-sent
    assert panel.lamp is Lamp.STEADY
    seen: list[PanelInput] = []
    for _ in range(6):
        await asyncio.to_thread(panel.press, Button.MARK)
    async with asyncio.timeout(WAIT_S):
        while sum(isinstance(i, ButtonPressed) for i in seen) + sum(
                i.count for i in seen if isinstance(i, EventsLost)) < 6:
            seen.append(await _next(driver))
    presses = [i for i in seen if isinstance(i, ButtonPressed)]
    lost = sum(i.count for i in seen if isinstance(i, EventsLost))
    # Every press arrives once or is reported lost: none is invented, none vanishes unnoticed.
    assert len({p.event_seq for p in presses}) == len(presses) and len(presses) + lost == 6
    if faults.bad_checksum_every_n:
        assert driver.stats.bad_frames > 0 and lost > 0
    else:
        assert driver.junk_bytes > 0 and lost == 0 and len(presses) == 6


async def test_hostile_bytes_from_the_line_do_not_stop_the_driver(
    make_panel: MakePanel, open_driver: OpenDriver
) -> None:
    panel = make_panel()
    driver = await open_driver(panel.tty_path)
    hostile = (b"\x00\xff\xfe" * 50 + b"$" + b"9" * 4000 + b"\r\n" + b"$1,BTN,START*0000\r\n"
               + "$2,BTN,开始*1234\r\n".encode() + b"$3,ACK,PING,1*FFFF\n" + bytes(range(256)))
    await asyncio.to_thread(panel.write_raw, hostile)
    await asyncio.to_thread(panel.press, Button.START)  # control: the next real press gets through
    pressed = await _next(driver, ButtonPressed)
    assert isinstance(pressed, ButtonPressed) and pressed.button is Button.START
    assert driver.overlong_lines >= 1 and driver.stats.bad_frames >= 2 and driver.junk_bytes > 150
    await driver.set_lamp(Lamp.BLINK)
    assert panel.lamp is Lamp.BLINK


async def test_a_lost_press_is_reported(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    panel = make_panel()
    driver = await open_driver(panel.tty_path)
    panel.faults = PanelFaults(drop_events_every_n=2)
    await asyncio.to_thread(panel.press, Button.START)
    await asyncio.to_thread(panel.press, Button.STOP)  # never sent
    # The heartbeat's PING says which event the panel generated last: the lost STOP shows without a
    # later event.
    lost = await _next(driver, EventsLost)
    assert isinstance(lost, EventsLost) and lost.count == 1
    assert driver.stats.lost_events == 1


async def test_a_hung_panel_is_a_lost_connection(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    panel = make_panel()
    driver = await open_driver(panel.tty_path)
    panel.faults.silent = True
    with pytest.raises(PanelConnectionLost):
        async with asyncio.timeout(WAIT_S):
            async for _ in driver.inputs():
                pass
    with pytest.raises(PanelConnectionLost):
        await driver.set_lamp(Lamp.OFF)
    # Control: once it answers again, a new driver works.
    panel.faults.silent = False
    await driver.close()
    again = await open_driver(panel.tty_path)
    await again.set_lamp(Lamp.STEADY)
    assert panel.lamp is Lamp.STEADY


async def test_a_restarted_panel_gets_its_lamp_back(make_panel: MakePanel, open_driver: OpenDriver) -> None:
    panel = make_panel()
    driver = await open_driver(panel.tty_path)
    await driver.set_lamp(Lamp.STEADY)
    await asyncio.to_thread(panel.reboot)
    assert isinstance(await _next(driver, PanelRestarted), PanelRestarted)
    assert await asyncio.to_thread(panel.wait_for_lamp, Lamp.STEADY, WAIT_S)
    # A restart whose BOOT is lost: the lamp is re-asserted by the heartbeat all the same.
    await asyncio.to_thread(panel.reboot, announce=False)
    assert panel.lamp is Lamp.OFF
    assert await asyncio.to_thread(panel.wait_for_lamp, Lamp.STEADY, WAIT_S)
    assert panel.lamp_history()[-4:] == [Lamp.OFF, Lamp.STEADY, Lamp.OFF, Lamp.STEADY]


async def test_no_panel_is_a_clear_error() -> None:
    with pytest.raises(PanelConnectionError, match="cannot open room panel"):
        await RoomPanelDriver.open("/dev/no-such-room-panel", **FAST)


async def test_a_silent_host_cannot_leave_the_lamp_steady(
    make_panel: MakePanel, open_driver: OpenDriver
) -> None:
    panel = make_panel(host_timeout_s=3.0)
    driver = await open_driver(panel.tty_path, heartbeat_s=0.2)
    await driver.set_lamp(Lamp.STEADY)
    # Control: while the host's heartbeat comes (15 per watchdog period), the watchdog holds still.
    await asyncio.sleep(4.0)
    assert panel.lamp is Lamp.STEADY and panel.watchdog_trips == 0
    await driver.close()  # the host goes quiet (crashed, hung, line cut)
    assert await asyncio.to_thread(panel.wait_for_lamp, Lamp.BLINK, WAIT_S)
    assert panel.watchdog_trips == 1


async def test_event_numbers_wrap_past_65535_without_a_false_alarm(
    make_panel: MakePanel, open_driver: OpenDriver
) -> None:
    panel = make_panel(last_event_seq=65533)  # pressed and read a great many times since power-up
    driver = await open_driver(panel.tty_path)
    for _ in range(4):  # 65534, 65535, 1, 2
        await asyncio.to_thread(panel.press, Button.MARK)
    seqs = [item.event_seq for item in [await _next(driver, ButtonPressed) for _ in range(4)]
            if isinstance(item, ButtonPressed)]
    assert seqs == [65534, 65535, 1, 2]
    await driver.set_lamp(Lamp.OFF)  # a command round trip: every heartbeat before it is answered
    await asyncio.sleep(0.5)  # two more heartbeats, whose PING replies say 2
    assert driver.stats.lost_events == 0 and driver.stats.boots == 0
