"""The sound of a GB/T 28181 camera as a raw G.711 stream aligned with its video: pure, no I/O, bounded.

The room's ffmpeg reads the camera's program stream (its video) and, beside it, the raw G.711 the agent
writes (``-f alaw|mulaw -ar 8000 -ac 1``). A raw stream has no timestamps: its samples are its clock. So
:class:`AudioTimeline` writes sample 0 at the first video PTS of the run (ffmpeg's time 0 of the video
input, whose audio the agent took out) and every later sample where its PTS puts it:

* audio before the first video frame is dropped; audio that starts after it is preceded by silence;
* audio PES are written in PTS order: a hole right after real sound is held open (the PES after it kept)
  until sound muxed late fills it, or `reorder_s` of sound came after it (or MAX_HELD PES wait, or the
  lag fill or the run's end reaches it): only then is it a hole (two PES swapped lose nothing; `reordered`
  counts PES that came after one their PTS puts after them);
* a PES whose PTS is off where the sound is by less than half its own length (at most JITTER_S: a camera
  stamping each packet with its capture time) is written right there, neither a hole nor an overlap; the
  mean of those offsets is followed, and once it is more than DRIFT_SAMPLES (an audio clock not at 8000 Hz
  stamped by the time) that many samples are dropped (counted in `clock_dropped_samples`) or filled;
* a PES with the PTS and payload of one taken already (a muxer sending it twice) is dropped whole
  (`duplicates`), never written again nor taken for a PTS set back;
* a hole in the audio PTS (packets lost, a camera that stopped sending its sound) is filled with silence
  of exactly its length (A-law 0xD5, µ-law 0xFF), never by stretching what came;
* the sound never falls more than `lag_s` behind the picture: while no audio comes, silence is written up
  to the latest video PTS less `lag_s` (ffmpeg interleaves by time: sound that never comes would hold up
  the picture, and a camera that declares audio and sends none would never record);
* sound received is never thrown away for silence written before it: audio that comes after the lag
  fill put silence in its place (a camera that muxes its sound more than `lag_s` after its picture) is
  written where the sound is now, and the timeline follows that lag from then on (a *re-base*: the
  audio's PTS shifted by it, counted in `rebases`, the shift in `shift_s`; the lag allowed grows with
  it, up to `max_lag_s`, so that the fill does not overtake it again); a PTS set back for good (more
  than `rebase_s` into sound already written) is a re-base too. Only a small overlap of real sound (a
  PTS going back a little) has its overlapping samples dropped. `dropped_samples` counts all received
  sound not written, whatever the cause (`dropped_share()` its share);
* a hole is filled only up to the latest video PTS plus `lead_s` (or, while the picture has stopped and
  the sound goes on, up to where the sound is plus `lead_s`): an audio PTS further ahead (a damaged or
  hostile PES header, an audio clock set on) is a jump, not a hole: the sound goes on where it is (re-based,
  counted in `jumps`);
* the sound's lead on the picture is judged on the stream's clock, never on a picture that stopped: it is
  measured as each video frame comes while the picture flows (a video PTS step up to STALL_S; none across
  a picture stop), taken at its least over each DRIFT_WINDOW_S of flowing picture in which the sound
  flowed too (no silence filled, re-base or jump in it). The first such window's least is the run's lead
  (at most `lead_s`: a camera muxing its sound early; never below 0: late sound is the lag's business);
  a later window's least more than DRIFT_LEAD_S past it is a sustained rate difference (an audio clock
  faster than the picture's stamped by its sample count, 8050 Hz for 8000): the excess is dropped from
  the start of the sound to come (counted in `clock_dropped_samples`, the PTS after it shifted by as
  much), so the raw sound stays with the picture (ffmpeg, interleaving by time, would leave it in the
  pipe). While the picture has stopped, the sound received goes on where its PTS puts it, nothing
  dropped (the feed's pipe and its audio-overflow bound what waits): when the picture comes back, the
  sound is in step with it;
* a video timestamp jump of more than `max_jump_s` (a device's clock set, a PTS wrap taken care of
  apart) is no hole to fill: ffmpeg itself re-bases the video there (its dts_delta_threshold for PS
  inputs, 10 s), so the audio goes on where it is (counted in `jumps`).

Loss is a gap in the record like video loss. The sound is judged lost (an :class:`AudioGapOpened` as soon
as it is) from the first silence of a run of silence `report_s` long, or of a window of `window_s` of
sound at least half filled with silence (many short holes: a camera losing half its packets or more); it
is found again (an :class:`AudioGap`, closed, with the silence within it) at the first real sound after
which `recover_s` of sound comes with no silence in it. Station times are mapped from the PTS by the
latest video frame's arrival. A short hole (a lost packet) is filled and counted (`filled_samples`) only.
`finish()` (the run's end, or the session's stop) closes a gap still open (`ongoing_at_end`).
"""

