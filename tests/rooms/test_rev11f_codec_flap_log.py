"""Review rev11f (issue 11, a GB camera's sound changing codec), LOW: edge.rooms.gb_feed logs a warning at
every change of the law the camera's PSM gives its sound in (`_input_changed`), with no bound. A camera (or
a hostile sender on the GB port) whose stream map flaps between A-law and µ-law with every packet writes a
warning per packet: 25 a second per room for as long as the session lasts (a 3-hour interview: 270,000
lines), flooding the journal that holds the agent's other warnings. The conversion itself stays exact and
cheap (bytes.translate). Other unreadable-input warnings in the agent are said once, then at most once a
minute (edge.rooms.reserve).

Feed over real pipes with the scripted reader of tests.rooms.test_gb_feed. Control: one switch is one
warning."""

from __future__ import annotations

import logging

import pytest

from drivers.gb28181.ps import Codec, PsMuxer
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, record_a_law_sound
from tests.rooms.test_gb_feed_codec import ALAW_TONE, ULAW_TONE

SECONDS = 10.0


def _flapping(*, every_frame: bool) -> list[bytes]:
    """40 ms of sound with each frame; the PSM's law flips at every frame (each a key frame with its PSM),
    or once, at 2 s (a key frame a second)."""
    alaw, ulaw = PsMuxer(Codec.H264, Codec.G711A), PsMuxer(Codec.H264, Codec.G711U)
    chunks = []
    for frame in range(round(SECONDS * 25)):
        pts = 90000 + frame * FRAME
        mu = frame % 2 == 1 if every_frame else frame >= 50
        muxer = ulaw if mu else alaw
        key = every_frame or frame % 25 == 0  # a PSM goes with each key frame: every frame one when flapping
        chunk = muxer.video_frame(IDR if key else SLICE, pts, key=key)
        chunk += muxer.audio_frame(bytes([ULAW_TONE if mu else ALAW_TONE]) * 320, pts)
        chunks.append(chunk)
    return chunks


def _codec_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records
               if r.levelno >= logging.WARNING and "sound changed from" in r.getMessage())


async def test_control_one_switch_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _, feed, _ = await record_a_law_sound(_flapping(every_frame=False))
    assert feed.audio_codec_changes == 1
    assert _codec_warnings(caplog) == 1


async def test_a_camera_flapping_codecs_every_packet_does_not_flood_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _, feed, _ = await record_a_law_sound(_flapping(every_frame=True))
    changes = feed.audio_codec_changes
    assert changes > 200  # every flip counted
    warnings = _codec_warnings(caplog)
    assert warnings <= 5, (
        f"{warnings} warnings for {changes} codec flips in {SECONDS:g} s of one room's stream: one per "
        "packet, unbounded for the session's length")
