"""The GB camera's sound put in PTS order and kept with the picture (edge.rooms.gb_audio), pure: a hole after
sound waits a short, bounded time for PES muxed late (two swapped PES lose nothing; a lost one is silence
once the sound has gone on REORDER_S past it; never more than MAX_HELD PES held; the run's end writes what is
held); a PES sent twice is dropped once, counted (control: the same payload at another PTS is sound); an
audio clock off 8000 Hz stamped by the time or by its sample count keeps the sound with the picture, what
it dropped counted; half the packets lost is lost sound (control: a quarter is not)."""

from __future__ import annotations

from collections.abc import Callable

from drivers.gb28181.ps import Codec
from edge.rooms.gb_audio import LEAD_S, MAX_HELD, REORDER_S, AudioTimeline

FRAME = 3600  # 25 fps video at 90 kHz
PACKET = 1800  # 20 ms of G.711: 160 samples
V0 = 900_000
TONE = 0x2A
SILENCE = 0xD5

Packets = Callable[[int, int], list[tuple[int, bytes]]]


def _tone(count: int = 160) -> bytes:
    return bytes([TONE]) * count


def _pair(frame: int, pts: int) -> list[tuple[int, bytes]]:
    return [(pts, _tone()), (pts + PACKET, _tone())]


def _camera(timeline: AudioTimeline, seconds: float, packets: Packets = _pair) -> bytes:
    out = bytearray()
    for frame in range(round(seconds * 25)):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        for audio_pts, data in packets(frame, pts):
            out += timeline.audio(audio_pts, data)
    return bytes(out)


def test_a_lost_packet_is_silence_once_the_sound_went_on_past_it_and_a_swapped_one_is_not() -> None:
    timeline = AudioTimeline(Codec.G711A)
    _camera(timeline, 2.0)
    # Packet at 2.02 s never comes: the hole waits while REORDER_S of the sound after it comes, no longer.
    pts = V0 + 2 * 90_000
    assert timeline.audio(pts, _tone()) == _tone()
    after, waited, written = pts + 2 * PACKET, 0, b""
    while not written:
        written = timeline.audio(after, _tone())
        after += PACKET
        waited += 160
    assert REORDER_S * 8000 <= waited <= REORDER_S * 8000 + 320
    assert written == bytes([SILENCE]) * 160 + _tone(waited) and timeline.filled_samples == 160
    # Control: the same hole filled by its packet muxed late is written in order, no silence.
    swapped = AudioTimeline(Codec.G711A)
    _camera(swapped, 2.0)
    out = swapped.audio(pts, _tone()) + swapped.audio(pts + 2 * PACKET, _tone())
    out += swapped.audio(pts + PACKET, bytes([0x01]) * 160)
    assert out == _tone() + bytes([0x01]) * 160 + _tone() and swapped.filled_samples == 0
    assert swapped.reordered == 1


def test_no_more_than_max_held_pes_wait_and_the_run_s_end_writes_them() -> None:
    timeline = AudioTimeline(Codec.G711A, reorder_s=10.0)  # only the count bounds it here
    _camera(timeline, 1.0)
    at = V0 + 90_000 + PACKET  # 20 ms missing after 1 s of sound
    held = 0
    for _ in range(3 * MAX_HELD):
        if timeline.audio(at, _tone(8)):  # 1 ms PES: the hole waits on the count, not on REORDER_S
            break
        held += 1
        at += 90
    assert held == MAX_HELD - 1
    late = AudioTimeline(Codec.G711A)
    _camera(late, 1.0)
    assert late.audio(V0 + 90_000 + PACKET, _tone()) == b""  # held ...
    tail = late.finish()  # ... the run ends: written after the silence of its hole
    assert tail[:160] == bytes([SILENCE]) * 160 and tail[160:320] == _tone()


def test_a_pes_sent_twice_is_dropped_once_and_counted() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 10.0, lambda frame, pts: _pair(frame, pts) + _pair(frame, pts)[1:])
    assert out == _tone(80_000) and timeline.duplicates == 250 and timeline.dropped_samples == 250 * 160
    assert timeline.rebases == 0
    # Control: the same payload at the next PTS is more sound, not a repeat (a camera sending steady tone).
    steady = AudioTimeline(Codec.G711A)
    assert _camera(steady, 10.0) == _tone(80_000) and steady.duplicates == 0


