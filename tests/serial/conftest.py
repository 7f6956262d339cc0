"""Fixtures for the dock bay controller tests: simulators on real ptys, drivers with fast timings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from dock_helpers import FAST_TIMING, ScriptedBoard

from drivers.serial.dock import DockDriver
from simulators.dock import DockSimulator


@pytest.fixture
def make_sim() -> Iterator[Callable[..., DockSimulator]]:
    sims: list[DockSimulator] = []

    def make(bays: int = 4, **options: Any) -> DockSimulator:
        sim = DockSimulator(bays, **options).start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
async def open_driver() -> AsyncIterator[Callable[..., Awaitable[DockDriver]]]:
    drivers: list[DockDriver] = []

    async def opener(url: str, **options: Any) -> DockDriver:
        driver = await DockDriver.open(url, **{**FAST_TIMING, **options})
        drivers.append(driver)
        return driver

    yield opener
    for driver in drivers:
        await driver.close()


@pytest.fixture
def scripted_board() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], ScriptedBoard]]:
    boards: list[ScriptedBoard] = []

    def make(respond: Callable[[bytes], list[bytes]]) -> ScriptedBoard:
        board = ScriptedBoard(respond)
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.close()
