"""Review rev11f (issue 11, a GB camera's sound), HIGH: the new rule that the sound is never written more
than LEAD_S ahead of the picture (edge.rooms.gb_audio `_real`) takes the sound a camera sends on while its
picture stops (a video encoder's hiccup, a lossy link losing the large video PES and not the small audio
ones: the room's `video-lost` gap "while its sound went on") for a fast audio clock: what runs past the lead
is dropped (counted as clock-dropped) and the timeline shifted by as much. When the picture comes back, the
sound is written a whole LEAD_S ahead of its picture for the rest of the run (lip sync off by 1 s in the
evidence), the received sound thrown away is filled with silence and reported as an `audio-lost` gap ("the
camera's sound was missing", which it was not), and the run ends with another false second of lost sound.

Pure AudioTimeline fed as gb_feed feeds it: 25 fps video, 40 ms of sound (a distinct tone per frame) with
each frame; the picture stops for 3 s (frames 2 s .. 5 s not sent) while every audio PES comes (the timeline
before 8e98056 kept every sample, in step, no gap). Control: the
same stream with no picture stop: each frame's sound where its PTS puts it, no gap."""

from __future__ import annotations

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import SAMPLE_RATE_HZ, AudioGap, AudioTimeline

FRAME_TICKS = 3600  # 25 fps on the 90 kHz clock
PES_SAMPLES = 320  # 40 ms of G.711 per frame
FRAMES = 175  # 7 s
PICTURE_STOPPED = range(50, 125)  # 2 s .. 5 s


def _tone(frame: int) -> bytes:
    return bytes([0x20 + frame]) * PES_SAMPLES  # distinct per frame, never A-law silence (0xD5)


def _run(picture_stops: bool) -> tuple[bytes, AudioTimeline, list[AudioGap]]:
    timeline = AudioTimeline(Codec.G711A)
    out = bytearray()
    for frame in range(FRAMES):
        pts = 90000 + frame * FRAME_TICKS
        if not (picture_stops and frame in PICTURE_STOPPED):
            out += timeline.video(pts, frame * 40_000_000)
        out += timeline.audio(pts, _tone(frame))
    out += timeline.finish()
    return bytes(out), timeline, timeline.take_gaps()


def _written_at_s(sound: bytes, frame: int) -> float:
    return sound.find(_tone(frame)) / SAMPLE_RATE_HZ


def test_control_without_a_picture_stop_each_frame_s_sound_is_where_its_pts_puts_it() -> None:
    sound, timeline, gaps = _run(picture_stops=False)
    assert [_written_at_s(sound, frame) for frame in (150, 170)] == [6.0, 6.8]
    assert (gaps, timeline.dropped_samples) == ([], 0)


def test_after_a_picture_stop_the_sound_is_back_with_its_picture() -> None:
    sound, timeline, gaps = _run(picture_stops=True)
    shown = {frame: _written_at_s(sound, frame) for frame in (150, 170)}
    assert abs(shown[150] - 6.0) <= 0.1 and abs(shown[170] - 6.8) <= 0.1, (
        f"after the picture stopped for 3 s with its sound going on, the sound of 6.0 s and 6.8 s is written "
        f"at {shown[150]:.2f} s and {shown[170]:.2f} s: out of step with its picture for the rest of the run "
        f"({timeline.clock_dropped_samples / SAMPLE_RATE_HZ:.2f} s of received sound dropped as clock drift)")
    ongoing = [gap for gap in gaps if gap.ongoing_at_end]
    assert ongoing == [], (
        f"every audio PES to the run's end came, yet the run ends with sound 'missing': {ongoing}")
