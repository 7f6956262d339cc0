"""Review rev11d (issue 11, GB/T 28181 room sound): the G.711 timeline (edge.rooms.gb_audio) against a lossy
or hostile camera, pure. Each finding has its control beside it.

* Sound that is mostly lost in holes each under REPORT_S (0.2 s) is filled with silence and never a gap: the
  recording claims continuous sound of which most was never received.
* One audio PES whose PTS jumps a few seconds ahead (under MAX_JUMP_S) writes that much silence and then drops
  every packet the camera really sent for those seconds as "overlap": received sound discarded, the gap's
  reason (sound missing) untrue.
* Audio PES whose PTS each step a few seconds ahead make the raw sound run ahead of the picture without
  bound (hundreds of seconds of silence per second of picture): the run then ends on audio-overflow, its
  picture lost with it, at every restart.
* Audio PTS set back a few seconds (under MAX_JUMP_S) for good: every later packet is dropped as overlap of
  the lag fill's silence for the rest of the run, and no gap is reported while the run goes on. The same
  with right PTS when the camera muxes its sound more than LAG_S after the picture of the same instant:
  every packet arrives after the lag fill wrote silence in its place (control: half a second late is kept)."""

from __future__ import annotations

from collections.abc import Callable

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import AudioTimeline

FRAME = 3600  # 25 fps video at 90 kHz
PACKET = 1800  # 20 ms of G.711: 160 samples
V0 = 900_000
TONE = 0x2A


def _stream(timeline: AudioTimeline, seconds: float, *,
            keep: Callable[[int, int], bool] = lambda index, pts: True,
            audio_pts: Callable[[int, int], int] = lambda index, pts: pts) -> bytes:
    """`seconds` of a camera: a video PTS every 40 ms, a 20 ms audio packet every 20 ms; `keep` says which
    packets arrive, `audio_pts` what PTS each carries."""
    out = bytearray()
    audio_at, index = V0, 0
    for frame in range(round(seconds * 25)):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        while audio_at < pts + FRAME:
            if keep(index, audio_at):
                out += timeline.audio(audio_pts(index, audio_at), bytes([TONE]) * 160)
            audio_at += PACKET
            index += 1
    return bytes(out)


def test_sound_mostly_lost_in_short_holes_is_a_gap_not_silent_filler() -> None:
    # One 20 ms packet in ten arrives (holes of 180 ms, each under REPORT_S): 90 % of 20 s of sound missing.
    timeline = AudioTimeline(Codec.G711A)
    out = _stream(timeline, 20.0, keep=lambda index, pts: index % 10 == 0) + timeline.finish()
    filled_s = timeline.filled_samples / 8000
    assert filled_s >= 17.0 and out.count(TONE) <= 0.11 * len(out)  # the loss is real: 90 % silence
    gaps = timeline.take_gaps()
    assert sum(gap.seconds for gap in gaps) >= 0.5 * filled_s, (
        f"{filled_s:.1f} s of the camera's sound filled with silence, gaps reported: {gaps}")


def test_control_an_occasional_lost_packet_is_no_gap() -> None:
    timeline = AudioTimeline(Codec.G711A)
    _stream(timeline, 20.0, keep=lambda index, pts: index % 100 != 50)  # 1 % loss
    timeline.finish()
    assert timeline.take_gaps() == []


def test_one_pes_with_a_pts_a_few_seconds_ahead_does_not_throw_away_the_sound_received_after_it() -> None:
    # 20 s of whole sound; packet 250 (at 5 s) carries a PTS 5 s ahead (a damaged or hostile header).
    timeline = AudioTimeline(Codec.G711A)
    bad = 250
    out = _stream(timeline, 20.0, audio_pts=lambda index, pts: pts + 5 * 90_000 if index == bad else pts)
    received = (20 * 50 - 1) * 160
    assert len(out) <= 20 * 8000 + 160  # the sound still lasts as long as the picture
    kept = out.count(TONE)
    assert kept >= received - 2 * 160, (
        f"{(received - kept) / 8000:.2f} s of sound received from the camera discarded after one bad PTS "
        f"(dropped_samples={timeline.dropped_samples}, gaps={timeline.take_gaps()})")


def test_control_without_the_bad_pts_all_the_sound_is_kept() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _stream(timeline, 20.0)
    assert out.count(TONE) == 20 * 8000 and timeline.dropped_samples == 0


def test_audio_pts_stepping_ahead_cannot_run_the_sound_ahead_of_the_picture_without_bound() -> None:
    # Every audio PES's PTS 9 s after the previous one's (under MAX_JUMP_S, so each is a "hole").
    timeline = AudioTimeline(Codec.G711A)
    _stream(timeline, 2.0, audio_pts=lambda index, pts: V0 + index * 9 * 90_000)
    picture_s = 2.0
    assert timeline.seconds() <= picture_s + 10.0, (
        f"{timeline.seconds():.0f} s of raw sound (silence) written for {picture_s:g} s of picture: the "
        "audio pipe overflows (audio-overflow) and the run, its picture with it, ends")


def test_audio_pts_stepping_back_a_few_seconds_does_not_discard_the_rest_of_the_run_s_sound() -> None:
    # From 5 s on, the camera's audio PTS run 3 s behind its video's (its audio clock set back): every
    # packet then "overlaps" the silence the lag fill put in, and is dropped, for the rest of the run; the
    # silence run is never ended by real sound, so no gap is reported while the run goes on.
    timeline = AudioTimeline(Codec.G711A)
    shift = 3 * 90_000
    out = _stream(timeline, 20.0, audio_pts=lambda index, pts: pts - shift if pts >= V0 + 5 * 90_000 else pts)
    received = 20 * 8000
    kept = out.count(TONE)
    assert kept >= 0.8 * received or timeline.take_gaps(), (
        f"{(received - kept) / 8000:.1f} s of the {received / 8000:.0f} s of sound received dropped as "
        f"overlap (dropped_samples={timeline.dropped_samples}), no gap reported while the run goes on")


def _late_sound(timeline: AudioTimeline, seconds: float, late_s: float) -> bytes:
    """A camera whose PTS are right but whose muxer sends each 20 ms of sound `late_s` after the picture of
    the same instant (it buffers its sound): the stream order of many cheap encoders."""
    out = bytearray()
    audio_at = V0
    late = round(late_s * 90_000)
    for frame in range(round(seconds * 25)):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        while audio_at + late < pts + FRAME:
            out += timeline.audio(audio_at, bytes([TONE]) * 160)
            audio_at += PACKET
    return bytes(out)


def test_control_sound_muxed_half_a_second_after_its_picture_is_kept() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _late_sound(timeline, 20.0, 0.5)
    assert out.count(TONE) >= 19 * 8000 and timeline.dropped_samples == 0


def test_sound_muxed_a_second_and_a_half_after_its_picture_is_not_thrown_away() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _late_sound(timeline, 20.0, 1.5)
    kept = out.count(TONE)
    assert kept >= 0.8 * 18.5 * 8000 or timeline.take_gaps(), (
        f"{kept / 8000:.1f} s kept of 18.5 s of sound received with right PTS; "
        f"dropped_samples={timeline.dropped_samples / 8000:.1f} s, no gap reported while the run goes on")