def _clock(rate_hz: int, *, stamped_by_time: bool) -> Packets:
    """A camera whose audio clock makes `rate_hz` samples a second: each 160-sample PES stamped by the time
    it was made or by its sample count (as if 8000 Hz)."""
    made = [0]

    def packets(frame: int, pts: int) -> list[tuple[int, bytes]]:
        out = []
        while made[0] * 90_000 < (frame + 1) * FRAME * rate_hz:
            at = made[0] * 90_000 // rate_hz if stamped_by_time else made[0] * 90_000 // 8000
            out.append((V0 + at, _tone()))
            made[0] += 160
        return out
    return packets


def test_a_fast_audio_clock_stamped_by_the_time_keeps_with_the_picture_its_drops_counted() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = _camera(timeline, 300.0, _clock(8050, stamped_by_time=True))
    assert abs(len(out) / 8000 - 300.0) <= 0.1
    received = 300 * 8050
    assert 0.9 * (received - 300 * 8000) <= timeline.clock_dropped_samples <= 1.1 * (received - 300 * 8000)
    assert timeline.clock_dropped_samples == timeline.dropped_samples
    assert 0.005 <= timeline.dropped_share() <= 0.007
    assert timeline.filled_samples == 0 and timeline.take_gaps() == []
    # Control: a true 8000 Hz clock stamped by the time drops nothing.
    true = AudioTimeline(Codec.G711A)
    assert _camera(true, 300.0, _clock(8000, stamped_by_time=True)) == _tone(300 * 8000)
    assert true.dropped_samples == 0 and true.dropped_share() == 0.0


def test_a_fast_audio_clock_stamped_by_its_sample_count_stays_within_the_lead() -> None:
    timeline = AudioTimeline(Codec.G711A)
    out = bytearray()
    packets = _clock(8050, stamped_by_time=False)
    for frame in range(300 * 25):
        pts = V0 + frame * FRAME
        out += timeline.video(pts, frame * 40_000_000)
        for audio_pts, data in packets(frame, pts):
            out += timeline.audio(audio_pts, data)
        assert len(out) / 8000 <= (pts - V0) / 90_000 + LEAD_S + 1 / 8000
    assert timeline.clock_dropped_samples >= 300 * 50 - 2 * LEAD_S * 8000 and timeline.take_gaps() == []


def test_half_the_packets_lost_is_lost_sound_and_a_quarter_is_not() -> None:
    half = AudioTimeline(Codec.G711A)
    _camera(half, 10.0, lambda frame, pts: _pair(frame, pts)[:1])
    half.finish()
    (gap,) = half.take_gaps()
    assert gap.seconds >= 9.0 and gap.filled_s == 5.0
    quarter = AudioTimeline(Codec.G711A)
    _camera(quarter, 10.0, lambda frame, pts: _pair(frame, pts)[:1] if frame % 2 else _pair(frame, pts))
    quarter.finish()
    assert quarter.take_gaps() == [] and quarter.filled_samples == 20_000


def test_a_slow_audio_clock_s_corrections_do_not_hold_a_gap_open_after_the_sound_is_back() -> None:
    # 7920 Hz stamped by the time: a few samples of silence now and then (every 0.2 s) keep it with the
    # picture; a second of its sound lost at 10 s is one gap of that second, closed once the sound is back
    # (not held open to the run's end by the corrections).
    timeline = AudioTimeline(Codec.G711A)
    made = _clock(7920, stamped_by_time=True)

    def packets(frame: int, pts: int) -> list[tuple[int, bytes]]:
        sent = made(frame, pts)
        return [] if 250 <= frame < 275 else sent

    out = _camera(timeline, 60.0, packets) + timeline.finish()
    assert abs(len(out) / 8000 - 60.0) <= 0.1
    (gap,) = timeline.take_gaps()
    assert 0.95 <= gap.seconds <= 1.1 and not gap.ongoing_at_end
