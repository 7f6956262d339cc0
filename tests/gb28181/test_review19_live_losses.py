"""Review 19: what a live Play loses without ending is on no record (edge.gb28181.live).

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
from pathlib import Path
from typing import Any

import pytest

from edge.gb28181.live import LiveEventKind
from edge.gb28181.sessions import MediaRequest, MediaSession
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, LiveEnv, live_env, make_recording


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-losses"), bitrate="1500k")


def capture_sessions(env: LiveEnv) -> list[MediaSession]:
    """The platform's Play sessions as live.py starts them (to read their outcome afterwards)."""
    sessions: list[MediaSession] = []
    start = env.platform.start_session

    async def recording_start(req: MediaRequest) -> MediaSession:
        session = await start(req)
        sessions.append(session)
        return session

    env.platform.start_session = recording_start  # type: ignore[method-assign]
    return sessions


def live_entries(env: LiveEnv) -> list[dict[str, Any]]:
    return [data for _, data in env.ledger.entries
            if data.get("source") == "gb28181" and data.get("channel_id") == CHANNEL]


async def stopped(env: LiveEnv) -> None:
    async with asyncio.timeout(30):
        while not any(e.kind is LiveEventKind.STOPPED for e in env.events):
            await asyncio.sleep(0.05)


def names_losses(data: dict[str, Any]) -> bool:
    return any(("lost" in key or "gaps" in key or "loss" in key) and bool(value)
               for key, value in data.items())


async def test_review19_rtp_losses_of_a_live_play_are_on_no_record(media: Path) -> None:
    """MEDIUM: packets lost in a live Play (UDP) are spliced out of the recorded stream, recorded nowhere."""
    async with live_env(media) as env:
        sessions = capture_sessions(env)
        await env.device("loss=0.05")
        async with env.open() as handle:
            await handle.wait_streaming()
            reader = handle.reader()
            taken = 0
            async with asyncio.timeout(30):
                while taken < 400_000:
                    chunk = await reader.read()
                    assert chunk, reader.ended
                    taken += len(chunk)
        await stopped(env)
        # Control: the receiver of this very Play counted the losses (the fault did its work).
        (session,) = sessions
        assert session.result is not None
        assert session.result.outcome.lost_packets > 0 and session.result.outcome.gaps
        # The finding: no entry of the channel names them.
        entries = live_entries(env)
        assert any(d.get("live") == "stopped" for d in entries)
        assert any(names_losses(d) for d in entries), entries
