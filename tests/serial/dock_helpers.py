"""Helpers for the dock bay controller tests (imported by the test modules and conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import tty
from collections.abc import AsyncIterator, Callable
from typing import Any

from drivers.serial.dock import BayEvent, BayEventKind
from drivers.serial.dock_protocol import LineFramer, crc16
from simulators.dock import DockSimulator

# Fast but not flaky: the simulator answers in well under a millisecond.
FAST_TIMING: dict[str, Any] = {"reply_timeout_s": 0.25, "retries": 3, "heartbeat_s": 0.1}
EVENT_TIMEOUT_S = 5.0

BayView = dict[int, int | None]  # bay -> charge (None if unknown) for every occupied bay


def apply_event(view: BayView, event: BayEvent) -> None:
    """Fold one event into a bay view, checking it is a legal transition."""
    if event.kind is BayEventKind.INSERTED:
        assert event.bay not in view, f"INSERTED for occupied bay: {event}"
        view[event.bay] = event.charge_percent
    elif event.kind is BayEventKind.REMOVED:
        assert event.bay in view, f"REMOVED for empty bay: {event}"
        del view[event.bay]
    else:
        assert event.bay in view, f"CHARGE for empty bay: {event}"
        view[event.bay] = event.charge_percent


def sim_view(sim: DockSimulator) -> BayView:
    return {bay: sim.charge(bay) for bay in range(1, sim.bay_count + 1) if sim.present(bay)}


async def fold_until(
    events: AsyncIterator[BayEvent], view: BayView, expected: BayView, timeout_s: float = EVENT_TIMEOUT_S
) -> list[BayEvent]:
    """Consume events into `view` until it equals `expected`; return the events consumed."""
    seen: list[BayEvent] = []
    async with asyncio.timeout(timeout_s):
        while view != expected:
            event = await anext(events)
            seen.append(event)
            apply_event(view, event)
    return seen


async def next_event(events: AsyncIterator[BayEvent], timeout_s: float = EVENT_TIMEOUT_S) -> BayEvent:
    async with asyncio.timeout(timeout_s):
        return await anext(events)


class ScriptedBoard:
    """A hand-driven board on a pty for hostile-board tests: `respond(line)` returns what to send back."""

    def __init__(self, respond: Callable[[bytes], list[bytes]]) -> None:
        self.respond = respond
        self.received: list[bytes] = []
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.tty_path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        os.write(self._master, data)

    def _run(self) -> None:
        framer = LineFramer()
        while not self._stop.is_set():
            readable, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            for line in framer.feed(os.read(self._master, 4096)):
                self.received.append(line)
                for reply in self.respond(line):
                    self.send(reply)

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)




def frame(payload: str) -> bytes:
    """A frame with a correct CRC around any payload, to get past the checksum to the check under test."""
    data = payload.encode("latin-1")
    return b"$" + data + b"*" + b"%04X" % crc16(data) + b"\r\n"
