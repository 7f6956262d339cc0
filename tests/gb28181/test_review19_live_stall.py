"""Review 19 (stall): what a live Play loses without ending is on no record (edge.gb28181.live).

Issue 11 (rooms record these live streams): "every interruption is itself a record, nothing unexplained".
The live channel records an interruption only when the Play *ends* (BYE, idle timeout, offline). Two ways
media goes missing while the Play goes on are never told to anyone:

* RTP packets lost over UDP: the media receiver counts them (`outcome.lost_packets`, `gaps`) and splices
  the bytes around them into the consumers' stream, but live.py drops the outcome: no ledger entry, no
  event, `session_stopped` has no loss figure;
* a stall shorter than the idle timeout (15 s by default): the consumers (ffmpeg) see nothing for that
  long, the stream goes on, and no entry, event or interruption says so.

Real platform, real media receiver, real simulator over UDP.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from edge.gb28181.live import LiveEventKind
from simulators.gb28181.stream import MediaSender
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, LiveEnv, live_env, make_recording

STALL_S = 2.0
IDLE_TIMEOUT_S = 4.0  # above the stall: the Play does not end


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-losses"), bitrate="1500k")


def live_entries(env: LiveEnv) -> list[dict[str, Any]]:
    return [data for _, data in env.ledger.entries
            if data.get("source") == "gb28181" and data.get("channel_id") == CHANNEL]


async def stopped(env: LiveEnv) -> None:
    async with asyncio.timeout(30):
        while not any(e.kind is LiveEventKind.STOPPED for e in env.events):
            await asyncio.sleep(0.05)


async def test_review19_a_stall_shorter_than_the_idle_timeout_is_on_no_record(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIUM: a device stalls for 2 s (idle timeout 4 s; default 15 s): the consumer waits 2 s for bytes,
    and no interruption, event or ledger entry says media stopped."""
    stalled = asyncio.Event()
    write = MediaSender._write
    sent = 0

    async def stalling_write(self: MediaSender, packet: bytes) -> None:
        nonlocal sent
        sent += 1
        if sent == 400 and not stalled.is_set():  # the device's encoder hangs once, mid-stream
            stalled.set()
            await asyncio.sleep(STALL_S)
        await write(self, packet)

    monkeypatch.setattr(MediaSender, "_write", stalling_write)
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        await env.device()
        async with env.open() as handle:
            await handle.wait_streaming()
            reader = handle.reader()
            longest_wait = 0.0
            async with asyncio.timeout(60):
                while not stalled.is_set():
                    assert await reader.read(), reader.ended
                last = time.monotonic()
                taken_after = 0
                while taken_after < 200_000:  # the stream goes on after the stall
                    chunk = await reader.read()
                    assert chunk, reader.ended
                    now = time.monotonic()
                    longest_wait = max(longest_wait, now - last)
                    last = now
                    taken_after += len(chunk)
            # Control: the consumer did wait through the stall, and the Play never ended (one session).
            assert longest_wait >= STALL_S * 0.75, longest_wait
            assert handle.state == "streaming" and reader.ended is None
        await stopped(env)
        kinds = {e.kind for e in env.events}
        entries = live_entries(env)
        (stop_entry,) = [d for d in entries if d.get("live") == "stopped"]
        recorded = (LiveEventKind.INTERRUPTED in kinds or stop_entry.get("interruptions")
                    or any(d.get("live") not in ("started", "stopped") for d in entries)
                    or any("stall" in key and value for d in entries for key, value in d.items()))
        assert recorded, f"a {longest_wait:.1f} s stretch without media is on no record: {entries}"


async def test_the_simulators_stall_fault_is_a_recorded_stall(media: Path) -> None:
    """The simulator's `stall=N` (no patching): the live channel records one stall of about N s as a
    `stalled` event and a `gap` entry, and the Play goes on (no interruption). Control: the same device
    without the fault leaves no stall."""
    for faults, expect_stall in ((("stall=2.5",), True), ((), False)):
        async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
            await env.device(*faults)
            async with env.open() as handle:
                await handle.wait_streaming()
                reader = handle.reader()
                taken = 0
                async with asyncio.timeout(60):
                    while taken < 900_000:  # past the middle of the 4 s Play (and its stall)
                        chunk = await reader.read()
                        assert chunk, reader.ended
                        taken += len(chunk)
                assert handle.state == "streaming"
            await stopped(env)
            stalls = [d for d in live_entries(env) if d.get("live") == "stalled"]
            events = [e for e in env.events if e.kind is LiveEventKind.STALLED]
            assert LiveEventKind.INTERRUPTED not in {e.kind for e in env.events}
            if expect_stall:
                assert len(stalls) == 1 and 2.0 <= stalls[0]["stalled_s"] <= 4.0, stalls
                assert len(events) == 1 and events[0].interruption is not None
            else:
                assert not stalls and not events, stalls
