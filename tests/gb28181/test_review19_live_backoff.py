"""Review 19: the re-INVITE backoff of a live channel never grows for a device whose every Play brings a
little media and then stalls (edge.gb28181.live).

`_play` starts the backoff again from `retry_min_s` when "a Play streamed `STABLE_S` long", but it measures
from the INVITE to the session's end, and a session that stalls ends only after the platform's idle timeout.
With the defaults (idle timeout 15 s, `STABLE_S` 10 s) *every* Play that brought one packet counts as
stable: a device whose encoder dies after a moment (or that sends one packet and nothing more) is
re-INVITEd at `retry_min_s` for ever, each round a `gap` and a `session_started` on the ledger.

The tests shrink `STABLE_S` (3 s) and the idle timeout (2 s) in the same proportion as the defaults; the
simulator's `die-mid-stream` sends 2 s of a looped recording per Play, then nothing (no BYE, as devices).
The control: the same device with `STABLE_S` above the session's length shows the backoff growing, so the
measurement can see it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge.gb28181 import live
from edge.gb28181.live import LiveEvent, LiveEventKind
from edge.gb28181.sessions import MediaRequest, MediaSession
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import live_env, make_recording

IDLE_TIMEOUT_S = 2.0
RETRY_MIN_S = 0.5
ROUNDS = 4  # INVITEs: waits before the 2nd, 3rd, 4th would be 0.5, 1, 2 s with a growing backoff


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-backoff"))


async def waits_between_plays(media: Path) -> list[float]:
    """Seconds from each interruption to the next INVITE, over `ROUNDS` Plays of a dying device."""
    invites: list[float] = []
    interrupted: list[float] = []
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S, retry_min_s=RETRY_MIN_S,
                        retry_max_s=8.0) as env:
        start = env.platform.start_session

        async def timed_start(req: MediaRequest) -> MediaSession:
            invites.append(time.monotonic())
            return await start(req)

        env.platform.start_session = timed_start  # type: ignore[method-assign]

        def on_event(event: LiveEvent) -> None:
            if event.kind is LiveEventKind.INTERRUPTED:
                interrupted.append(time.monotonic())

        env.live.add_listener(on_event)
        await env.device("die-mid-stream")
        async with env.open():
            async with asyncio.timeout(90):
                while len(invites) < ROUNDS:
                    await asyncio.sleep(0.05)
    # Every Play brought media, and each ended in an interruption (not a "no media" problem).
    assert len(interrupted) >= ROUNDS - 1, (invites, interrupted)
    return [invites[i + 1] - interrupted[i] for i in range(ROUNDS - 1)]


async def test_review19_backoff_resets_for_a_device_that_stalls_after_each_invite(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOW: the backoff is reset by the idle timeout itself; the device is re-INVITEd at retry_min_s for
    ever (with the defaults, a single packet per Play is enough)."""
    monkeypatch.setattr(live, "STABLE_S", 3.0)  # 2 s of media + 2 s idle = 4 s "stable"
    waits = await waits_between_plays(media)
    assert waits[-1] >= 3 * RETRY_MIN_S, f"waits between INVITEs never grew: {waits}"


async def test_review19_backoff_control_grows_when_the_plays_are_not_counted_stable(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the same device, with STABLE_S above the sessions' length: the waits grow."""
    monkeypatch.setattr(live, "STABLE_S", 60.0)
    waits = await waits_between_plays(media)
    assert waits[-1] >= 3 * RETRY_MIN_S, waits
