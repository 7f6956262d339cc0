"""Review rev11e (issue 11, GB/T 28181 room sound), HIGH: audio PES whose PTS are a few milliseconds out of
step (two packets muxed in swapped order, or a camera stamping each packet with its capture time, jittered)
have their received sound thrown away and replaced by silence, with no audio-lost gap: the first of a
swapped pair leaves a hole of one packet that is filled with silence, and the second is then dropped whole as
"overlap" of that silence. The record claims continuous sound; the samples were received. Pure (the timeline
alone); each finding with its control beside it."""

from __future__ import annotations

import random
from collections.abc import Callable

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import AudioTimeline

FRAME = 3600  # 25 fps video at 90 kHz
PACKET = 1800  # 20 ms of G.711: 160 samples
V0 = 900_000
TONE = 0x2A

Reorder = Callable[[list[tuple[int, bytes]]], list[tuple[int, bytes]]]


def _camera(timeline: AudioTimeline, seconds: float, reorder: Reorder = lambda packets: packets) -> bytes:
    """`seconds` of a camera: a video PTS every 40 ms and, after each, the two 20 ms audio packets of that
    frame as `reorder` muxes them."""
    out = bytearray()
    for frame in range(round(seconds * 25)):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        packets = [(pts, bytes([TONE]) * 160), (pts + PACKET, bytes([TONE]) * 160)]
        for audio_pts, data in reorder(packets):
            out += timeline.audio(audio_pts, data)
    return bytes(out + timeline.finish())


def _swapped(packets: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return packets[::-1]


def _jittered(rng: random.Random, ms: int) -> Reorder:
    return lambda packets: [(pts + rng.randint(-ms * 90, ms * 90), data) for pts, data in packets]


def test_control_sound_in_step_is_all_kept() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 20.0)
    assert out.count(TONE) == 20 * 8000 and timeline.dropped_samples == 0


def test_swapped_audio_pes_are_kept_not_replaced_by_silence() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 20.0, _swapped)
    kept, gaps = out.count(TONE), timeline.take_gaps()
    silence_in_gaps = sum(gap.filled_s for gap in gaps)
    assert kept >= 20 * 8000 - 320 or silence_in_gaps >= 0.9 * timeline.filled_samples / 8000, (
        f"20.0 s of sound received, {kept / 8000:.2f} s recorded, {timeline.dropped_samples / 8000:.2f} s "
        f"dropped as overlap, {timeline.filled_samples / 8000:.2f} s of silence written in its place, "
        f"audio-lost gaps: {gaps}")


def test_control_an_occasional_jitter_of_a_sample_loses_nothing() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 60.0, _jittered(random.Random(1), 0))
    assert out.count(TONE) == 60 * 8000


def test_pts_jittered_by_5_ms_keeps_the_sound_received() -> None:
    # A camera stamping each 20 ms packet with its capture time, give or take 5 ms.
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 60.0, _jittered(random.Random(1), 5))
    kept, gaps = out.count(TONE), timeline.take_gaps()
    silence_in_gaps = sum(gap.filled_s for gap in gaps)
    assert kept >= 0.99 * 60 * 8000 or silence_in_gaps >= 0.9 * timeline.filled_samples / 8000, (
        f"60.0 s of sound received, {kept / 8000:.2f} s recorded, {timeline.dropped_samples / 8000:.2f} s "
        f"dropped, {timeline.filled_samples / 8000:.2f} s of silence in its place, gaps: {gaps}")
