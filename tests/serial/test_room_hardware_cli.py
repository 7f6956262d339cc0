"""`python -m simulators room-panel` and `python -m simulators ptz` as separate processes: the printed tty
path is something the real drivers open, and what the host does shows on the simulator's output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.serial.ptz import PtzDriver
from drivers.serial.room_panel import ButtonPressed, ReadingTaken, RoomPanelDriver
from drivers.serial.room_panel_protocol import Button, Lamp

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT_S = 20.0


@pytest.fixture
async def started() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    processes: list[asyncio.subprocess.Process] = []
    yield processes
    for process in processes:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def _start(processes: list[asyncio.subprocess.Process], *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    processes.append(process)
    return process


async def _line_starting(process: asyncio.subprocess.Process, prefix: str) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(LINE_TIMEOUT_S):
        while True:
            raw = await process.stdout.readline()
            assert raw, "simulator closed stdout"
            if raw.decode().startswith(prefix):
                return raw.decode().rstrip("\n")


async def test_the_panel_simulator_process(started: list[asyncio.subprocess.Process]) -> None:
    process = await _start(started, "room-panel", "--seed", "3")
    tty = await _line_starting(process, "/dev/")
    # Another process: on a loaded machine it may not run for a second or more; generous replies.
    async with await RoomPanelDriver.open(tty, reply_timeout_s=3.0, heartbeat_s=1.0) as driver:
        await driver.set_lamp(Lamp.STEADY)
        assert await _line_starting(process, "lamp STEADY")
        assert process.stdin is not None
        process.stdin.write(b"mark\nreading 21.5 40\n")
        await process.stdin.drain()
        inputs = driver.inputs()
        async with asyncio.timeout(LINE_TIMEOUT_S):
            pressed = await anext(inputs)
            reported = await anext(inputs)  # the reading command sends the new reading at once
        assert isinstance(pressed, ButtonPressed) and pressed.button is Button.MARK
        assert isinstance(reported, ReadingTaken) and reported.reading.temperature_dc == 215
        reading = await driver.read_environment()
        assert reading is not None and (reading.temperature_c, reading.humidity_percent) == (21.5, 40.0)


async def test_the_ptz_simulator_process(started: list[asyncio.subprocess.Process]) -> None:
    process = await _start(started, "ptz", "--address", "4", "--preset", "6")
    tty = await _line_starting(process, "/dev/")
    async with await PtzDriver.open(tty, address=4) as ptz:
        await ptz.go_to_preset(6)
    assert await _line_starting(process, "go_to_preset preset=6")
