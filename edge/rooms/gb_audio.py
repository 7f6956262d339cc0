"""The sound of a GB/T 28181 camera as a raw G.711 stream aligned with its video: pure, no I/O.

The room's ffmpeg reads the camera's program stream (its video) and, beside it, the raw G.711 the agent
writes (``-f alaw|mulaw -ar 8000 -ac 1``). A raw stream has no timestamps: its samples are its clock. So
:class:`AudioTimeline` writes sample 0 at the first video PTS of the run (ffmpeg's time 0 of the video
input, whose audio the agent took out) and every later sample where its PTS puts it:

* audio before the first video frame is dropped; audio that starts after it is preceded by silence;
* a hole in the audio PTS (packets lost, a camera that stopped sending its sound) is filled with silence
  of exactly its length (A-law 0xD5, µ-law 0xFF), never by stretching what came;
* the sound never falls more than `lag_s` behind the picture: while no audio comes, silence is written up
  to the latest video PTS less `lag_s` (ffmpeg interleaves by time: sound that never comes would hold up
  the picture, and a camera that declares audio and sends none would never record);
* audio that overlaps what is written (a PTS going back a little, sound coming after the silence put in
  its place) has its overlapping samples dropped;
* a timestamp jump of more than `max_jump_s` (a device's clock set, a PTS wrap taken care of apart) is no
  hole to fill: ffmpeg itself re-bases the video there (its dts_delta_threshold for PS inputs, 10 s), so
  the audio goes on where it is (counted in `jumps`).

Every run of silence at least `report_s` long is an :class:`AudioGap` (its start and end in station time,
mapped from the PTS by the latest video frame's arrival): audio loss is a gap in the record like video
loss. Shorter runs (a lost packet) are filled and counted (`filled_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.gb28181.ps import Codec

SAMPLE_RATE_HZ = 8000
CLOCK_HZ = 90_000
PTS_MODULUS = 1 << 33
SILENCE = {Codec.G711A: 0xD5, Codec.G711U: 0xFF}
FFMPEG_FORMATS = {Codec.G711A: "alaw", Codec.G711U: "mulaw"}
REPORT_S = 0.2  # a silence run this long is a gap (10 G.711 packets of 20 ms); shorter ones are counted
LAG_S = 1.0  # the sound is kept at most this far behind the picture
MAX_JUMP_S = 10.0  # ffmpeg's dts_delta_threshold: a larger jump is a re-based clock, not a hole
DEFAULT_FRAME_TICKS = 3600  # 25 fps, until two video PTS give the stream's own step


@dataclass(frozen=True)
class AudioGap:
    """Silence put where the camera's sound was missing: station times, and its length in seconds."""

    from_ns: int
    to_ns: int
    seconds: float
    ongoing_at_end: bool = False  # the run ended while the sound was missing


class AudioTimeline:
    """See the module docstring. `video()` and `audio()` return the bytes to write to the raw pipe."""

    def __init__(self, codec: Codec, *, report_s: float = REPORT_S, lag_s: float = LAG_S,
                 max_jump_s: float = MAX_JUMP_S) -> None:
        if codec not in SILENCE:
            raise ValueError(f"no raw G.711 format for {codec}")
        self.codec = codec
        self._silence = SILENCE[codec]
        self._report_samples = round(report_s * SAMPLE_RATE_HZ)
        self._lag_ticks = round(lag_s * CLOCK_HZ)
        self._max_jump_ticks = round(max_jump_s * CLOCK_HZ)
        self._last_raw: int | None = None  # the last PTS seen (either stream: one clock), as carried
        self._last_unwrapped = 0
        self._origin: int | None = None  # the first video PTS (unwrapped): sample 0
        self._offset = 0  # ticks added to every PTS after a re-based jump (as ffmpeg does to the video)
        self._video_at: int | None = None  # the latest video PTS, ticks from the origin
        self._video_arrived_ns = 0
        self._frame_ticks = DEFAULT_FRAME_TICKS
        self.samples = 0  # samples written (the raw stream's clock)
        self._silence_from: int | None = None  # the sample where the current run of silence began
        self.gaps: list[AudioGap] = []  # reported, not yet taken (take_gaps)
        self.frames = 0
        self.filled_samples = 0
        self.dropped_samples = 0  # overlapping, or before the first video frame
        self.jumps = 0

    @property
    def started(self) -> bool:
        return self._origin is not None

    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE_HZ

    def take_gaps(self) -> list[AudioGap]:
        gaps, self.gaps = self.gaps, []
        return gaps

    # -- input ---------------------------------------------------------------------------------------------

    def video(self, pts: int, arrived_ns: int) -> bytes:
        """A video PES's PTS: the first one is sample 0; each keeps the sound within `lag_s`."""
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
        self._video_at = max(at, self._video_at or at)
        self._video_arrived_ns = arrived_ns
        behind = self._video_at - self._lag_ticks
        if behind > self._ticks(self.samples):
            return self._fill(self._samples_at(behind) - self.samples)
        return b""

    def audio(self, pts: int | None, data: bytes) -> bytes:
        """An audio frame (its PES's PTS, None: right after the previous one) as bytes to write."""
        if self._origin is None or not data:
            self.dropped_samples += len(data)
            return b""
        self.frames += 1
        if pts is None:
            start = self.samples
        else:
            start = self._samples_at(self._unwrap(pts) - self._origin + self._offset)
        jump = start - self.samples
        if abs(jump) > self._max_jump_ticks * SAMPLE_RATE_HZ // CLOCK_HZ:
            self.jumps += 1  # a clock set: the sound goes on where it is
            jump = 0
        out = bytearray()
        if jump > 1:  # a hole (one sample of rounding is none)
            out += self._fill(jump)
        elif jump < 0:  # overlaps what is written: those samples go
            self.dropped_samples += min(len(data), -jump)
            data = data[-jump:]
        if data:
            self._real()
            out += data
            self.samples += len(data)
        return bytes(out)

    def finish(self) -> bytes:
        """The run ended: the sound filled up to the end of the last video frame; a silence run then still
        going on is reported (`ongoing_at_end`)."""
        if self._video_at is None:
            return b""
        end = self._samples_at(self._video_at + self._frame_ticks)
        out = self._fill(end - self.samples) if end > self.samples else b""
        self._real(ongoing=True)
        return out

    # -- internals -----------------------------------------------------------------------------------------

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

    def _fill(self, count: int) -> bytes:
        if count <= 0:
            return b""
        if self._silence_from is None:
            self._silence_from = self.samples
        self.samples += count
        self.filled_samples += count
        return bytes([self._silence]) * count

    def _real(self, *, ongoing: bool = False) -> None:
        """Real sound follows (or the run ended): the silence run before it is over."""
        began, self._silence_from = self._silence_from, None
        if began is None or self.samples - began < self._report_samples:
            return
        self.gaps.append(AudioGap(self._station_ns(began), self._station_ns(self.samples),
                                  round((self.samples - began) / SAMPLE_RATE_HZ, 3), ongoing))

    def _station_ns(self, sample: int) -> int:
        """Station time of a sample: by the latest video frame's arrival and its PTS."""
        video_at = self._video_at or 0
        return self._video_arrived_ns + (self._ticks(sample) - video_at) * 1_000_000_000 // CLOCK_HZ
