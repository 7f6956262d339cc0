"""Review 21 (LOW): a step of the station's own clock during a live stream is recorded as a stall (or hides
one): the live channel measured the time between packets, the stable Play and the loss checks on the wall
clock (`time.time()` arrival stamps). A clock stepped forward an hour mid-stream wrote a `gap` entry
("stalled", 3600 s) for a stream that never paused; stepped back during a real stall, the stall was on no
record; stepped back once media flowed, the Play's lost packets were on no record while it went on.
Durations are monotonic now; the wall clock stamps only the record's `from` and `to`.

Real platform, real media receiver, real simulator over UDP. The station's wall clock is the seam: the
`time` module the media receiver and the live channel read is given a wall clock that steps (the machine's
own clock cannot be stepped by a test); the monotonic clock is the real one."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.gb28181 import live as live_module
from edge.gb28181 import media as media_module
from edge.gb28181.live import LiveEventKind
from simulators.gb28181.stream import MediaSender
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, LiveEnv, live_env, make_recording

STALL_S = 2.0
IDLE_TIMEOUT_S = 4.0  # above the stall: the Play does not end
REAL_STALL_S = 2.5
HOUR_S = 3600.0
SETTLE_S = 0.3  # below the stall


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review21-live"), bitrate="1500k")


class SteppedWall:
    """The station's wall clock as the receiver and the live channel read it: the real one plus `step_s`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step_s = 0.0
        shim = SimpleNamespace(time=lambda: time.time() + self.step_s, monotonic=time.monotonic)
        monkeypatch.setattr(media_module, "time", shim)
        monkeypatch.setattr(live_module, "time", shim)


def live_entries(env: LiveEnv) -> list[dict[str, Any]]:
    return [data for _, data in env.ledger.entries
            if data.get("source") == "gb28181" and data.get("channel_id") == CHANNEL]


async def _stream(media: Path, monkeypatch: pytest.MonkeyPatch, *, step_s: float, real_stall: bool,
                  ) -> tuple[list[dict[str, Any]], list[Any]]:
    """A Play over UDP; before its 400th packet the station's clock steps `step_s` (0: none) and, with
    `real_stall`, the device stalls `REAL_STALL_S` there. Returns the channel's `stalled` entries and
    events once it stopped."""
    wall = SteppedWall(monkeypatch)
    write = MediaSender._write
    sent = 0
    stepped = asyncio.Event()

    async def writing(self: MediaSender, packet: bytes) -> None:
        nonlocal sent
        sent += 1
        if sent == 400 and not stepped.is_set():
            await asyncio.sleep(SETTLE_S)  # the receiver takes what was sent before, on the clock before
            wall.step_s = step_s
            stepped.set()
            if real_stall:
                await asyncio.sleep(REAL_STALL_S - SETTLE_S)
        await write(self, packet)

    monkeypatch.setattr(MediaSender, "_write", writing)
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S, stall_s=STALL_S) as env:
        await env.device()
        async with env.open() as handle:
            await handle.wait_streaming()
            reader = handle.reader()
            async with asyncio.timeout(60):
                while not stepped.is_set():
                    assert await reader.read(), reader.ended
                taken_after = 0
                while taken_after < 200_000:  # the stream goes on after the step
                    chunk = await reader.read()
                    assert chunk, reader.ended
                    taken_after += len(chunk)
            assert handle.state == "streaming" and reader.ended is None  # one Play, never ended
        async with asyncio.timeout(30):
            while not any(e.kind is LiveEventKind.STOPPED for e in env.events):
                await asyncio.sleep(0.05)
        assert LiveEventKind.INTERRUPTED not in {e.kind for e in env.events}
        stalls = [d for d in live_entries(env) if d.get("live") == "stalled"]
        (stopped,) = [d for d in live_entries(env) if d.get("live") == "stopped"]
        assert stopped["stalls"] == len([e for e in env.events if e.kind is LiveEventKind.STALLED])
        return stalls, [e for e in env.events if e.kind is LiveEventKind.STALLED]


async def test_a_station_clock_stepped_forward_mid_stream_is_no_stall(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stalls, events = await _stream(media, monkeypatch, step_s=HOUR_S, real_stall=False)
    assert not stalls and not events, (
        f"the station's clock stepped an hour forward during a stream that never paused, and the channel "
        f"recorded a stall: {stalls}")


async def test_control_a_real_stall_is_recorded_for_its_own_length(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stalls, events = await _stream(media, monkeypatch, step_s=0.0, real_stall=True)
    assert len(stalls) == 1 and len(events) == 1, stalls
    assert REAL_STALL_S * 0.75 <= stalls[0]["stalled_s"] <= REAL_STALL_S + 2.0, stalls


async def test_a_real_stall_across_a_backward_step_is_still_recorded(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stalls, _ = await _stream(media, monkeypatch, step_s=-HOUR_S, real_stall=True)
    assert len(stalls) == 1, (
        "the device stalled 2.5 s while the station's clock stepped an hour back: the stall is on no record")
    assert REAL_STALL_S * 0.75 <= stalls[0]["stalled_s"] <= REAL_STALL_S + 2.0, stalls


async def test_a_real_stall_across_a_forward_step_is_recorded_for_its_own_length_with_wall_stamps(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The length is the monotonic one; `from` and `to` are the station's clock as it read (the step
    between them shows: the record says what the clock said, the length what passed)."""
    stalls, _ = await _stream(media, monkeypatch, step_s=HOUR_S, real_stall=True)
    assert len(stalls) == 1, stalls
    assert REAL_STALL_S * 0.75 <= stalls[0]["stalled_s"] <= REAL_STALL_S + 2.0, stalls
    wall_span = (datetime.fromisoformat(stalls[0]["to"]) - datetime.fromisoformat(stalls[0]["from"]))
    assert HOUR_S <= wall_span.total_seconds() <= HOUR_S + REAL_STALL_S + 5.0


async def _lost_entries_while_streaming(media: Path, monkeypatch: pytest.MonkeyPatch, step_s: float,
                                        ) -> list[dict[str, Any]]:
    """A Play losing 5 % of its packets (UDP); once media flows the station's clock steps `step_s`: the
    `gap` entries ("lost") written while the Play goes on (before any stop)."""
    wall = SteppedWall(monkeypatch)
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        await env.device("loss=0.05")
        async with env.open() as handle:
            await handle.wait_streaming()
            wall.step_s = step_s
            reader = handle.reader()
            taken = 0
            async with asyncio.timeout(60):
                while taken < 400_000:  # more than a second of the stream
                    chunk = await reader.read()
                    assert chunk, reader.ended
                    taken += len(chunk)
            assert handle.state == "streaming"
            return [d for d in live_entries(env) if d.get("live") == "lost"]


async def test_losses_are_reported_while_the_play_goes_on_after_a_backward_step(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lost = await _lost_entries_while_streaming(media, monkeypatch, -HOUR_S)
    assert lost, ("the station's clock stepped an hour back: RTP packets lost while the Play goes on are on "
                  "no record until the clock is back where it was")


async def test_control_losses_are_reported_while_the_play_goes_on(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _lost_entries_while_streaming(media, monkeypatch, 0.0)
