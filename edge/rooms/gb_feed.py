"""One ffmpeg run's feed from a GB/T 28181 live channel: its video and its sound over two pipes.

The agent reads the channel in process (`LiveHandle.reader()`: from a key frame on, bounded, cut off when
it falls too far behind) and splits it (:class:`drivers.gb28181.ps_audio.PsAudioSplitter`): the program
stream goes on to the run's ffmpeg over one pipe (``-f mpeg``), every audio PES made padding; the camera's
G.711 (PSM stream type 0x90 A-law, 0x91 µ-law) goes as raw samples, aligned with the video by
:class:`edge.rooms.gb_audio.AudioTimeline`, over a second pipe (``-f alaw|mulaw -ar 8000 -ac 1``). One
reader for both, so both begin at the same key frame: the first video PTS is sample 0 of the sound, and
ffmpeg's time 0 of both inputs is the same instant (no -itsoffset to guess). Only the audio stream the PSM
in force lists first is the camera's sound: audio PES of any other stream id (one the PSM does not list)
are counted (`unlisted_audio_pes`) and dropped, never written as the camera's sound. The feed follows the
camera's PSM as it changes: a new one that renumbers the sound (0xC0 -> 0xC1) is the sound's stream from
there on; one that gives it in the other G.711 law has it converted sample by sample into the run's law
(:mod:`edge.rooms.g711`: the raw pipe's format is the run's; `audio_input`, `converted_audio_pes`); one
that gives it in a codec the raw pipe cannot carry ends the run with an `audio-codec-changed` reason naming
both (never a gap saying received sound was missing); the next run reads the new PSM. A run prepared
without sound (its PSM listed none, or AAC after such a switch) whose camera's PSM later lists G.711 ends
too (`audio-codec-changed: none/AAC -> G.711A`) so that the next run records the sound, rate-limited so that
a camera flapping between AAC and G.711 does not restart the run at every PSM: the G.711 PSM must stay in
force for CODEC_SETTLE_S of the stream's picture (a PSM without it starts the count again), and a channel's
run ends this way at most once per CODEC_RESTART_INTERVAL_S (later, the run that still misses the sound
ends once the interval is over: the sound is never left out for good). A law switch within G.711 is said
on the log the first time in a run, then at most once per CODEC_LOG_INTERVAL_S with the count since
(`audio_codec_changes` counts them all). Received sound the
timeline drops (a drifting clock, overlaps, repeats) is in `status`, and said on the log once a run past
DROPPED_NOTICE_SHARE of it. The timeline's gaps
(opened as soon as the sound is lost, closed when it is back) go to `on_audio_gap` as they come; at the
run's end (the channel's end, the feed's own end, or the pump cancelled: ffmpeg's exit, the session's
stop) :meth:`GbRunFeed.finish_audio` closes one still open.

Before the run's ffmpeg is started, :meth:`GbRunFeed.prepare` reads up to the key frame's PSM (at most
PSM_WAIT_S, PSM_WAIT_BYTES): the PSM says whether there is sound and which. A camera without audio in
its PSM records video only, as does one whose sound is not G.711 (AAC, G.722, G.729: `unsupported_audio`
names it; the recording says so once on the ledger).

The pipes are made here and handed to that ffmpeg only (``pass_fds``; both ends close-on-exec in the
agent, ffmpeg's ends non-blocking so that waiting for the feed it still answers SIGTERM, as in
:mod:`edge.rooms.feed_relay`). Bounded: the pump stops reading the channel while more than
VIDEO_QUEUE_BYTES of video wait for ffmpeg (the live layer then buffers up to its own limit and cuts the
reader off: the run ends, a gap); sound that ffmpeg does not take for AUDIO_QUEUE_S beyond what its pipe
holds ends the run too, with that reason (`end_reason`): the agent never buffers without limit. When the
channel's reader ends (an interruption, a cut-off, the channel stopped), what is queued is written and
both pipes are closed: ffmpeg sees the end of its inputs and finishes its last segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.gb28181.ps import Codec
from drivers.gb28181.ps_audio import PsAudioSplitter, SplitOutput
from edge.config.rooms import RoomInputConfig
from edge.rooms.g711 import convert, convertible
from edge.rooms.gb_audio import FFMPEG_FORMATS, SAMPLE_RATE_HZ, AudioGapEvent, AudioTimeline

log = logging.getLogger(__name__)

PSM_WAIT_S = 5.0
PSM_WAIT_BYTES = 512 * 1024
VIDEO_PIPE_BYTES = 1 << 20
AUDIO_PIPE_BYTES = 64 * 1024
VIDEO_QUEUE_BYTES = 4 << 20
AUDIO_QUEUE_S = 20.0
AUDIO_QUEUE_BYTES = int(AUDIO_QUEUE_S * SAMPLE_RATE_HZ)
DRAIN_S = 5.0  # at the reader's end, how long what is queued may take to reach ffmpeg
AUDIO_OVERFLOW_REASON = "audio-overflow"
AUDIO_CODEC_CHANGED_REASON = "audio-codec-changed"
DROPPED_NOTICE_SHARE = 0.01  # received sound dropped beyond this share of it is said on the log ...
DROPPED_NOTICE_AFTER_S = 10.0  # ... once this much of it was written
CODEC_SETTLE_S = 2.0  # a video-only run's PSM lists G.711 this long (stream time) before the run ends for it
CODEC_RESTART_INTERVAL_S = 60.0  # ... and a channel's run ends for it at most once in this long
CODEC_LOG_INTERVAL_S = 60.0  # a G.711 law switch said once, then at most once in this long with a count
CLOCK_HZ = 90_000
PTS_MODULUS = 1 << 33
CODEC_NAMES = {Codec.G711A: "G.711A", Codec.G711U: "G.711U"}
# ffmpeg reads the program stream from a key frame on, so a short probe suffices; a damaged pack is dropped
# rather than muxed.
VIDEO_INPUT_OPTIONS = {"probesize": "2000000", "analyzeduration": "2000000", "fflags": "+discardcorrupt"}


@dataclass
class SoundRestartGate:
    """When a channel's run last ended to take up its G.711 sound (time.monotonic()): kept by the room's
    channel across its runs (edge.rooms.gb_source), so that a later run waits out CODEC_RESTART_INTERVAL_S
    from it; each room's channel has its own."""

    last: float | None = None

    def allows(self, now: float) -> bool:
        """Whether a run may end for its sound at `now` (and, if so, that it did)."""
        if self.last is not None and now - self.last < CODEC_RESTART_INTERVAL_S:
            return False
        self.last = now
        return True


