"""`python -m simulators dock` as a separate process: the printed tty path is something DockDriver opens."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dock_helpers import next_event

from drivers.serial.dock import BayEvent, BayEventKind, BayLed, DockConnectionLost, DockDriver

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT_S = 10.0
# The simulator is another process: on a loaded machine it may not run for a second or more, which the
# in-process tests' FAST_TIMING (0.25 s replies, 3 retries) would read as a lost board.
SUBPROCESS_TIMING: dict[str, Any] = {"reply_timeout_s": 3.0, "retries": 3, "heartbeat_s": 0.5}
EVENT_TIMEOUT_S = 30.0


async def _start(*args: str, stdin: int | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "dock", *args,
        stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(LINE_TIMEOUT_S):
        raw = await process.stdout.readline()
    assert raw, "simulator closed stdout"
    return raw.decode().rstrip("\n")


async def _line_starting(process: asyncio.subprocess.Process, prefix: str) -> str:
    while True:
        line = await _line(process)
        if line.startswith(prefix):
            return line


@pytest.fixture
async def reaper() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    processes: list[asyncio.subprocess.Process] = []
    yield processes
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_help_documents_commands_and_faults() -> None:
    process = await _start("--help", stdin=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(LINE_TIMEOUT_S):
        out, _ = await process.communicate()
    assert process.returncode == 0
    text = out.decode()
    for needle in ("--bays", "--seed", "--garbage-every", "--bad-checksum-every", "--split-writes",
                   "--drop-events-every", "--silent", "--reply-delay", "insert BAY", "remove BAY",
                   "charge BAY PCT", "leds", "quit", "SIGTERM"):
        assert needle in text


async def test_bad_arguments_exit_2() -> None:
    process = await _start("--bays", "40", stdin=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(LINE_TIMEOUT_S):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert b"bays must be 1..32" in err


async def test_interactive_session(reaper: list[asyncio.subprocess.Process]) -> None:
    process = await _start("--bays", "4", "--seed", "1", "--insert", "2:80", stdin=asyncio.subprocess.PIPE)
    reaper.append(process)
    tty_path = await _line(process)
    assert tty_path.startswith("/dev/")
    assert process.stdin is not None

    async with await DockDriver.open(tty_path, **SUBPROCESS_TIMING) as driver:
        events = driver.events()
        first = await next_event(events, EVENT_TIMEOUT_S)
        assert first == BayEvent(2, BayEventKind.INSERTED, 80, synthetic=True)
        process.stdin.write(b"insert 3 55\n")
        await process.stdin.drain()
        assert await next_event(events, EVENT_TIMEOUT_S) == BayEvent(3, BayEventKind.INSERTED, 55)
        await driver.set_led(3, BayLed.COPYING)
        assert await _line_starting(process, "led ") == "led 3 COPYING"
        process.stdin.write(b"charge 3 60\nremove 2\n")
        await process.stdin.drain()
        assert await next_event(events, EVENT_TIMEOUT_S) == BayEvent(3, BayEventKind.CHARGE, 60)
        assert await next_event(events, EVENT_TIMEOUT_S) == BayEvent(2, BayEventKind.REMOVED, None)
        process.stdin.write(b"nonsense\n")
        await process.stdin.drain()
        assert (await _line_starting(process, "error")).startswith("error: unknown command")
        process.stdin.write(b"quit\n")
        await process.stdin.drain()
        async with asyncio.timeout(LINE_TIMEOUT_S):
            assert await process.wait() == 0
        with pytest.raises(DockConnectionLost):
            await next_event(events, EVENT_TIMEOUT_S)


async def test_serves_with_stdin_at_eof_until_sigterm(
    reaper: list[asyncio.subprocess.Process], tmp_path: Path
) -> None:
    link = tmp_path / "dock-by-id"
    process = await _start("--bays", "2", "--quiet", "--link", str(link), stdin=asyncio.subprocess.DEVNULL)
    reaper.append(process)
    tty_path = await _line(process)
    assert os.path.realpath(link) == os.path.realpath(tty_path)
    # Open through the stable name, as the service would with /dev/serial/by-id/...
    async with await DockDriver.open(str(link), **SUBPROCESS_TIMING) as driver:
        await driver.ping()  # stdin hit EOF long ago; the board still answers
        await driver.set_led(1, BayLed.DONE)
        assert driver.connected
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(LINE_TIMEOUT_S):
            assert await process.wait() == 0
    assert not link.exists()  # removed at exit
