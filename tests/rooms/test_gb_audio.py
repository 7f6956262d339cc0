"""The GB camera's sound aligned with its video as raw G.711 (edge.rooms.gb_audio), pure: sample 0 at the
first video PTS, holes filled with silence of exactly their length (a gap from 0.2 s on, with station times; a
shorter one only counted: the control), overlaps dropped, the sound kept within a second of the picture
when none comes, a PTS wrap carried over, a clock jump not filled with minutes of silence."""

from __future__ import annotations

import pytest

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import AudioGap, AudioGapOpened, AudioTimeline

FRAME = 3600  # 25 fps video at 90 kHz
PACKET = 1800  # 20 ms of G.711: 160 samples
SECOND_NS = 1_000_000_000
V0 = 900_000


def _tone(count: int) -> bytes:
    return bytes([0x2A]) * count  # not the silence byte of either law


def _run(timeline: AudioTimeline, seconds: float, *, start: int = V0, audio_from: int | None = None,
         skip: tuple[int, int] | None = None, arrived_ns: int = 0) -> bytes:
    """`seconds` of a camera's stream from `start`: a video PTS every 40 ms, a 20 ms audio packet every
    20 ms from `audio_from` (video's start by default), none with PTS in `skip` [from, to)."""
    out = bytearray()
    audio_at = start if audio_from is None else audio_from
    for frame in range(round(seconds * 25)):
        pts = start + frame * FRAME
        out += timeline.video(pts, arrived_ns + (pts - start) * SECOND_NS // 90_000)
        while audio_at < pts + FRAME:
            if skip is None or not skip[0] <= audio_at < skip[1]:
                out += timeline.audio(audio_at, _tone(160))
            audio_at += PACKET
    return bytes(out)


def test_continuous_sound_is_written_as_it_came_from_the_first_video_frame() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _run(timeline, 4.0)
    assert out == _tone(4 * 8000) and timeline.samples == 32000
    assert timeline.take_gaps() == [] and timeline.filled_samples == 0


def test_sound_before_the_first_picture_is_dropped_and_a_late_start_is_preceded_by_silence() -> None:
    timeline = AudioTimeline(Codec.G711A)
    assert timeline.audio(V0 - PACKET, _tone(160)) == b""  # no picture yet: nothing to align it with
    early = _run(timeline, 1.0, audio_from=V0 + 900)  # the sound begins 10 ms after the picture
    assert early[:80] == b"\xd5" * 80 and early[80:] == _tone(len(early) - 80)
    assert timeline.take_gaps() == []  # 10 ms: filled, no gap
    mulaw = AudioTimeline(Codec.G711U)
    assert _run(mulaw, 0.1, audio_from=V0 + 900)[:80] == b"\xff" * 80


def test_a_hole_is_silence_of_its_exact_length_and_a_gap_with_its_station_times() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _run(timeline, 4.0, skip=(V0 + 90_000, V0 + 135_000), arrived_ns=1_000 * SECOND_NS)
    assert len(out) == 32000  # never stretched: the sound still lasts 4 s
    assert out[8000:12000] == b"\xd5" * 4000 and out[:8000] == _tone(8000) and out[12000:] == _tone(20000)
    (gap,) = timeline.take_gaps()
    assert gap.seconds == 0.5 and not gap.ongoing_at_end
    assert (gap.from_ns, gap.to_ns) == (1_001 * SECOND_NS, 1_001 * SECOND_NS + SECOND_NS // 2)
    # Control: a hole under 0.2 s (five packets, 100 ms) is filled the same way but is no gap.
    short = AudioTimeline(Codec.G711A)
    assert len(_run(short, 4.0, skip=(V0 + 90_000, V0 + 99_000))) == 32000
    assert short.take_gaps() == [] and short.filled_samples == 800


def test_overlapping_sound_is_dropped_not_written_twice() -> None:
    timeline = AudioTimeline(Codec.G711A)
    timeline.video(V0, 0)
    assert timeline.audio(V0, _tone(160)) == _tone(160)
    assert timeline.audio(V0 + 900, b"\x01" * 160) == b"\x01" * 80  # its first 10 ms were written already
    assert timeline.audio(V0, _tone(160)) == b""  # a repeat
    assert timeline.samples == 240 and timeline.dropped_samples == 240


def test_without_sound_silence_keeps_within_a_second_of_the_picture_and_is_a_gap_at_the_end() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = bytearray()
    for frame in range(250):  # 10 s of pictures, no sound at all
        out += timeline.video(V0 + frame * FRAME, frame * 40_000_000)
        assert (frame * FRAME) / 90_000 - timeline.seconds() <= 1.0 + 1 / 8000
    assert timeline.take_gaps() == []  # still missing: not yet over
    out += timeline.finish()
    assert bytes(out) == b"\xd5" * 80000  # up to the end of the last picture
    (gap,) = timeline.take_gaps()
    assert gap.seconds == 10.0 and gap.ongoing_at_end


def test_a_pts_wrap_is_carried_over_and_a_clock_jump_is_not_filled() -> None:
    wrap = AudioTimeline(Codec.G711A)
    near_end = (1 << 33) - 2 * 90_000  # two seconds before the 33-bit PTS wraps
    out = bytearray()
    for frame in range(100):
        pts = (near_end + frame * FRAME) % (1 << 33)
        out += wrap.video(pts, 0)
        out += wrap.audio(pts, _tone(160)) + wrap.audio((pts + PACKET) % (1 << 33), _tone(160))
    assert bytes(out) == _tone(32000) and wrap.jumps == 0 and wrap.take_gaps() == []
    jump = AudioTimeline(Codec.G711A)
    _run(jump, 1.0)
    after = _run(jump, 1.0, start=V0 + 3600 * 90_000)  # the camera's clock set an hour on
    assert jump.jumps >= 1 and len(after) <= 8000 + 400 and jump.take_gaps() == []


def test_a_codec_without_a_raw_format_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no raw G\.711 format"):
        AudioTimeline(Codec.AAC)


def test_lost_sound_is_reported_open_at_once_and_closed_when_it_is_back() -> None:
    timeline = AudioTimeline(Codec.G711A)
    _run(timeline, 4.0, skip=(V0 + 90_000, V0 + 180_000), arrived_ns=1_000 * SECOND_NS)
    opened, closed = timeline.take_events()  # in order: the loss found, then the sound back
    assert opened == AudioGapOpened(1_001 * SECOND_NS)
    assert isinstance(closed, AudioGap) and closed.seconds == 1.0 and closed.filled_s == 1.0
    # While it lasts: open and not closed (the run goes on), then closed by finish() at the run's end.
    ongoing = AudioTimeline(Codec.G711A)
    _run(ongoing, 3.0, skip=(V0 + 90_000, V0 + 10 * 90_000))  # the lag fill: 1 s of silence
    (still,) = ongoing.take_events()
    assert isinstance(still, AudioGapOpened) and ongoing.lost
    ongoing.finish()
    (ended,) = ongoing.take_events()
    assert isinstance(ended, AudioGap) and ended.ongoing_at_end and not ongoing.lost


def test_sound_late_behind_the_lag_fill_is_a_re_base_kept_and_its_lag_followed() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = bytearray()
    audio_at = V0
    for frame in range(20 * 25):  # each 20 ms of sound muxed 1.5 s after the picture of its instant
        pts = V0 + frame * FRAME
        out += timeline.video(pts, 0)
        while audio_at + 135_000 < pts + FRAME:
            out += timeline.audio(audio_at, _tone(160))
            audio_at += PACKET
    assert timeline.dropped_samples == 0 and bytes(out).count(0x2A) == (audio_at - V0) // PACKET * 160
    assert timeline.rebases == 1 and 0.4 <= timeline.shift_s() <= 0.5 and timeline.lag_s() >= 1.4
    # Control: a repeated packet is still dropped, not a re-base.
    assert timeline.audio(audio_at - PACKET, _tone(160)) == b"" and timeline.rebases == 1