def _codec_name(codec: Codec | None) -> str:
    return "none" if codec is None else CODEC_NAMES.get(codec, codec.value)


class FeedReader(Protocol):
    """What the feed reads: a live channel's consumer (`edge.gb28181.live.LiveReader`)."""

    ended: str | None
    cut_off: bool

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class GbFeedEnded(Exception):
    """The channel's reader ended before its first key frame's stream map was read."""


def video_input(fd: int) -> RoomInputConfig:
    """The run's video input: the program stream on the pipe it inherits as `fd` (built by the station,
    never from the configuration, which refuses ``pipe:``)."""
    return RoomInputConfig.model_construct(format="mpeg", url=f"pipe:{fd}", options=dict(VIDEO_INPUT_OPTIONS),
                                           realtime=False, username=None, password=None)


def audio_input(fd: int, codec: Codec) -> RoomInputConfig:
    """The run's sound input: raw G.711 at 8 kHz, mono, on the pipe it inherits as `fd`."""
    return RoomInputConfig.model_construct(format=FFMPEG_FORMATS[codec], url=f"pipe:{fd}",
                                           options={"ar": str(SAMPLE_RATE_HZ), "ac": "1"}, realtime=False,
                                           username=None, password=None)


def _pipe(size_bytes: int) -> tuple[int, int]:
    """A pipe: ffmpeg's read end non-blocking, the agent's write end non-blocking, both close-on-exec."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # a margin, not a need
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, size_bytes)
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


class _PipeWriter:
    """The agent's end of one pipe: what ffmpeg has not taken yet waits here (the caller bounds it)."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd: int | None = fd
        self.what = what
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.broken = False
        self._writing = False
        self._taken = asyncio.Event()

    def write(self, data: bytes) -> None:
        if not data or self.broken or self.fd is None:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._flush()

    def _flush(self) -> None:
        fd = self.fd
        while self._chunks and fd is not None:
            head = self._chunks[0]
            try:
                written = os.write(fd, head)
            except BlockingIOError:
                if not self._writing:
                    asyncio.get_running_loop().add_writer(fd, self._flush)
                    self._writing = True
                return
            except OSError as exc:  # ffmpeg is gone (EPIPE): nothing more goes to it
                log.info("gb feed: the %s pipe closed (%s)", self.what, exc.strerror or exc)
                self.broken = True
                self._chunks.clear()
                self.buffered = 0
                break
            self.buffered -= written
            if written < len(head):
                self._chunks[0] = head[written:]
            else:
                self._chunks.popleft()
            self._taken.set()
        self._stop_watching()
        self._taken.set()

    def _stop_watching(self) -> None:
        if self._writing and self.fd is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_writer(self.fd)
        self._writing = False

    async def below(self, limit: int) -> None:
        """Until no more than `limit` bytes wait (at once if so)."""
        while self.buffered > limit and not self.broken:
            self._taken.clear()
            await self._taken.wait()

    def close(self) -> None:
        self._stop_watching()
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._chunks.clear()
        self.buffered = 0


