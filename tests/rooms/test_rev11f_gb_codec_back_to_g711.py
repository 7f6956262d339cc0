"""Review rev11f (issue 11, a GB camera's sound changing codec), MEDIUM: a switch of the camera's sound to a
codec the raw pipe cannot carry (AAC) now ends the run (`audio-codec-changed`), and the next run is prepared
from the PSM in force then: AAC, so a video-only run (`unsupported_audio`). When the camera goes back to
G.711 (a PSM glitch, a setting changed and changed back), that run never looks at its sound again: the G.711
sound the camera sends is dropped for the run's whole length (an interview's, the rest of the session), with
no gap on the record and no ledger note (the "sound not recorded" note is said once per session, and it was
said for AAC). The switch the other way ends the run so the next one follows the codec; this one does not.

Feed over real pipes with the scripted reader of tests.rooms.test_gb_feed. Control: the same camera whose
stream starts in G.711 A-law has its sound recorded."""

from __future__ import annotations

import asyncio

from drivers.gb28181.ps import Codec, PsMuxer
from edge.rooms.gb_feed import GbRunFeed
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, ScriptedReader, _drain
from tests.rooms.test_gb_feed_codec import ALAW_TONE

SECONDS = 6.0


def _stream(*, starts_in: Codec) -> list[bytes]:
    """A key frame (with its PSM) a second, 40 ms of sound with each frame: the PSM lists the sound as
    `starts_in` for the first second, then as G.711 A-law."""
    first, alaw = PsMuxer(Codec.H264, starts_in), PsMuxer(Codec.H264, Codec.G711A)
    chunks = []
    for frame in range(round(SECONDS * 25)):
        pts = 90000 + frame * FRAME
        muxer = first if frame < 25 else alaw
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        chunk += muxer.audio_frame(bytes([ALAW_TONE]) * 320, pts)
        chunks.append(chunk)
    return chunks


async def _run(chunks: list[bytes]) -> tuple[GbRunFeed, bytes]:
    feed = GbRunFeed(ScriptedReader(chunks), what="test channel")
    await feed.prepare()
    outs = [bytearray() for _ in feed.pass_fds]
    never = asyncio.Event()
    try:
        readers = [asyncio.create_task(_drain(fd, out, never))
                   for fd, out in zip(feed.pass_fds, outs, strict=True)]
        await asyncio.wait_for(feed.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        feed.close()
    return feed, bytes(outs[1]) if len(outs) > 1 else b""


async def test_control_a_camera_starting_in_g711_has_its_sound_recorded() -> None:
    feed, sound = await _run(_stream(starts_in=Codec.G711A))
    assert feed.audio_codec is Codec.G711A
    assert sound.count(bytes([ALAW_TONE])) >= 5 * 8000


async def test_g711_sound_after_an_aac_start_is_recorded_or_ends_the_run() -> None:
    feed, sound = await _run(_stream(starts_in=Codec.AAC))
    assert feed.unsupported_audio is Codec.AAC  # the run was prepared video only
    recorded_s = sound.count(bytes([ALAW_TONE])) / 8000
    assert recorded_s >= 4.0 or feed.end_reason is not None, (
        f"the camera sent G.711 sound for {SECONDS - 1:g} s after its first second in AAC; the run recorded "
        f"{recorded_s:g} s of it and went on (end reason {feed.end_reason!r}): its sound is lost for the "
        "run's length with no gap")
