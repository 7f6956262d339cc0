"""Review rev11e (issue 11, GB/T 28181 room sound), MEDIUM: the raw sound runs ahead of the picture without
bound when it comes with no hole in its PTS, although gb_audio's design says it never does ("a hole is filled
only up to the latest video PTS plus lag_s ... so the raw sound never runs ahead of the picture"): the limit
is applied to holes only.

* A camera whose audio clock runs at 8050 Hz while it stamps its packets by their sample count (a common
  cheap IPC: 0.6 % fast): the sound gains 3.75 s on the picture every 10 minutes (22.5 s an hour), so the
  recording's lips and voice part further each minute; in the feed that is sound ffmpeg does not take (it
  interleaves by time): by the sizes (64 KiB pipe + 160 000 bytes queued, filling at 50 bytes/s) the run
  would end on audio-overflow after about 75 minutes, and every 75 minutes after it (a picture gap each
  time); computed, not run here.
* A camera that sends each 200 ms audio PES twice (a retransmitting muxer): every copy is taken as a "re-base"
  (over REBASE_S of overlap) and written again: the recording holds the sound twice, 40 s of sound for 20 s
  of picture, and nothing on the record says so.

Controls: an 8000 Hz camera, and the same 200 ms PES sent once, stay with the picture."""

from __future__ import annotations

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import LAG_S, AudioTimeline

FRAME = 3600  # 25 fps video at 90 kHz
V0 = 900_000
TONE = 0x2A


def _camera(timeline: AudioTimeline, seconds: float, *, rate_hz: int = 8000, packet: int = 160,
            copies: int = 1) -> bytes:
    """`seconds` of picture (a PTS every 40 ms); the sound `packet` samples a PES as the audio clock makes it
    (`rate_hz` real), each stamped by its sample count (PTS = samples * 90000 / 8000), sent `copies` times."""
    out = bytearray()
    made = 0  # samples the audio clock made so far
    for frame in range(round(seconds * 25)):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        while made * 90_000 < (frame + 1) * FRAME * rate_hz:  # made by the end of this frame
            for _ in range(copies):
                out += timeline.audio(V0 + made * 90_000 // 8000, bytes([TONE]) * packet)
            made += packet
    return bytes(out)


def _ahead_s(timeline: AudioTimeline, out: bytes, seconds: float) -> float:
    return len(out) / 8000 - seconds


def test_control_a_true_8000_hz_camera_stays_with_the_picture() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 600.0)
    assert abs(_ahead_s(timeline, out, 600.0)) <= 0.05


def test_an_audio_clock_0_6_percent_fast_does_not_run_ahead_of_the_picture() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 600.0, rate_hz=8050)
    ahead = _ahead_s(timeline, out, 600.0)
    assert ahead <= LAG_S, (
        f"after 10 minutes the raw sound is {ahead:.2f} s ahead of the picture (jumps={timeline.jumps}, "
        f"rebases={timeline.rebases}, dropped={timeline.dropped_samples}): it grows by 0.6 % of the session")


def test_control_200_ms_pes_sent_once_stay_with_the_picture() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 20.0, packet=1600)
    assert abs(_ahead_s(timeline, out, 20.0)) <= 0.25 and out.count(TONE) == len(out)


def test_each_200_ms_pes_sent_twice_is_recorded_once() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 20.0, packet=1600, copies=2)
    ahead = _ahead_s(timeline, out, 20.0)
    assert ahead <= LAG_S, (
        f"20 s of picture, {len(out) / 8000:.1f} s of sound written ({timeline.rebases} re-bases, shift "
        f"{timeline.shift_s():.1f} s): every repeated PES recorded a second time")