class GbRunFeed:
    """One run's feed (see the module docstring): `prepare()`, then `inputs`/`pass_fds` for the run's
    ffmpeg, `pump()` as a task while it runs, `close()` after it."""

    def __init__(self, reader: FeedReader, *, what: str,
                 on_audio_gap: Callable[[AudioGapEvent], None] = lambda gap: None,
                 sound_restarts: SoundRestartGate | None = None) -> None:
        self._reader = reader
        self.what = what
        self._sound_restarts = SoundRestartGate() if sound_restarts is None else sound_restarts
        self._on_audio_gap = on_audio_gap
        self._splitter = PsAudioSplitter()
        self._pending: list[SplitOutput] = []
        self.audio_codec: Codec | None = None  # the sound recorded (G.711), None: video only
        self.unsupported_audio: Codec | None = None  # sound the PSM lists that is not recorded
        self.timeline: AudioTimeline | None = None
        self.audio_input: Codec | None = None  # the codec the camera's PSM gives its sound in now
        self._audio_finished = False
        self._dropped_noted = False
        self.unlisted_audio_pes = 0  # audio PES on a stream the PSM does not list as its sound: dropped
        self.audio_codec_changes = 0  # the camera's PSM changed its sound's codec during the run
        self.converted_audio_pes = 0  # ... to the other G.711 law: converted into the run's
        self._video: _PipeWriter | None = None
        self._audio: _PipeWriter | None = None
        self._ffmpeg_ends: list[int] = []
        self.inputs: list[RoomInputConfig] = []
        self.end_reason: str | None = None  # why the feed ended the run itself (None: the channel's end)
        self.video_bytes = 0
        self._g711_listed_ticks = 0  # picture (90 kHz) gone by while a video-only run's PSM lists G.711
        self._last_video_pts: int | None = None
        self._switch_logged_at: float | None = None  # when a G.711 law switch was last said on the log
        self._switches_unsaid = 0  # ... and those not said since

    def __repr__(self) -> str:
        return f"GbRunFeed({self.what})"

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(self._ffmpeg_ends)

    async def prepare(self, wait_s: float = PSM_WAIT_S) -> None:
        """Read up to the first key frame's stream map and make the pipes. `GbFeedEnded` when the
        channel's reader ends first with nothing read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        seen_bytes = 0
        video_seen = False
        while self._splitter.stream_map is None and not video_seen and seen_bytes < PSM_WAIT_BYTES:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await self._reader.read()
            except TimeoutError:
                break
            if not chunk:
                if not seen_bytes:
                    raise GbFeedEnded(self._reader.ended or "the live stream ended")
                break
            seen_bytes += len(chunk)
            out = self._splitter.feed(chunk)
            self._pending.append(out)
            video_seen = bool(out.video_pts) and self._splitter.stream_map is None
        codec = self._splitter.audio_codec()
        if codec in FFMPEG_FORMATS:
            self.audio_codec = codec
            self.timeline = AudioTimeline(codec)
            self.audio_input = codec
        elif codec is not None:
            self.unsupported_audio = codec
        self._open_pipes()

    def _open_pipes(self) -> None:
        read_end, write_end = _pipe(VIDEO_PIPE_BYTES)
        self._ffmpeg_ends.append(read_end)
        self._video = _PipeWriter(write_end, "video")
        self.inputs = [video_input(read_end)]
        if self.audio_codec is not None:
            read_end, write_end = _pipe(AUDIO_PIPE_BYTES)
            self._ffmpeg_ends.append(read_end)
            self._audio = _PipeWriter(write_end, "audio")
            self.inputs.append(audio_input(read_end, self.audio_codec))

    async def pump(self) -> None:
        """Read the channel and write both pipes until the reader ends (or the sound overflows), then
        write what is queued and close them (ffmpeg finishes its last segment)."""
        video = self._video
        assert video is not None, "prepare() first"
        try:
            pending, self._pending = self._pending, []
            for out in pending:
                self._take(out)
            while self.end_reason is None:
                await video.below(VIDEO_QUEUE_BYTES)
                chunk = await self._reader.read()
                if not chunk:
                    break
                self._take(self._splitter.feed(chunk))
            if self.end_reason is None:
                self._take(self._splitter.flush())
                self.finish_audio()
                if self._reader.cut_off:
                    self.end_reason = (f"the room's ffmpeg fell behind the live stream and was "
                                       f"{self._reader.ended}")
                with contextlib.suppress(TimeoutError):  # the last frames reach ffmpeg, then its inputs end
                    async with asyncio.timeout(DRAIN_S):
                        await video.below(0)
                        if self._audio is not None:
                            await self._audio.below(0)
        finally:
            # Cancelled (the run's end, the session's stop) or ended by the feed itself: the sound's gap
            # still open is closed and reported all the same (the run's end is its end).
            self.finish_audio()
            self._close_writers()

    def finish_audio(self) -> None:
        """The sound is over for this run: filled up to the end of the last picture, and a gap still open
        closed and reported. Once; nothing more is taken from the channel's sound after it."""
        if self._audio_finished or self.timeline is None:
            return
        self._audio_finished = True
        tail = self.timeline.finish()
        if self._audio is not None:
            self._audio.write(tail)
        self._report_gaps()

    def _take(self, out: SplitOutput) -> None:
        assert self._video is not None
        self._video.write(out.video)
        self.video_bytes += len(out.video)
        timeline, audio = self.timeline, self._audio
        if timeline is None or audio is None:
            self._watch_for_sound(out)
            return
        if self._audio_finished:
            return
        now = time.time_ns()
        pieces = []
        for item in out.media:  # in stream order: a frame's sound before the next picture moves the lag on
            if isinstance(item, int):
                pieces.append(timeline.video(item, now))
            elif not item.primary:  # a stream the PSM in force does not list as the camera's sound
                self.unlisted_audio_pes += 1
            elif convertible(item.codec, timeline.codec):
                if item.codec is not self.audio_input:
                    self._input_changed(item.codec)
                if item.codec is not timeline.codec:
                    self.converted_audio_pes += 1
                pieces.append(timeline.audio(item.pts, convert(item.data, item.codec, timeline.codec)))
            else:  # the camera's sound is now in a codec this run's raw pipe cannot carry
                self._codec_changed(item.codec)
                break
        audio.write(b"".join(pieces))
        self._report_gaps()
        self._note_dropped(timeline)
        if audio.buffered > AUDIO_QUEUE_BYTES and self.end_reason is None:
            self.end_reason = (f"{AUDIO_OVERFLOW_REASON}: the room's ffmpeg took none of the camera's sound "
                               f"for more than {AUDIO_QUEUE_S:g} s beyond what its pipe holds "
                               f"({audio.buffered} bytes waiting): the run ends rather than buffer more")
            log.warning("%s: %s", self.what, self.end_reason)

    def _input_changed(self, codec: Codec) -> None:
        """The camera's PSM now gives its sound in the other G.711 law: converted sample by sample into the
        run's (the raw pipe's format is the run's). Said the first time in the run, then at most once per
        CODEC_LOG_INTERVAL_S with the count since (a camera flapping at every packet must not flood the
        journal)."""
        previous, self.audio_input = self.audio_input, codec
        self.audio_codec_changes += 1
        self._switches_unsaid += 1
        now = time.monotonic()
        if self._switch_logged_at is not None and now - self._switch_logged_at < CODEC_LOG_INTERVAL_S:
            return
        since = ("" if self._switch_logged_at is None
                 else f" ({self._switches_unsaid} changes in the last {now - self._switch_logged_at:.0f} s)")
        self._switch_logged_at, self._switches_unsaid = now, 0
        log.warning("%s: the camera's sound changed from %s to %s%s; recorded as %s (converted by the G.711 "
                    "tables)", self.what, _codec_name(previous), _codec_name(codec), since,
                    _codec_name(self.audio_codec))

    def _watch_for_sound(self, out: SplitOutput) -> None:
        """A run prepared without sound: once the camera's PSM has listed G.711 for CODEC_SETTLE_S of the
        picture, the run ends (`audio-codec-changed`) so that the next records it; at most once per
        CODEC_RESTART_INTERVAL_S for the channel (see the module docstring)."""
        if self.end_reason is not None:
            return
        listed = self._splitter.audio_codec()
        for pts in out.video_pts:
            step = None if self._last_video_pts is None else (pts - self._last_video_pts) % PTS_MODULUS
            self._last_video_pts = pts
            if listed in FFMPEG_FORMATS and step is not None and 0 < step <= CLOCK_HZ:
                self._g711_listed_ticks += step  # a jump or a step back is no time gone by
        if listed not in FFMPEG_FORMATS:
            self._g711_listed_ticks = 0
            return
        if self._g711_listed_ticks < CODEC_SETTLE_S * CLOCK_HZ:
            return
        if not self._sound_restarts.allows(time.monotonic()):
            return
        self.audio_codec_changes += 1
        was = _codec_name(self.unsupported_audio)
        self.end_reason = (f"{AUDIO_CODEC_CHANGED_REASON}: {was} -> {_codec_name(listed)}: the camera's "
                           f"stream map gives its sound in {_codec_name(listed)} again; this run was "
                           "prepared without sound and ends so that the next one records it")
        log.warning("%s: %s", self.what, self.end_reason)

    def _codec_changed(self, codec: Codec) -> None:
        """The camera's sound is now in a codec the raw pipe of this run cannot carry: the run ends with
        that reason (its gap says so, not that sound was missing); the next run reads the new PSM."""
        if self.end_reason is not None:
            return
        self.audio_codec_changes += 1
        self.end_reason = (f"{AUDIO_CODEC_CHANGED_REASON}: {_codec_name(self.audio_input)} -> "
                           f"{_codec_name(codec)}: the camera's new stream map gives its sound in a codec "
                           "this run's raw sound input cannot carry; the run ends and the next one records "
                           "what the new stream map lists")
        log.warning("%s: %s", self.what, self.end_reason)

    def _note_dropped(self, timeline: AudioTimeline) -> None:
        """Received sound dropped (a drifting audio clock, overlaps, repeats) beyond DROPPED_NOTICE_SHARE
        of it: said once per run (the counts are in `status`)."""
        if self._dropped_noted or timeline.real_samples < DROPPED_NOTICE_AFTER_S * SAMPLE_RATE_HZ:
            return
        if timeline.dropped_share() > DROPPED_NOTICE_SHARE:
            self._dropped_noted = True
            log.warning("%s: %.1f %% of the camera's sound received was dropped (%.1f s; %.1f s of it to "
                        "keep a drifting audio clock with the picture, %d PES sent twice)", self.what,
                        100 * timeline.dropped_share(), timeline.dropped_samples / SAMPLE_RATE_HZ,
                        timeline.clock_dropped_samples / SAMPLE_RATE_HZ, timeline.duplicates)

    def _report_gaps(self) -> None:
        if self.timeline is None:
            return
        for gap in self.timeline.take_events():
            try:
                self._on_audio_gap(gap)
            except Exception:  # the record of a gap must not end the feed
                log.exception("%s: reporting an audio gap failed", self.what)

    def end_inputs(self) -> None:
        """The run is stopping (its pump done): ffmpeg's inputs end, so that it closes its open segment
        itself rather than wait on a stalled camera for more."""
        self._close_writers()

    def _close_writers(self) -> None:
        for writer in (self._video, self._audio):
            if writer is not None:
                writer.close()

    def status(self) -> dict[str, object]:
        timeline = self.timeline
        return {
            "audio": None if self.audio_codec is None else self.audio_codec.value,
            "unsupported_audio": None if self.unsupported_audio is None else self.unsupported_audio.value,
            "audio_s": None if timeline is None else round(timeline.seconds(), 3),
            "audio_filled_s": (None if timeline is None
                               else round(timeline.filled_samples / SAMPLE_RATE_HZ, 3)),
            "audio_jumps": None if timeline is None else timeline.jumps,
            "audio_rebases": None if timeline is None else timeline.rebases,
            "audio_shift_s": None if timeline is None else round(timeline.shift_s(), 3),
            "audio_lost": None if timeline is None else timeline.lost,
            "audio_dropped_s": (None if timeline is None
                                else round(timeline.dropped_samples / SAMPLE_RATE_HZ, 3)),
            "audio_dropped_share": None if timeline is None else round(timeline.dropped_share(), 4),
            "audio_clock_dropped_s": (None if timeline is None
                                      else round(timeline.clock_dropped_samples / SAMPLE_RATE_HZ, 3)),
            "audio_duplicate_pes": None if timeline is None else timeline.duplicates,
            "audio_reordered_pes": None if timeline is None else timeline.reordered,
            "audio_input": None if self.audio_input is None else self.audio_input.value,
            "audio_codec_changes": self.audio_codec_changes,
            "converted_audio_pes": self.converted_audio_pes,
            "unlisted_audio_pes": self.unlisted_audio_pes,
            "damaged_audio_pes": self._splitter.damaged_audio,
        }

    def close(self) -> None:
        """After the run: every pipe end the agent holds is closed and the channel's reader let go."""
        self._close_writers()
        for fd in self._ffmpeg_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ffmpeg_ends.clear()
        self._reader.close()
