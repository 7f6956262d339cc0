"""The GB camera's sound's lead on the picture judged on the stream's clock (edge.rooms.gb_audio), pure: a
run whose sound is missing at first (the lag fill keeps it a second behind) and then comes in step drops
none of it as clock drift, while a fast audio clock after the same start is still dropped back to the
picture (the control: the rule can cut); a hole in the sound while the picture has stopped is silence of
its length, not a jump, and the sound after it stays in step."""

from __future__ import annotations

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import SAMPLE_RATE_HZ, AudioTimeline

FRAME_TICKS = 3600
PES_SAMPLES = 320


def _tone(frame: int) -> bytes:
    return bytes([0x20 + frame % 0x80]) * PES_SAMPLES


def _run(*, frames: int, rate_hz: int = 8000, sound_missing: range = range(0),
         picture_stopped: range = range(0)) -> tuple[bytes, AudioTimeline]:
    """25 fps; with each frame the sound its clock made (`rate_hz`, stamped by its sample count)."""
    timeline = AudioTimeline(Codec.G711A)
    out = bytearray()
    made = 0
    for frame in range(frames):
        pts = 90000 + frame * FRAME_TICKS
        if frame not in picture_stopped:
            out += timeline.video(pts, frame * 40_000_000)
        while made * 90_000 < (frame + 1) * FRAME_TICKS * rate_hz:
            if frame not in sound_missing:
                out += timeline.audio(90000 + made * 90_000 // 8000, _tone(frame))
            made += PES_SAMPLES
    out += timeline.finish()
    return bytes(out), timeline


def _written_at(sound: bytes, frame: int, seconds: float) -> bool:
    """The sound of `frame` (and not its neighbours') is at `seconds` of the raw stream."""
    at = round(seconds * SAMPLE_RATE_HZ)
    return sound[at:at + PES_SAMPLES] == _tone(frame) != _tone(frame - 1)


def test_sound_missing_at_first_then_in_step_drops_none_as_clock_drift() -> None:
    sound, timeline = _run(frames=500, sound_missing=range(10, 60))
    assert timeline.clock_dropped_samples == 0 and timeline.dropped_samples == 0
    assert _written_at(sound, 400, 16.0)  # where its PTS puts it
    assert [gap.ongoing_at_end for gap in timeline.take_gaps()] == [False]  # the one missing stretch


def test_control_a_fast_clock_after_the_same_start_is_dropped_back_to_the_picture() -> None:
    sound, timeline = _run(frames=25 * 120, rate_hz=8050, sound_missing=range(10, 60))
    assert timeline.clock_dropped_samples > 0.5 * 120 * 50  # most of what the fast clock made in excess
    assert len(sound) / SAMPLE_RATE_HZ - 120.0 <= 0.3


def test_a_hole_in_the_sound_while_the_picture_stopped_is_silence_and_the_sound_stays_in_step() -> None:
    sound, timeline = _run(frames=175, picture_stopped=range(50, 125), sound_missing=range(80, 85))
    assert timeline.jumps == 0 and timeline.filled_samples == 5 * PES_SAMPLES
    assert _written_at(sound, 150, 6.0) and _written_at(sound, 170, 6.8)