from __future__ import annotations

import bisect
import zlib
from collections import deque
from dataclasses import dataclass

from drivers.gb28181.ps import Codec

SAMPLE_RATE_HZ = 8000
CLOCK_HZ = 90_000
PTS_MODULUS = 1 << 33
SILENCE = {Codec.G711A: 0xD5, Codec.G711U: 0xFF}
FFMPEG_FORMATS = {Codec.G711A: "alaw", Codec.G711U: "mulaw"}
REPORT_S = 0.2  # a silence run this long is lost sound (10 G.711 packets of 20 ms); shorter ones are counted
WINDOW_S = 1.0  # ... and so is a window of this much sound more than half silence (many short holes)
RECOVER_S = 0.5  # the sound is found again once this much of it came with no silence in it
LAG_S = 1.0  # the sound is kept at most this far behind the picture (at first: see MAX_LAG_S)
MAX_LAG_S = 5.0  # the most the lag allowed grows to follow a camera that muxes its sound late
LAG_MARGIN_S = 0.5  # the lag allowed, beyond a late camera's measured lag
REBASE_S = 0.1  # real sound written over by more than this is a PTS set back: a re-base, not a repeat
MAX_JUMP_S = 10.0  # ffmpeg's dts_delta_threshold: a larger jump is a re-based clock, not a hole
LEAD_S = 1.0  # the most the sound's steady lead on the flowing picture may be (and a hole's reach past it)
STALL_S = 0.5  # a video PTS step larger than this is a picture stop: the lead is not measured across it ...
STALL_SAMPLES = round(STALL_S * SAMPLE_RATE_HZ)  # ... and this much sound since the last frame is one too
DRIFT_WINDOW_S = 5.0  # the lead as each frame comes is taken at its least over this much flowing picture
DRIFT_LEAD_S = 0.1  # a window's least lead this far past the run's is a fast audio clock's, dropped
REORDER_S = 0.2  # a hole after real sound waits this much of the sound after it for PES muxed late ...
MAX_HELD = 16  # ... and at most this many PES
JITTER_S = 0.04  # a PES this close (and under half its length) to where the sound is: written there
JITTER_SAMPLES = round(JITTER_S * SAMPLE_RATE_HZ)
PHASE_PES = 16  # the PTS's mean offset from the written sound: averaged over about this many PES
DRIFT_SAMPLES = 16  # ... and corrected (samples dropped or silence) once it is more than this (2 ms)
RECENT_PES = 32  # PES remembered to know one sent twice
DEFAULT_FRAME_TICKS = 3600  # 25 fps, until two video PTS give the stream's own step


@dataclass(frozen=True)
class AudioGapOpened:
    """The camera's sound is lost from `from_ns` (station time) while its picture goes on."""

    from_ns: int


@dataclass(frozen=True)
class AudioGap:
    """Sound lost (closed): station times, its length and the silence put in it, in seconds."""

    from_ns: int
    to_ns: int
    seconds: float
    ongoing_at_end: bool = False  # the run ended while the sound was missing
    silence_s: float | None = None  # the silence within it (None: all of it)

    @property
    def filled_s(self) -> float:
        return self.seconds if self.silence_s is None else self.silence_s


AudioGapEvent = AudioGapOpened | AudioGap


