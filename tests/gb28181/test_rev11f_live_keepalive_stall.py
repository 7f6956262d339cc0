"""Review rev11f (MEDIUM, the live layer): a device whose media stops while it goes on sending RTP packets
without payload (the simulator's `keepalive-only=N`: RFC 6263 keepalives in the stream's numbering, every
other one all padding) is stalled (edge.gb28181.live): the stall is told and recorded when media comes again,
`stalled_since()` says so while it lasts, the reader never reads an empty chunk (b"" is its end), and the
empty packets are counted in the channel's view and its `session_stopped`. Control: the simulator did send
them, and the same device without the fault leaves no stall.

Real platform, real media receiver, real simulator over UDP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge.gb28181.live import LiveEventKind
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, LiveEnv, live_env, make_recording

PAUSE_S = 3.0
IDLE_TIMEOUT_S = 6.0  # above the pause: the Play does not end


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("rev11f-keepalive"), bitrate="1500k")


def live_entries(env: LiveEnv, event: str) -> list[dict[str, Any]]:
    return [data for _, data in env.ledger.entries
            if data.get("channel_id") == CHANNEL and data.get("live") == event]


async def _read_through_the_pause(env: LiveEnv, *faults: str) -> tuple[list[str | None], int]:
    """Read the channel until well past the simulator's pause (or as long without one); what
    `stalled_since()` said during the pause, and the keepalives the device had sent by then."""
    device = await env.device(*faults)
    said: list[str | None] = []
    keepalives = 0
    async with env.open() as handle:
        await handle.wait_streaming()
        reader = handle.reader()

        async def watch() -> None:
            nonlocal keepalives
            while not any(s.sender.stats.stalled_s for s in device.sessions.values()):
                await asyncio.sleep(0.05)
            await asyncio.sleep(PAUSE_S - 0.5)  # the stall clock (stall_s 2 s) has run out by now
            said.append(handle.stalled_since())
            keepalives = sum(s.sender.stats.keepalives_sent for s in device.sessions.values())

        watching = asyncio.ensure_future(watch())
        taken = 0
        try:
            async with asyncio.timeout(90):
                while taken < 1_700_000:  # past 6 s of the looped 4 s file (its pause) and on
                    chunk = await reader.read()
                    assert chunk, f"the reader ended: {reader.ended}"
                    taken += len(chunk)
        finally:
            watching.cancel()
        assert handle.state == "streaming" and reader.ended is None
    async with asyncio.timeout(30):
        while not live_entries(env, "stopped"):
            await asyncio.sleep(0.05)
    return said, keepalives  # read in the pause: the device forgets a session at its BYE


async def test_a_device_sending_keepalives_only_is_stalled(media: Path) -> None:
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        said, keepalives = await _read_through_the_pause(env, f"keepalive-only={PAUSE_S}")
        assert keepalives >= 5, "the simulator sent no keepalives during its pause"
        assert said and said[0] is not None, (
            "media stopped while keepalives came, yet stalled_since() says no stall: they reset its clock")
        stalls = live_entries(env, "stalled")
        assert len(stalls) == 1 and PAUSE_S - 1.0 <= stalls[0]["stalled_s"] <= PAUSE_S + 2.0, stalls
        assert [e for e in env.events if e.kind is LiveEventKind.STALLED]
        assert LiveEventKind.INTERRUPTED not in {e.kind for e in env.events}
        (stopped,) = live_entries(env, "stopped")
        assert stopped["empty_packets"] >= keepalives // 2 > 0, (keepalives, stopped)  # later ones too


async def test_control_without_the_fault_no_stall(media: Path) -> None:
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        said, keepalives = await _read_through_the_pause(env)
        assert keepalives == 0 and said == []
        assert not live_entries(env, "stalled")
        (stopped,) = live_entries(env, "stopped")
        assert stopped["empty_packets"] == 0 and stopped["stalls"] == 0
