"""A GB camera's sound whose codec changes mid-run (edge.rooms.gb_feed, edge.rooms.g711): the other G.711 law
is converted sample by sample into the run's, by the same tables as ffmpeg's (every code compared with real
ffmpeg's own conversion), and shown in the feed's status (control: a camera staying A-law converts nothing);
a switch to a codec the raw pipe cannot carry ends the run with an `audio-codec-changed` reason naming both
codecs, the sound before it kept, no `audio-lost` gap claiming the sound was missing (control: no switch,
no end reason). Feed over real pipes with the scripted reader of tests.rooms.test_gb_feed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from drivers.gb28181.ps import Codec, PsMuxer
from edge.rooms.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW, convert
from edge.rooms.gb_feed import AUDIO_CODEC_CHANGED_REASON
from tests.prerequisites import require
from tests.rooms.conftest import HAVE_FFMPEG
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, record_a_law_sound

ALAW_TONE = 0x2A
ULAW_TONE = 0x35


def _ffmpeg_converts(data: bytes, source: str, target: str, tmp_path: Path) -> bytes:
    path = tmp_path / f"in.{source}"
    path.write_bytes(data)
    done = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", source, "-ar", "8000", "-ac", "1",
                           "-i", str(path), "-f", target, "-ar", "8000", "-ac", "1", "-"],
                          capture_output=True, timeout=120, check=True)
    return done.stdout


def test_the_g711_tables_are_ffmpeg_s(tmp_path: Path) -> None:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    every_code = bytes(range(256))
    assert _ffmpeg_converts(every_code, "mulaw", "alaw", tmp_path) == ULAW_TO_ALAW
    assert _ffmpeg_converts(every_code, "alaw", "mulaw", tmp_path) == ALAW_TO_ULAW
    # Silence stays silence; the same law is left as it is.
    assert convert(b"\xff", Codec.G711U, Codec.G711A) == b"\xd5"
    assert convert(every_code, Codec.G711A, Codec.G711A) == every_code


def _stream(seconds: float, *, switch_to: Codec | None, at_s: float = 2.0) -> list[bytes]:
    """A key frame a second with its PSM, 40 ms of A-law sound with each frame; from `at_s` the PSM lists
    the sound as `switch_to` (µ-law tone bytes, or AAC-like bytes)."""
    alaw, other = PsMuxer(Codec.H264, Codec.G711A), PsMuxer(Codec.H264, switch_to or Codec.G711A)
    chunks = []
    for frame in range(round(seconds * 25)):
        pts = 90000 + frame * FRAME
        switched = switch_to is not None and frame >= at_s * 25
        muxer = other if switched else alaw
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        chunk += muxer.audio_frame(bytes([ULAW_TONE if switched else ALAW_TONE]) * 320, pts)
        chunks.append(chunk)
    return chunks


async def test_mu_law_after_a_switch_is_converted_into_the_run_s_a_law() -> None:
    sound, feed, events = await record_a_law_sound(_stream(6.0, switch_to=Codec.G711U))
    assert sound == bytes([ALAW_TONE]) * 16000 + bytes([ULAW_TO_ALAW[ULAW_TONE]]) * 32000
    status = feed.status()
    assert (status["audio"], status["audio_input"]) == ("g711a", "g711u")
    assert status["audio_codec_changes"] == 1 and status["converted_audio_pes"] == 100
    assert feed.end_reason is None and events == []
    # Control: a camera staying A-law converts nothing.
    _, same, _ = await record_a_law_sound(_stream(6.0, switch_to=None))
    assert same.status()["audio_codec_changes"] == 0 and same.status()["converted_audio_pes"] == 0


async def test_a_switch_to_a_codec_the_raw_pipe_cannot_carry_ends_the_run_saying_so() -> None:
    sound, feed, events = await record_a_law_sound(_stream(6.0, switch_to=Codec.AAC))
    assert feed.end_reason is not None
    assert feed.end_reason.startswith(f"{AUDIO_CODEC_CHANGED_REASON}: G.711A -> aac: "), feed.end_reason
    assert sound[:16000] == bytes([ALAW_TONE]) * 16000 and len(sound) <= 16000 + 320
    assert events == [], events  # no gap saying the camera's sound was missing
    assert feed.status()["audio_codec_changes"] == 1
    # Control: without the switch the run ends only with the channel.
    _, same, _ = await record_a_law_sound(_stream(6.0, switch_to=None))
    assert same.end_reason is None