class AudioTimeline:
    """See the module docstring. `video()` and `audio()` return the bytes to write to the raw pipe."""

    def __init__(self, codec: Codec, *, report_s: float = REPORT_S, lag_s: float = LAG_S,
                 max_jump_s: float = MAX_JUMP_S, window_s: float = WINDOW_S,
                 recover_s: float = RECOVER_S, max_lag_s: float = MAX_LAG_S, lead_s: float = LEAD_S,
                 reorder_s: float = REORDER_S) -> None:
        if codec not in SILENCE:
            raise ValueError(f"no raw G.711 format for {codec}")
        self.codec = codec
        self._silence = SILENCE[codec]
        self._report_samples = round(report_s * SAMPLE_RATE_HZ)
        self._window_samples = max(1, round(window_s * SAMPLE_RATE_HZ))
        self._recover_samples = round(recover_s * SAMPLE_RATE_HZ)
        self._lag_ticks = round(lag_s * CLOCK_HZ)
        self._max_lag_ticks = max(self._lag_ticks, round(max_lag_s * CLOCK_HZ))
        self._lead_ticks = round(lead_s * CLOCK_HZ)
        self._max_jump_ticks = round(max_jump_s * CLOCK_HZ)
        self._rebase_samples = round(REBASE_S * SAMPLE_RATE_HZ)
        self._reorder_samples = round(reorder_s * SAMPLE_RATE_HZ)
        self._lead_samples = round(lead_s * SAMPLE_RATE_HZ)
        self._stall_ticks = round(STALL_S * CLOCK_HZ)
        self._drift_window_ticks = round(DRIFT_WINDOW_S * CLOCK_HZ)
        self._drift_lead_samples = round(DRIFT_LEAD_S * SAMPLE_RATE_HZ)
        self._last_raw: int | None = None  # the last PTS seen (either stream: one clock), as carried
        self._last_unwrapped = 0
        self._origin: int | None = None  # the first video PTS (unwrapped): sample 0
        self._offset = 0  # ticks added to every PTS after a re-based video jump (as ffmpeg does)
        self._shift = 0  # samples added to every audio position after a re-base of the sound alone
        self._video_at: int | None = None  # the latest video PTS, ticks from the origin
        self._video_arrived_ns = 0
        self._frame_ticks = DEFAULT_FRAME_TICKS
        self._real_since_video = 0  # real sound written since the latest video frame (a picture stop)
        self._lead_base: int | None = None  # the run's lead on the flowing picture (samples)
        self._lead_least: int | None = None  # the least lead in the current window ...
        self._lead_window = 0  # ... and the flowing picture (ticks) it spans
        self._lead_cut = 0  # samples of a fast clock's excess still to drop from the sound to come
        self._window_marks = (0, 0, 0)  # `_marks()` as the window began
        self.samples = 0  # samples written (the raw stream's clock)
        self._real_end = 0  # the end of the last real sound written
        self._real_written = False
        self._phase = 0.0  # the PTS's mean offset from where the sound is written, in samples (jitter out)
        self._held: list[tuple[int, int, bytes]] = []  # (position less the shift, arrival, data) by position
        self._arrivals = 0
        self._recent: deque[tuple[int, int, int]] = deque(maxlen=RECENT_PES)  # (PTS, length, CRC-32)
        self._silence_from: int | None = None  # the sample where the current run of silence began
        self._window_from = 0  # the current window of sound and the silence in it
        self._window_filled = 0
        self._window_first_fill: int | None = None
        self._lost_from: int | None = None  # the sound is lost from this sample (a gap open)
        self._lost_filled = 0  # silence written since
        self._found_from: int | None = None  # real sound with no silence since this sample (within a gap)
        self._closed_at = 0  # where the last gap closed (the next begins no earlier)
        self._events: list[AudioGapEvent] = []  # reported, not yet taken (take_events)
        self.frames = 0
        self.real_samples = 0  # received sound written
        self.filled_samples = 0
        self.dropped_samples = 0  # received sound not written, whatever the cause (the ones below too)
        self.duplicates = 0  # PES dropped whole: the same PTS and payload as one taken already
        self.clock_dropped_samples = 0  # dropped to keep a drifting audio clock with the picture
        self.reordered = 0  # PES that came after one their PTS puts after them (written in PTS order)
        self.jumps = 0
        self.rebases = 0

    @property
    def started(self) -> bool:
        return self._origin is not None

    @property
    def lost(self) -> bool:
        """The sound is lost now (a gap open)."""
        return self._lost_from is not None

    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE_HZ

    def shift_s(self) -> float:
        """How far the sound is written from where its PTS put it (its re-bases), in seconds."""
        return self._shift / SAMPLE_RATE_HZ

    def lag_s(self) -> float:
        """How far behind the picture the sound may fall now."""
        return self._lag_ticks / CLOCK_HZ

    def dropped_share(self) -> float:
        """The share of the sound received that was not written (0 with none received)."""
        received = self.real_samples + self.dropped_samples
        return self.dropped_samples / received if received else 0.0

    def take_events(self) -> list[AudioGapEvent]:
        """Gaps opened and closed since the last call, in order."""
        events, self._events = self._events, []
        return events

    def take_gaps(self) -> list[AudioGap]:
        """The gaps closed since the last call (those opened are dropped)."""
        return [event for event in self.take_events() if isinstance(event, AudioGap)]

    # -- input ---------------------------------------------------------------------------------------------

    def video(self, pts: int, arrived_ns: int) -> bytes:
        """A video PES's PTS: the first one is sample 0; each keeps the sound within the lag allowed."""
        at = self._unwrap(pts)
        if self._origin is None:
            self._origin = at
        at = at - self._origin + self._offset
        if self._video_at is not None:
            step = at - self._video_at
            if abs(step) > self._max_jump_ticks:
                # ffmpeg re-bases the video here (the next frame follows the last): so does the timeline.
                self._offset -= step - self._frame_ticks
                at = self._video_at + self._frame_ticks
                self.jumps += 1
            elif step > 0:
                self._frame_ticks = step
        flowing = self._video_at is not None and 0 < at - self._video_at <= self._stall_ticks
        if flowing:
            assert self._video_at is not None
            self._measure_lead(at, at - self._video_at)
        self._video_at = max(at, self._video_at or at)
        self._video_arrived_ns = arrived_ns
        self._real_since_video = 0
        behind = self._samples_at(self._video_at - self._lag_ticks)
        if behind <= self.samples:
            return b""
        out = bytearray()
        self._drain(out, force=True)  # a hole still waiting for its sound is given up first
        if behind > self.samples:
            out += self._fill(behind - self.samples)
        return bytes(out)

    def audio(self, pts: int | None, data: bytes) -> bytes:
        """An audio frame (its PES's PTS, None: right after the previous one) as bytes to write (sound
        held to be put in PTS order comes out of a later call)."""
        if self._origin is None or self._video_at is None or not data:
            self.dropped_samples += len(data)
            return b""
        self.frames += 1
        if pts is not None:
            fingerprint = (pts, len(data), zlib.crc32(data))
            if fingerprint in self._recent:  # a PES sent twice: not more sound, nor a PTS set back
                self.duplicates += 1
                self.dropped_samples += len(data)
                return b""
            self._recent.append(fingerprint)
        if pts is None:
            start = self._held_end() if self._held else self.samples
        else:
            start = self._samples_at(self._unwrap(pts) - self._origin + self._offset) + self._shift
        out = bytearray()
        if self._held or (self._off_step(start, data) > 0 and self._may_hold(start)):
            # A hole right after real sound, short enough for its sound to come still (PES muxed out of
            # order): held, written in PTS order once it is filled or given up.
            self._arrivals += 1
            held = (start - self._shift, self._arrivals, data)
            if self._held and held < self._held[-1]:
                self.reordered += 1  # it came after sound its PTS puts after it
            bisect.insort(self._held, held)
        else:
            self._place(start, data, out)
        self._drain(out)
        return bytes(out)

    def finish(self) -> bytes:
        """The run ended (or the session stopped): the sound held written, then filled up to the end of the
        last video frame; a gap still open is closed there (`ongoing_at_end`)."""
        if self._video_at is None:
            return b""
        out = bytearray()
        self._drain(out, force=True)
        end = self._samples_at(self._video_at + self._frame_ticks)
        if end > self.samples:
            out += self._fill(end - self.samples)
        self._window_end()
        if self._lost_from is not None:
            self._close(self.samples, ongoing=True)
        self._silence_from = None
        return bytes(out)

    # -- placing the sound ---------------------------------------------------------------------------------

    @staticmethod
    def _jitter(count: int) -> int:
        """How far (samples) a PES of `count` samples may start from where the sound is and be written
        right there: under half its own length (more is a hole or an overlap), at most JITTER_S (one
        sample of rounding always)."""
        return max(1, min((count - 1) // 2, JITTER_SAMPLES))

    def _off_step(self, start: int, data: bytes) -> int:
        """How far `start` is from where the sound is (its mean jitter aside), beyond the jitter allowed:
        > 0 a hole, < 0 an overlap, 0 on time."""
        off = start - self.samples - round(self._phase)
        allowed = self._jitter(len(data))
        return off - allowed if off > allowed else off + allowed if off < -allowed else 0

    def _may_hold(self, start: int) -> bool:
        """A hole at `start` may wait for the sound muxed late: it follows real sound, and is no jump."""
        return (self._real_written and self._real_end == self.samples
                and not self._is_jump(start))

    def _is_jump(self, start: int) -> bool:
        """A PTS further ahead than the picture allows, or than a clock jump: not a hole to fill."""
        assert self._video_at is not None
        reach = self._samples_at(self._video_at + self._lead_ticks)
        if self._real_since_video >= STALL_SAMPLES:  # the picture stopped, the sound goes on: its own clock
            reach = max(reach, self.samples + self._lead_samples)
        return start > reach or start - self.samples > self._samples_at(self._max_jump_ticks)

    def _held_end(self) -> int:
        position, _, data = self._held[-1]
        return position + self._shift + len(data)

    def _drain(self, out: bytearray, *, force: bool = False) -> None:
        """Sound held written in PTS order: what fills the hole and follows; the hole itself given up
        (silence) once REORDER_S of sound came after it, MAX_HELD PES wait, or `force`."""
        while self._held:
            position, _, data = self._held[0]
            start = position + self._shift
            if self._off_step(start, data) > 0 and not force and len(self._held) < MAX_HELD \
                    and self._held_end() - self.samples <= self._reorder_samples:
                return
            self._held.pop(0)
            self._place(start, data, out)

    def _place(self, start: int, data: bytes, out: bytearray) -> None:
        """Audio starting at `start`, written at the end of what is written."""
        step = self._off_step(start, data)
        if step == 0:  # on time, give or take jitter: written where the sound is
            offset = start - self.samples
            self._phase += (offset - self._phase) / PHASE_PES
            if abs(self._phase) > DRIFT_SAMPLES:
                # The PTS steadily off where the sound is written (an audio clock not at 8000 Hz, stamped
                # by the time): the difference dropped from the sound, or filled with silence.
                correction = round(self._phase)
                if correction < 0:
                    cut = min(-correction, len(data))
                    data = data[cut:]
                    self.dropped_samples += cut
                    self.clock_dropped_samples += cut
                    self._phase += cut
                else:
                    out += self._fill(correction, drift=True)
                    self._phase -= correction
        elif step > 0:
            if self._is_jump(start):
                # A PTS far ahead of the picture: a jump, the sound goes on where it is.
                self._shift -= start - self.samples
                self._phase = 0.0
                self.jumps += 1
            else:
                out += self._fill(start - self.samples)  # a hole: silence of its exact length
        else:
            data = self._overlap(start, data)
        if data:
            out += self._real(data)

    def _overlap(self, start: int, data: bytes) -> bytes:
        """Audio starting at `start`, before what is written: what is left of `data` to write."""
        over_real = max(0, self._real_end - start)
        if over_real <= self._rebase_samples:
            # A PTS back a little (a repeat is dropped before): the samples of it already written go.
            dropped = min(over_real, len(data))
            self.dropped_samples += dropped
            data, start = data[dropped:], start + dropped
            if not data:
                return b""
        if start < self.samples:
            # Behind what is written (silence the lag fill put in its place, or a PTS set back for good):
            # the sound goes on where it is, and the lag it came with is allowed from here on.
            self._shift += self.samples - start
            self._phase = 0.0
            self.rebases += 1
            lateness = (self._video_at or 0) - self._ticks(self.samples)
            wanted = lateness + round(LAG_MARGIN_S * CLOCK_HZ)
            self._lag_ticks = min(self._max_lag_ticks, max(self._lag_ticks, wanted))
        return data

    def _real(self, data: bytes) -> bytes:
        """Real sound written at the end, less a fast audio clock's excess still to drop (from its start:
        the sound after it follows on, its PTS shifted by as much)."""
        if self._lead_cut > 0:
            cut = min(self._lead_cut, len(data))
            data = data[cut:]
            self._lead_cut -= cut
            self._shift -= cut
            self.dropped_samples += cut
            self.clock_dropped_samples += cut
            if not data:
                return b""
        self._real_since_video += len(data)
        self._write_real(len(data))
        return data

    def _measure_lead(self, video_at: int, step: int) -> None:
        """The picture flows (a frame at `video_at`, `step` after the last): the sound's lead on it taken,
        and a window's least lead beyond the run's (a sustained rate difference) set to be dropped. Only a
        window in which the sound flowed too counts: none with silence filled (sound lost, or late: the lag
        fill), a re-base or a jump in it, nor a lead behind the picture (the lag's business, not a fast
        clock's)."""
        lead = self.samples - self._samples_at(video_at)
        self._lead_least = lead if self._lead_least is None else min(self._lead_least, lead)
        self._lead_window += step
        if self._lead_window < self._drift_window_ticks:
            return
        least, self._lead_least, self._lead_window = self._lead_least, None, 0
        marks, self._window_marks = self._window_marks, self._marks()
        if marks != self._window_marks:
            return
        if self._lead_base is None:
            self._lead_base = min(max(least, 0), self._lead_samples)
        elif least - self._lead_base > self._drift_lead_samples:
            self._lead_cut = least - self._lead_base

    def _marks(self) -> tuple[int, int, int]:
        """What changes when the sound does not flow: silence filled, re-bases, jumps."""
        return self.filled_samples, self.rebases, self.jumps

    def _unwrap(self, pts: int) -> int:
        """`pts` on a line that does not wrap at 2**33 (26.5 hours), nearest to the last one seen."""
        if self._last_raw is None:
            self._last_raw, self._last_unwrapped = pts, pts
            return pts
        step = (pts - self._last_raw + PTS_MODULUS // 2) % PTS_MODULUS - PTS_MODULUS // 2
        self._last_raw = pts
        self._last_unwrapped += step
        return self._last_unwrapped

    @staticmethod
    def _samples_at(ticks: int) -> int:
        return round(ticks * SAMPLE_RATE_HZ / CLOCK_HZ)

    @staticmethod
    def _ticks(samples: int) -> int:
        return round(samples * CLOCK_HZ / SAMPLE_RATE_HZ)

    def _fill(self, count: int, *, drift: bool = False) -> bytes:
        """`count` samples of silence written at the end (`drift`: a slow audio clock's correction, a few
        samples between pieces of sound received whole: no loss, so the sound found again stays found)."""
        if count <= 0:
            return b""
        if self._silence_from is None:
            self._silence_from = self.samples
        if not drift:
            self._found_from = None
        written = 0
        while written < count:  # window by window: each is judged as it ends
            room = self._window_from + self._window_samples - self.samples
            piece = min(room, count - written)
            if self._window_first_fill is None:
                self._window_first_fill = self.samples
            self.samples += piece
            self._window_filled += piece
            written += piece
            if self._lost_from is not None:
                self._lost_filled += piece
            if self._lost_from is None and self.samples - self._silence_from >= self._report_samples:
                self._open(self._silence_from)
            if self.samples >= self._window_from + self._window_samples:
                self._window_end()
        self.filled_samples += count
        return bytes([self._silence]) * count

    def _write_real(self, count: int) -> None:
        """`count` samples of real sound are written at the end."""
        self.real_samples += count
        self._real_written = True
        self._silence_from = None
        if self._lost_from is not None and self._found_from is None:
            self._found_from = self.samples
        left = count
        while left:
            room = self._window_from + self._window_samples - self.samples
            piece = min(room, left)
            self.samples += piece
            left -= piece
            if self.samples >= self._window_from + self._window_samples:
                self._window_end()
        self._real_end = self.samples
        if self._found_from is not None and self.samples - self._found_from >= self._recover_samples:
            self._close(self._found_from)

    def _window_end(self) -> None:
        """The current window is over (or the run): half of it silence or more is lost sound."""
        if self.samples <= self._window_from:
            return
        length = self.samples - self._window_from
        if (self._lost_from is None and self._window_first_fill is not None
                and length >= self._window_samples and self._window_filled * 2 >= length):
            self._open(max(self._window_first_fill, self._closed_at))
            self._lost_filled = self._window_filled
        self._window_from = self.samples
        self._window_filled = 0
        self._window_first_fill = None

    def _open(self, sample: int) -> None:
        self._lost_from = sample
        self._lost_filled = self.samples - sample if self._silence_from == sample else 0
        self._found_from = None
        self._events.append(AudioGapOpened(self._station_ns(sample)))

    def _close(self, sample: int, *, ongoing: bool = False) -> None:
        began, self._lost_from = self._lost_from, None
        self._found_from = None
        self._closed_at = sample
        assert began is not None
        seconds = round((sample - began) / SAMPLE_RATE_HZ, 3)
        silence_s = round(min(self._lost_filled, sample - began) / SAMPLE_RATE_HZ, 3)
        self._lost_filled = 0
        self._events.append(AudioGap(self._station_ns(began), self._station_ns(sample), seconds, ongoing,
                                     None if silence_s == seconds else silence_s))

    def _station_ns(self, sample: int) -> int:
        """Station time of a sample: by the latest video frame's arrival and its PTS."""
        video_at = self._video_at or 0
        return self._video_arrived_ns + (self._ticks(sample) - video_at) * 1_000_000_000 // CLOCK_HZ
