"""A GB run prepared without sound (its first PSM lists AAC) whose camera's PSM lists G.711 again
(edge.rooms.gb_feed): the run ends (`audio-codec-changed: aac -> G.711A`) once the G.711 PSM stayed in force
for CODEC_SETTLE_S of the picture, so that the next run records the sound; rate-limited: a camera flapping
AAC <-> G.711 at every PSM never ends the run (control: a steady G.711 does), and a channel's run ends so at
most once per CODEC_RESTART_INTERVAL_S, once that is over the next one does (never left out for good).

Feed over real pipes with the scripted reader of tests.rooms.test_gb_feed."""

from __future__ import annotations

import asyncio

import pytest

from drivers.gb28181.ps import Codec, PsMuxer
from edge.rooms.gb_feed import (
    AUDIO_CODEC_CHANGED_REASON,
    CODEC_RESTART_INTERVAL_S,
    GbRunFeed,
    SoundRestartGate,
)
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, ScriptedReader, _drain
from tests.rooms.test_gb_feed_codec import ALAW_TONE

WHAT = "sound-back channel"


@pytest.fixture
def gate() -> SoundRestartGate:
    """The channel's memory of its runs' restarts, kept across its runs as the room's channel keeps it."""
    return SoundRestartGate()


def _stream(seconds: float, *, flapping: bool) -> list[bytes]:
    """A key frame (with its PSM) a second, 40 ms of sound with each frame: AAC for the first second, then
    G.711 A-law (`flapping`: AAC and G.711 by turns, a second each)."""
    aac, alaw = PsMuxer(Codec.H264, Codec.AAC), PsMuxer(Codec.H264, Codec.G711A)
    chunks = []
    for frame in range(round(seconds * 25)):
        pts = 90000 + frame * FRAME
        second = frame // 25
        muxer = aac if second == 0 or (flapping and second % 2 == 0) else alaw
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        chunk += muxer.audio_frame(bytes([ALAW_TONE]) * 320, pts)
        chunks.append(chunk)
    return chunks


async def _run(chunks: list[bytes], gate: SoundRestartGate | None = None) -> GbRunFeed:
    feed = GbRunFeed(ScriptedReader(chunks), what=WHAT, sound_restarts=gate)
    await feed.prepare()
    never = asyncio.Event()
    try:
        readers = [asyncio.create_task(_drain(fd, bytearray(), never)) for fd in feed.pass_fds]
        await asyncio.wait_for(feed.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        feed.close()
    return feed


async def test_control_a_steady_g711_after_an_aac_start_ends_the_run_naming_the_change() -> None:
    feed = await _run(_stream(8.0, flapping=False))
    assert feed.unsupported_audio is Codec.AAC
    assert feed.end_reason is not None
    assert feed.end_reason.startswith(f"{AUDIO_CODEC_CHANGED_REASON}: aac -> G.711A")


async def test_a_camera_flapping_aac_and_g711_does_not_restart_the_run() -> None:
    feed = await _run(_stream(12.0, flapping=True))
    assert feed.unsupported_audio is Codec.AAC and feed.end_reason is None


async def test_a_channel_s_run_ends_for_its_sound_at_most_once_per_interval(gate: SoundRestartGate) -> None:
    first = await _run(_stream(8.0, flapping=False), gate)
    assert first.end_reason is not None
    second = await _run(_stream(8.0, flapping=False), gate)
    assert second.end_reason is None  # within the interval: the run goes on video only
    # Once the interval is over, the run missing the sound ends.
    assert gate.last is not None
    gate.last -= CODEC_RESTART_INTERVAL_S + 1
    third = await _run(_stream(8.0, flapping=False), gate)
    assert third.end_reason is not None
