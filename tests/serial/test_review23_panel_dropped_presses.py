"""Review 23 (#10): button presses the room panel driver drops because its consumer lags are lost without a
word to the station.

RoomPanelDriver queues what the panel reports for its consumer (edge.rooms.hardware) up to `queue_size`
(64) and drops the rest, counting them in `stats.dropped_inputs` only (room_panel._publish). The consumer
handles one press at a time and a STOP waits for every ffmpeg to close its last segment and for everything
to be sealed (stop_timeout_s, 15 s, plus the sealing); a panel that repeats a held button, a bouncing
contact or a hostile panel on the line (a START storm) fills the queue meanwhile, and what comes after
(the operator's STOP or MARK) is dropped. Presses the *line* loses are told (`EventsLost`, which the room
turns into an `error` entry: "a button press may not have been acted on"); presses the *driver* drops are
not: no `EventsLost`, no ledger entry, and edge.rooms.hardware's promise ("Lost panel events ... are an
`error` entry") does not hold for them.

Real driver against the panel simulator over a real pty; the lagging consumer is one that has not read
its inputs yet. Control: with room in the queue every press arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from drivers.serial.room_panel import ButtonPressed, EventsLost, PanelInput, RoomPanelDriver
from drivers.serial.room_panel_protocol import Button
from simulators.room_panel import RoomPanelSimulator

WAIT_S = 20.0  # a generous bound on a loaded machine
PRESSES = 8


@pytest.fixture
def panel() -> Iterator[RoomPanelSimulator]:
    sim = RoomPanelSimulator().start()
    yield sim
    sim.stop()


async def _next(driver: RoomPanelDriver) -> PanelInput:
    async with asyncio.timeout(WAIT_S):
        async for item in driver.inputs():
            return item
    raise AssertionError("inputs ended")


@pytest.mark.parametrize("queue_size", [64, 4])
async def test_presses_dropped_by_a_lagging_consumer_are_told_like_presses_lost_on_the_line(
    panel: RoomPanelSimulator, queue_size: int
) -> None:
    driver = await RoomPanelDriver.open(panel.tty_path, reply_timeout_s=0.3, retries=2, heartbeat_s=0.2,
                                        queue_size=queue_size)
    try:
        for _ in range(PRESSES):
            await asyncio.to_thread(panel.press, Button.START)
        kept = min(PRESSES, queue_size)
        async with asyncio.timeout(WAIT_S):  # every press has reached the driver (queued or dropped)
            while driver.stats.dropped_inputs < PRESSES - kept:
                await asyncio.sleep(0.05)
        items = [await _next(driver) for _ in range(kept)]
        # One more press once the consumer has caught up: whatever was dropped is told before it.
        await asyncio.to_thread(panel.press, Button.STOP)
        items.append(await _next(driver))
        while not (isinstance(items[-1], ButtonPressed) and items[-1].button is Button.STOP):
            items.append(await _next(driver))
    finally:
        await driver.close()
    pressed = sum(isinstance(item, ButtonPressed) for item in items)
    told = sum(item.count for item in items if isinstance(item, EventsLost))
    assert pressed + told == PRESSES + 1, (
        f"{PRESSES + 1} presses: {pressed} delivered, {told} told as lost, "
        f"{driver.stats.dropped_inputs} dropped by the driver without a word")
