"""A session's sources, recording under a supervisor; every interruption a `gap` on the ledger.

:class:`SessionRecording` runs one recorder task per source of the room under its own
:class:`~edge.runtime.supervise.Supervisor` (the house supervisor: factory, backoff, liveness). A recorder
task is one ffmpeg run (:func:`edge.rooms.capture.capture_run`); it marks itself alive at every segment the
list names and whenever ffmpeg's progress report shows it muxed more (:mod:`edge.rooms.progress`), so the
liveness timeout (``segment_time_s + stale_margin_s``) judges the source by what ffmpeg does, not only by its
process (a source with a picture by its video frames alone: a camera whose picture stops while its sound goes
on is a gap, ``reason`` ``video-lost: ...``, within the same timeout as a silent one): an ffmpeg that runs but
takes nothing in is cancelled (and stopped) like one that died, and the supervisor starts a fresh run after
its backoff. A camera whose key frames are further apart than the timeout (a long GOP: with stream copy a
segment can close only at a key frame) is not silent while its frames arrive; but a segment open for more than
``OPEN_SEGMENT_FACTOR`` liveness timeouts (a camera that sends no key frame: fragmented MP4 keeps the frames
in memory) ends the run all the same. Until its first segment a run has ``start_grace_s`` more
(:func:`_start_grace`): starting up is not silence. The other sources' tasks are untouched.

Per source, one sealer task takes, in order, what its recorder produced: closed segments (sealed through
:class:`~edge.rooms.sealing.SegmentSealer`) and gap events. A run that ends for any reason but the
session's stop opens a gap (``gap`` entry, ``state`` ``open``: ``from`` = when recording of that source
last held, ``reason`` = how the run ended); the first segment of a later run closes it (``state``
``closed``, with ``from``, ``to`` = that segment's start, ``reason``, ``attempts`` = runs started
meanwhile, ``duration_s``). A gap still open at stop is closed at the stop time with ``to_stop = true``.
A source whose first media of the session comes more than [rooms] late_start_gap_s (2 s) after it was
started (a camera waking up, a slow RTSP handshake, the probe) gets a gap for that unrecorded start too:
``from`` = when the source was started, ``to`` = its first media, ``reason`` ``source-late-start: ...``.

With ``codec = "auto"`` a run first ffprobes its inputs (:func:`probe_streams`) inside the same gap
handling: the probes have the start grace plus 60 % of the liveness timeout together (a probe waits for a
slow camera's first frames just as ffmpeg does), the run is kept alive meanwhile, and the start grace of
ffmpeg counts from the probe's end. A camera that accepts and stays silent opens the run's gap ("ffprobe
... gave no answer") when that deadline passes, and an ffprobe is killed whenever its probe ends early
(timeout or cancellation).

A segment that cannot be sealed (listed but missing, changed after it was listed, gone) is a closed gap
over its station times (``reason`` ``segment-unsealable: segment <run>/<name> could not be sealed: ...``,
with ``run``, ``segment`` and ``unsealable``) beside the sealer's `error` entry, so the session manifest
says what is missing. A segment the pipeline could not seal (a full disk) is kept and tried again at the
stop; still unsealed then, its time is a gap likewise (the file stays for a later try).

A source that stalls for less than the liveness timeout (ffmpeg not restarted) is a gap too: the
capture (:func:`edge.rooms.capture.station_spans`) finds the first segment listed after it claiming much
more station time than it holds, and hands the excess over as a stall (``reason`` ``source-stalled: ...``).

A source that writes more than its ceiling (``max_bitrate_mbps``, bytes per station second whatever its
timestamps say: :mod:`edge.rooms.write_rate`) has its run ended as a flood (``reason`` ``source-flood: ...``);
with a :class:`~edge.rooms.reserve.RecordingReserve`, the source writing the most once the store's disk is
at its reserve plus the recording margin has its run ended (``reason`` ``disk-reserve: ...``) and waits, its
gap open, until space is freed (:meth:`SessionRecording._room_to_record`). Either way its ffmpeg closes and
lists its open segment, which is sealed: nothing written is dropped.

At the stop, each sealer tries once more every segment of its source still in the capture directories
(one whose sealing failed during the session: a full disk, an I/O error), so none is dropped.

A session resumed after the agent stopped or crashed starts each source with an open gap from its last
sealed segment (or the session's start), and first seals what the interrupted runs left in their capture
directories (an ffmpeg a crash left running is stopped first): listed segments whole, unlisted ones
partial.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge.config.base import ConfigError
from edge.config.rooms import RoomConfig, RoomInputConfig, RoomSourceConfig, RoomsSection
from edge.custody.ledger import EntryType, Ledger
from edge.custody.text import printable
from edge.gb28181.live import Interruption, LiveEvent, LiveEventKind, LiveStreams
from edge.ingest.manifest import iso_from_ns
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.argv import (
    Coding,
    SegmentPlan,
    codec_plan,
    gb_plan,
    probe_argv,
    probed_codecs,
    redact_url_userinfo,
    segment_argv,
    with_credentials,
)
from edge.rooms.capture import (
    CaptureEnded,
    ClosedSegment,
    capture_run,
    read_anchor,
    read_pins,
    read_station_times,
    stop_orphan,
)
from edge.rooms.composite import OVERLAY_DIR, CompositeOutput, RunPipes
from edge.rooms.devices import device_metadata
from edge.rooms.feed_relay import FeedDrop
from edge.rooms.gb_audio import AudioGap, AudioGapEvent, AudioGapOpened
from edge.rooms.gb_feed import GbRunFeed
from edge.rooms.gb_source import GbRoomChannel, GbSourceUnavailable, gb_metadata, ns_from_wall_text
from edge.rooms.progress import Progress
from edge.rooms.reserve import RESERVE_REASON, RecordingReserve
from edge.rooms.sealing import SealedSegment, SegmentSealer
from edge.rooms.segments import SEGMENT_NAME, SegmentListError, SegmentListReader
from edge.rooms.session import RoomSession
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from edge.rooms.state import SessionFiles
from edge.rooms.write_rate import MBIT, WriteMeter
from edge.runtime.supervise import Liveness, Supervisor, TaskSpec, current_liveness

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 15.0
PROBE_SHARE = 0.6  # of the liveness timeout, for all of a run's probes together
# ffmpeg's progress keeps a run alive while its open segment is younger than this many liveness timeouts
# (150 s under the defaults: a GOP of two minutes). Longer, and the frames since the last key frame are
# held in ffmpeg's memory, not on disk (fragmented MP4 flushes at key frames): the run ends, a gap.
OPEN_SEGMENT_FACTOR = 10
LATENCIES_KEPT = 1000
# A source's first media later than this after it was started is an unrecorded start: a gap.
LATE_START_REASON = "source-late-start"
# A source that delivered nothing for a while, under the liveness timeout.
STALLED_REASON = "source-stalled"
# A source with a picture whose video stopped while its sound went on, for the liveness timeout.
VIDEO_LOST_REASON = "video-lost"
# The sound of a GB/T 28181 camera missing while its picture went on (filled with silence of its length).
AUDIO_LOST_REASON = "audio-lost"
# Packets of a source's feed the composite did not take (edge.rooms.feed_relay): the composite's gap.
FEED_DROPPED_REASON = "composite-feed-dropped"
# A listed (or partial) segment that could not be sealed: its time is a gap.
UNSEALABLE_REASON = "segment-unsealable"
RESUMED_REASON = "the station agent was not running (stopped or crashed while the session was recording)"


class ProbeStalled(Exception):
    """ffprobe (codec = auto) gave no answer in time: the input delivers nothing; the message says which."""


@dataclass(frozen=True)
class GapOpened:
    from_ns: int
    reason: str
    detail: tuple[tuple[str, Any], ...] = ()  # more keys of its entries (a GB/T 28181 source's live facts)


@dataclass(frozen=True)
class GapClosed:
    to_ns: int
    to_stop: bool = False
    reason: str | None = None  # what the closed entry says, if it knows more than the open one did
    detail: tuple[tuple[str, Any], ...] = ()  # more keys of the closed entry (a lost sound's silence_s)


@dataclass(frozen=True)
class GapWhole:
    """A gap known whole at once (a GB/T 28181 channel's stall: its times), on the record (its open and its
    closed entries) whatever gap is open meanwhile: gaps may overlap, each saying what was lost (a stall
    loses picture and sound while the sound's own gap is open)."""

    from_ns: int
    to_ns: int
    reason: str
    detail: tuple[tuple[str, Any], ...] = ()
    to_stop: bool = False


class FinalSweep:
    """The last work of a stopped session's sealer: seal what is still in its capture directories."""


FINAL_SWEEP = FinalSweep()
SealerWork = ClosedSegment | GapOpened | GapClosed | GapWhole | FinalSweep | None


@dataclass
class SourceRecording:
    """What the session knows of one source (status and the manifest read it)."""

    config: RoomSourceConfig
    queue: asyncio.Queue[SealerWork] = field(default_factory=asyncio.Queue)
    runs: int = 0
    pid: int | None = None
    coding: tuple[str, str] | None = None
    last_end_ns: int | None = None  # end of the last segment handed over
    gap_from_ns: int | None = None  # an open gap (recorder side)
    gap_reason: str | None = None
    gap_attempts: int = 0
    sealed: list[SealedSegment] = field(default_factory=list)
    failed: int = 0
    unsealable_gaps: set[tuple[str, str]] = field(default_factory=set)  # (run, name) already a gap
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    # A source the composite shows, or the composite: each run's pipes and the command naming them.
    pipes: Callable[[], contextlib.AbstractContextManager[RunPipes]] | None = None
    # A derived output (the composite): what its segments say they derive from.
    derived: dict[str, Any] | None = None
    gb: GbRoomChannel | None = None  # a GB/T 28181 channel's hold (edge.rooms.gb_source)
    # The live channel's interruption not yet in a gap (reason, detail): the gap its ffmpeg's end opens
    # takes them (edge.rooms.gb_source: one outage, one gap).
    live_interruption: tuple[str, tuple[tuple[str, Any], ...]] | None = None
    # When a GB/T 28181 channel's media first flowed (its live layer says so, before ffmpeg lists a
    # segment, whose start is counted back from its listing in stream time and so misses a stall).
    first_media_ns: int | None = None
    # What the session's first good probe (codec = auto) found: later runs reuse it rather than probe again.
    # A camera that serves one client may still count the probe's connection when ffmpeg connects right
    # after it (503 / 453), and a probe before every restart would lose that race at every restart.
    probed_coding: tuple[Coding, Coding] | None = None
    began_ns: int | None = None  # when its first run of the session began (station time)
    # What the ledger says was refused as changed (SegmentSealer.refused_on_ledger), read once per session
    # run and handed from each sealer of the source to the next.
    refused: dict[tuple[str, str], int] | None = None
    gap_entries: int = 0  # `gap` entries written for it in this session's run (open or closed)
    feeds: Callable[[], list[dict[str, Any]]] | None = None  # the composite: its feeds' counters
    # What its runs write, by the station's clock: the flood rule's and the reserve's measure (.write_rate).
    meter: WriteMeter | None = None
    gb_feed: GbRunFeed | None = None  # a GB/T 28181 channel: its current (or last) run's feed
    audio_noted: bool = False  # its sound not recorded (not G.711) is on the ledger for this session
    # A GB/T 28181 camera's sound lost while its picture goes on (edge.rooms.gb_audio): the gap open for
    # it (its start), or one found before the source's first segment, opened once that is listed.
    audio_gap_from_ns: int | None = None
    audio_gap_reason: str | None = None
    audio_gap_pending: AudioGapOpened | None = None
    # How long the channel stalled within it (picture and sound lost: gaps of their own), so that its
    # entry says why its station time (duration_s) exceeds the silence the recording holds (silence_s).
    audio_gap_stalled_ns: int = 0
    # A GB/T 28181 channel stalled when the session's stop was asked: when its media last came.
    stalled_at_stop_ns: int | None = None

    def status(self) -> dict[str, Any]:
        latencies = list(self.latencies_s)
        found = {
            "source": self.config.id,
            "name": self.config.name,
            "derived": self.derived is not None,
            "recording": self.gap_from_ns is None and self.audio_gap_from_ns is None and self.pid is not None,
            "runs": self.runs,
            "coding": None if self.coding is None else {"video": self.coding[0], "audio": self.coding[1]},
            "segments_sealed": len(self.sealed),
            "segments_failed": self.failed,
            "last_segment_end_utc": None if self.last_end_ns is None else iso_from_ns(self.last_end_ns),
            "gap": {
                "from_utc": iso_from_ns(self.gap_from_ns), "reason": self.gap_reason,
                "attempts": self.gap_attempts,
            } if self.gap_from_ns is not None else {
                "from_utc": iso_from_ns(self.audio_gap_from_ns), "reason": self.audio_gap_reason,
                "attempts": 0,
            } if self.audio_gap_from_ns is not None else None,
            # What it writes now, by the station's clock (edge.rooms.write_rate), and its ceiling.
            "write_mbit_s": None if self.meter is None else round(self.meter.recent_bytes_per_s() / MBIT, 2),
            "max_bitrate_mbps": self.config.max_bitrate_mbps,
            "max_seal_latency_s": max(latencies, default=None),
            "last_seal_latency_s": latencies[-1] if latencies else None,
        }
        if self.feeds is not None:  # the composite: what became of each source's feed
            found["feeds"] = self.feeds()
        if self.gb_feed is not None:  # a GB/T 28181 channel: its sound, as its run's feed took it
            found["gb_feed"] = self.gb_feed.status()
        return found


class SessionRecording:
    """Records one session's sources until :meth:`stop` (the session ends) or :meth:`interrupt` (the
    agent stops; the session resumes at its next start)."""

    def __init__(
        self,
        session: RoomSession,
        room: RoomConfig,
        settings: RoomsSection,
        pipeline: IngestPipeline,
        files: SessionFiles,
        *,
        station_id: str,
        clock_synchronised: Callable[[], bool] = lambda: False,
        resumed_from_ns: dict[str, int] | None = None,
        live: LiveStreams | None = None,
        reserve: RecordingReserve | None = None,
    ) -> None:
        self.session = session
        self.reserve = reserve  # the store's disk, shared with the other rooms (edge.rooms.reserve)
        self.room = room
        self.settings = settings
        self.pipeline = pipeline
        self.files = files
        self.station_id = station_id
        self.clock_synchronised = clock_synchronised
        self.sources = {s.id: SourceRecording(s) for s in room.source}
        for source in self.sources.values():
            if source.config.gb28181 is not None:
                source.gb = GbRoomChannel(live, source.config.gb28181,
                                          functools.partial(self._live_event, source))
        self.composite: CompositeOutput | None = None
        if room.composite is not None:  # one more output, recorded like a source (edge.rooms.composite)
            overlay_dir = files.capture_dir / session.session / room.composite.id / OVERLAY_DIR
            self.composite = CompositeOutput(room, overlay_dir, lambda: self.session, self._feed_dropped)
            self.sources[room.composite.id] = SourceRecording(
                self.composite.source, pipes=self.composite.composite_pipes, derived=self.composite.derived,
                feeds=self.composite.feed_status)
            for source_id in self.composite.feeds:  # the originals feed it
                self.sources[source_id].pipes = functools.partial(self.composite.source_pipes, source_id)
        for source in self.sources.values():
            source.meter = WriteMeter(source.config.max_bitrate_mbps * MBIT)
        self._stop = asyncio.Event()
        self._ending_reason: str | None = None  # None: the session stops; else why it is interrupted
        self._resumed = resumed_from_ns
        self._run_began_ns: int | None = None  # when run() began
        self._stopped_ns: int | None = None  # when the runs ended at a stop
        self._stop_asked_ns: int | None = None  # when stop() was called
        self.liveness_timeout_s = settings.segment_time_s + settings.stale_margin_s

    # -- control ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the session's recording: every ffmpeg closes its last segment, everything is sealed. A GB/T
        28181 channel stalled at this moment (its live layer would tell the stall only once media came
        again) is noted here: its gap reaches the stop (_stall_at_stop)."""
        if not self._stop.is_set():
            self._stop_asked_ns = time.time_ns()
            for source in self.sources.values():
                if source.gb is not None:
                    source.stalled_at_stop_ns = source.gb.stalled_since_ns()
        self._stop.set()

    def interrupt(self, reason: str) -> None:
        """Stop recording without ending the session (the agent stops): each source's gap opens."""
        self._ending_reason = reason
        self._stop.set()

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.sources.values()]

    def set_overlay_line(self, text: str) -> None:
        """The composite's extra overlay line (a room panel's reading); OverlayLineError when it is not one
        short printable line. Nothing when the room has no overlay."""
        if self.composite is not None and self.composite.overlay is not None:
            self.composite.overlay.set_extra_line(text)

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Record until stopped; return once every segment handed over is sealed and the gaps closed.

        Meanwhile the room holds its space on the store's disk (edge.rooms.space.rooms_kept_free): a docking
        copy or a GB/T 28181 download keeps it free, or waits (edge.ingest.kept_space)."""
        rule = functools.partial(rooms_kept_free, start_min_free_bytes=self.settings.start_min_free_bytes,
                                 record_margin_bytes=self.settings.record_margin_bytes)
        try:
            with self.pipeline.kept_space.holding(ROOMS_GROUP, self.session.room, rule):
                await self._record_holding_space()
        finally:
            if self.reserve is not None:
                self.reserve.release(self.session.room)  # the page no longer names its stopped sources

    async def _record_holding_space(self) -> None:
        self._run_began_ns = time.time_ns()
        if self._resumed is not None:
            await self._queue_resumed_work(self._resumed)
        sealers = [
            asyncio.create_task(self._seal_loop(s), name=f"room-seal-{self.session.room}-{s.config.id}")
            for s in self.sources.values()
        ]
        supervisor = Supervisor(
            notify_ready=False,
            backoff_initial_s=self.settings.restart_backoff_initial_s,
            backoff_max_s=self.settings.restart_backoff_max_s,
            # Never give up on a room source: the backoff alone paces restarts. The backoff grows with the
            # restarts counted in the window, so the window is long: a camera unplugged for an hour is
            # retried every restart_backoff_max_s, each try counted in its gap.
            restart_budget=1_000_000,
            budget_window_s=3600.0,
        )
        self.supervisor = supervisor
        overlay = None if self.composite is None else self.composite.overlay
        overlay_task = None
        if overlay is not None:
            with contextlib.suppress(OSError):  # else logged by its task; the composite's run fails, a gap
                overlay.write()  # before the first run: drawtext refuses to start without its files
            overlay_task = asyncio.create_task(overlay.run(), name=f"room-overlay-{self.session.room}")
        # The composite's feeds are relayed by tasks of their own supervisor, which outlives the runs: a
        # source's ffmpeg finishes its last segment while its feed is still read (edge.rooms.feed_relay).
        relays_stop = asyncio.Event()
        relays: asyncio.Task[None] | None = None
        if self.composite is not None:
            relay_supervisor = Supervisor(notify_ready=False, backoff_initial_s=0.2, backoff_max_s=2.0,
                                          restart_budget=1_000_000, budget_window_s=3600.0)
            for relay in self.composite.feeds.values():
                relay_supervisor.add(TaskSpec(f"room-{self.session.room}-feed-{relay.source_id}", relay.run,
                                              critical=False))
            relays = asyncio.create_task(relay_supervisor.run(relays_stop),
                                         name=f"room-feeds-{self.session.room}")
        try:
            for source in self.sources.values():
                supervisor.add(TaskSpec(
                    f"room-{self.session.room}-{source.config.id}",
                    lambda source=source: self._record(source),  # type: ignore[misc]
                    liveness_timeout_s=self.liveness_timeout_s,
                    critical=False,
                    stop_timeout_s=self.settings.stop_timeout_s + 5.0,
                ))
            await supervisor.run(self._stop)
        finally:
            try:
                if relays is not None:  # the runs are over: their pipes are read to their ends, then closed
                    relays_stop.set()
                    with contextlib.suppress(Exception):
                        await relays
            finally:
                if relays is not None and not relays.done():  # this task was cancelled meanwhile
                    relays.cancel()
                if self.composite is not None:
                    self.composite.close()
            now = time.time_ns()
            self._stopped_ns = now
            for source in self.sources.values():
                # Its run's end closed it, normally.
                self._audio_gap_ends(source, now, to_stop=self._ending_reason is None)
                if self._ending_reason is not None:
                    if source.gap_from_ns is None:
                        source.queue.put_nowait(GapOpened(source.last_end_ns or now, self._ending_reason))
                elif source.gap_from_ns is not None:
                    source.queue.put_nowait(GapClosed(now, to_stop=True))
                else:
                    self._stall_at_stop(source, now)
                # At a stop, the sealer tries once more whatever of the session is still unsealed.
                source.queue.put_nowait(FINAL_SWEEP if self._ending_reason is None else None)
            if overlay_task is not None:
                overlay_task.cancel()
                sealers.append(overlay_task)
            await asyncio.gather(*sealers, return_exceptions=True)
            for source in self.sources.values():
                if source.gb is not None:
                    source.gb.close()

    async def _record(self, source: SourceRecording) -> None:
        """One ffmpeg run of `source` (a supervised task)."""
        config = source.config
        source.runs += 1
        if source.gap_from_ns is not None:
            source.gap_attempts += 1
        run_began_ns = time.time_ns()
        if source.began_ns is None:
            source.began_ns = run_began_ns
        liveness = current_liveness()
        keepers: list[asyncio.Task[None]] = []

        def keep_alive(until: asyncio.Event, for_s: float) -> None:
            keepers.append(asyncio.create_task(_start_grace(liveness, until, for_s),
                                               name=f"room-grace-{self.session.room}-{config.id}"))

        try:
            await self._room_to_record(source, run_began_ns, liveness)
            await self._one_run(source, run_began_ns, liveness, keep_alive)
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _room_to_record(self, source: SourceRecording, run_began_ns: int, liveness: Liveness) -> None:
        """Wait, the source's gap open and its task kept alive, while the store's disk is at the recording
        reserve (edge.rooms.reserve): a source the reserve stopped starts again only once space is freed."""
        if self.reserve is None:
            return
        while True:
            room, free = await asyncio.to_thread(self.reserve.room_to_record, self.session.room,
                                                  source.config.id)
            if room:
                return
            if source.gap_from_ns is None:  # a source starting with the disk at the reserve already
                free_mib = (free or 0) / (1 << 20)
                self._open_gap(source, run_began_ns, (
                    f"{RESERVE_REASON}: the store's disk has {free_mib:.1f} MiB free, under its "
                    "reserve and the recording margin ([rooms] record_margin_bytes): the source waits for "
                    "space to be freed"))
            liveness.beat()
            await asyncio.sleep(min(self.reserve.check_s, 0.5))  # well within the liveness timeout

    async def _one_run(
        self, source: SourceRecording, run_began_ns: int, liveness: Liveness,
        keep_alive: Callable[[asyncio.Event, float], None],
    ) -> None:
        """The probe and the ffmpeg of one run. The probe is kept alive until its own deadline (which
        includes the start grace); ffmpeg has the start grace, counted from the probe's end, until its
        first segment."""
        config = source.config
        first_segment = asyncio.Event()
        redact: Callable[[str], str] = redact_url_userinfo
        if source.gb is not None:
            await self._gb_run(source, run_began_ns, liveness, keep_alive)
            return
        try:
            inputs, redact = resolved_inputs(config.input)
        except ConfigError as exc:  # names the reference and why, never a value
            self._open_gap(source, run_began_ns, f"the source's credentials cannot be read: {exc}")
            raise
        # The probe (codec = auto) is part of the run: a camera that stalls it opens a gap like one that
        # stalls ffmpeg, and the probe ends, its ffprobe stopped, before the liveness timeout would.
        probed = asyncio.Event()
        keep_alive(probed, self._probe_deadline_s(config))
        try:
            video, audio = await self._coding(config, inputs, source)
        except ProbeStalled as exc:
            self._open_gap(source, run_began_ns, redact(str(exc)))
            raise
        except asyncio.CancelledError:
            if not self._stop.is_set():
                self._open_gap(source, run_began_ns, f"ffprobe gave no answer within the liveness "
                               f"timeout ({self.liveness_timeout_s:g} s)")
            raise
        finally:
            probed.set()
        keep_alive(first_segment, self.settings.start_grace_s)  # the grace counts from here
        source.coding = (video.value, audio.value)
        metadata = segment_metadata(self.session, config)
        metadata.update(device_metadata(config.input))  # which device the stable name is now
        plan = SegmentPlan(self.settings.segment_time_s, self.settings.mp4_layout, video, audio, metadata)
        await self._ffmpeg_run(source, inputs, plan, run_began_ns, redact, liveness, first_segment)

    async def _ffmpeg_run(
        self, source: SourceRecording, inputs: list[RoomInputConfig], plan: SegmentPlan, run_began_ns: int,
        redact: Callable[[str], str], liveness: Liveness, first_segment: asyncio.Event,
        *, input_fds: tuple[int, ...] = (), end_inputs: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The ffmpeg of one run, in a run directory of its own (`input_fds`: pipes its inputs read;
        `end_inputs`: ends them as the run stops, before ffmpeg is told to)."""
        started_ns = time.time_ns()  # stream second 0 of this run, as near ffmpeg's start as can be
        run = run_name(started_ns)
        run_dir = self.files.run_dir(self.session.session, source.config.id, run)
        # A source the composite shows, and the composite, get new pipes for each run (their feeds).
        with contextlib.nullcontext(None) if source.pipes is None else source.pipes() as pipes:
            builder = segment_argv if pipes is None else pipes.argv
            argv = builder(self.settings.ffmpeg, inputs, plan, run_dir)
            await self._capture(source, argv, run_dir, run_began_ns, started_ns, redact, liveness,
                                first_segment,
                                pass_fds=input_fds + (() if pipes is None else pipes.pass_fds),
                                end_inputs=end_inputs)

    async def _capture(
        self, source: SourceRecording, argv: list[str], run_dir: Path, run_began_ns: int, started_ns: int,
        redact: Callable[[str], str], liveness: Liveness, first_segment: asyncio.Event,
        *, pass_fds: tuple[int, ...], end_inputs: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The ffmpeg of one run (`argv`, inheriting `pass_fds`): its segments handed over as they close,
        its end a gap (see :meth:`_one_run`)."""

        loop = asyncio.get_running_loop()
        open_since = loop.time()  # when the open segment began (as far as listing tells)
        open_limit_s = OPEN_SEGMENT_FACTOR * self.liveness_timeout_s
        # Whether progress last came while the open segment was past its limit (then it kept nobody alive).
        # Judged as progress comes, not at the cancellation: stopping ffmpeg closes and lists that segment.
        over_limit = False

        # Station time of the last video frame while the source muxes sound only (its picture lost); None
        # while its picture comes (or it has none).
        picture_lost_after_ns: int | None = None
        last_picture_ns = started_ns
        sound_without_picture = False  # since the last listed segment (a stall then lost the picture only)

        def progressed(shown: Progress) -> None:
            # ffmpeg muxed more frames: the camera is not silent, its segment closes at its next key frame.
            # Sound alone does not keep a camera alive (progress.py): its picture is lost, a gap within the
            # liveness timeout like a silent source.
            nonlocal over_limit, picture_lost_after_ns, last_picture_ns, sound_without_picture
            if shown is Progress.SOUND_ONLY:
                sound_without_picture = True
                if picture_lost_after_ns is None:
                    picture_lost_after_ns = last_picture_ns
                return
            picture_lost_after_ns = None
            last_picture_ns = time.time_ns()
            over_limit = loop.time() - open_since >= open_limit_s
            if not over_limit:
                liveness.beat()

        def closed(segment: ClosedSegment) -> None:
            nonlocal open_since, sound_without_picture
            if segment.stalled_from_ns is not None and source.gap_from_ns is None \
                    and source.audio_gap_from_ns is None:
                self._stalled(source, segment,
                              picture_lost=picture_lost_after_ns is not None or sound_without_picture)
            if segment.partial is None:
                sound_without_picture = False
                open_since = loop.time()
                liveness.beat()
                first_segment.set()
                if source.gap_from_ns is None and source.last_end_ns is None:
                    first_media_ns = segment.times_ns()[0]
                    if source.first_media_ns is not None:
                        first_media_ns = min(first_media_ns, source.first_media_ns)
                    self._late_start(source, run_began_ns, first_media_ns)
                if source.gap_from_ns is not None:
                    start_ns, _ = segment.times_ns()
                    source.queue.put_nowait(GapClosed(start_ns))
                    source.gap_from_ns = None
                    source.gap_reason = None
            source.last_end_ns = max(segment.times_ns()[1], source.last_end_ns or 0)
            source.queue.put_nowait(segment)
            if segment.partial is None and source.audio_gap_pending is not None:
                self._audio_gap_pending_opens(source, segment.times_ns()[0])

        def started(pid: int) -> None:
            source.pid = pid

        writing = (contextlib.nullcontext(None) if self.reserve is None or source.meter is None
                   else self.reserve.writing(self.session.room, source.config.id, source.meter))
        try:
            with writing as writer:
                # A GB/T 28181 channel's stalls are told by its live layer (_live_event), each a gap already.
                await capture_run(argv, run_dir, closed, stop_timeout_s=self.settings.stop_timeout_s,
                                  on_started=started, anchor_ns=started_ns, redact=redact,
                                  report_stalls=source.gb is None, on_progress=progressed, pass_fds=pass_fds,
                                  meter=source.meter, end_for=None if writer is None else writer.end_for,
                                  end_inputs=end_inputs)
        except CaptureEnded as exc:
            self._open_gap(source, started_ns, redact(str(exc)))
            raise
        except asyncio.CancelledError:
            if not self._stop.is_set():  # the supervisor found it silent
                self._open_gap(source, started_ns, (
                    f"{VIDEO_LOST_REASON}: the source's sound went on but no video frame came after "
                    f"{iso_from_ns(picture_lost_after_ns)} for more than {self.liveness_timeout_s:g} s "
                    "(its picture stopped): ffmpeg stopped and restarted"
                    if picture_lost_after_ns is not None else
                    f"a segment open for more than {open_limit_s:g} s (no key frame from the source?): "
                    "ffmpeg stopped and restarted" if over_limit else
                    f"no new segment for more than {self.liveness_timeout_s:g} s and no progress from "
                    "ffmpeg meanwhile: ffmpeg stopped and restarted" if first_segment.is_set() else
                    f"no first segment within {self.settings.start_grace_s + self.liveness_timeout_s:g} s "
                    "of the start (start_grace_s + segment_time_s + stale_margin_s): ffmpeg stopped and "
                    "restarted"))
            raise
        except OSError as exc:  # ffmpeg could not be started at all
            self._open_gap(source, started_ns, f"ffmpeg could not be started: {exc.strerror or exc}")
            raise
        finally:
            source.pid = None

    def _stalled(self, source: SourceRecording, segment: ClosedSegment, *, picture_lost: bool) -> None:
        """The source delivered nothing from the previous segment's end to this one's start (a stall under
        the liveness timeout: ffmpeg ran on), or, `picture_lost`, no picture while its sound went on (the
        segment listed as ffmpeg was stopped for it, or at the session's stop): a gap over that time."""
        assert segment.stalled_from_ns is not None
        start_ns, _ = segment.times_ns()
        stalled_s = (start_ns - segment.stalled_from_ns) / 1e9
        if picture_lost:
            reason = (f"{VIDEO_LOST_REASON}: no video frame from the source for {stalled_s:.1f} s while its "
                      f"sound went on (segment {segment.name} was listed that much later than its picture "
                      "accounts for)")
        else:
            reason = (f"{STALLED_REASON}: the source delivered nothing for {stalled_s:.1f} s (under the "
                      f"liveness timeout of {self.liveness_timeout_s:g} s: ffmpeg ran on; segment "
                      f"{segment.name} was listed that much later than its stream duration accounts for)")
        source.queue.put_nowait(GapOpened(segment.stalled_from_ns, reason))
        source.queue.put_nowait(GapClosed(start_ns))

    def _late_start(self, source: SourceRecording, started_ns: int, first_media_ns: int) -> None:
        """The session's first media of `source` came `first_media_ns - started_ns` after the source was
        started (a camera waking up, a slow RTSP handshake, the probe): over late_start_gap_s that is an
        unrecorded start, a gap from the start to the first media like any other."""
        late_s = (first_media_ns - started_ns) / 1e9
        if late_s <= self.settings.late_start_gap_s:
            return
        reason = (f"{LATE_START_REASON}: the source's first media came {late_s:.1f} s after it was started "
                  "(connection, probe, the camera's own start)")
        source.queue.put_nowait(GapOpened(started_ns, reason))
        source.queue.put_nowait(GapClosed(first_media_ns))

    def _open_gap(self, source: SourceRecording, run_started_ns: int, reason: str) -> None:
        reason = redact_url_userinfo(reason)  # the ledger, the log and the status all quote it
        # The run ends: its sound's gap ends with it, on the record before the run's own gap opens.
        if source.gb_feed is not None and (source.audio_gap_from_ns is not None
                                           or source.audio_gap_pending is not None):
            source.gb_feed.finish_audio()
        self._audio_gap_ends(source, time.time_ns())
        if self.composite is not None and source.config.id == self.composite.config.id:
            # A feed drop going on as the composite's run ends is on the record before the composite's own
            # gap (which would take it in: _feed_dropped) - the relays would report it only at the next
            # run, its last piece lost (review 28).
            self.composite.end_drops()
        detail: tuple[tuple[str, Any], ...] = ()
        if source.live_interruption is not None:  # the cause (the live channel) rather than the effect
            (reason, detail), source.live_interruption = source.live_interruption, None
        if source.gap_from_ns is not None:
            source.gap_reason = reason  # still the same gap: the newest reason is shown
            return
        from_ns = source.last_end_ns if source.last_end_ns is not None else run_started_ns
        source.gap_from_ns, source.gap_reason, source.gap_attempts = from_ns, reason, 0
        source.queue.put_nowait(GapOpened(from_ns, reason, detail))

    # -- a GB/T 28181 channel (edge.rooms.gb_source) -------------------------------------------------

    async def _gb_run(
        self, source: SourceRecording, run_began_ns: int, liveness: Liveness,
        keep_alive: Callable[[asyncio.Event, float], None],
    ) -> None:
        """One run of a GB/T 28181 channel: its feed (edge.rooms.gb_feed: video and, when the camera has
        G.711 sound, the sound) pumped to the run's ffmpeg while it runs, closed after it."""
        config = source.config
        assert config.gb28181 is not None
        feed = await self._gb_feed(source, run_began_ns)
        source.gb_feed = feed
        try:
            if source.first_media_ns is None:
                source.first_media_ns = time.time_ns()
            if feed.unsupported_audio is not None and not source.audio_noted:
                source.audio_noted = True
                try:
                    await self._audio_not_recorded(source, feed.unsupported_audio.value)
                except Exception:  # the record of it must not cost the picture
                    log.exception("room %s source %s: the note of its sound not recorded failed",
                                  self.session.room, config.id)
            first_segment = asyncio.Event()
            keep_alive(first_segment, self.settings.start_grace_s)  # the grace counts from here
            with_audio = feed.audio_codec is not None
            source.coding = (Coding.COPY.value, Coding.ENCODE.value if with_audio else "none")
            metadata = segment_metadata(self.session, config)
            metadata.update(gb_metadata(config.gb28181))
            if feed.audio_codec is not None:
                metadata["gb28181_audio"] = feed.audio_codec.value
            plan = gb_plan(self.settings.segment_time_s, self.settings.mp4_layout, metadata, audio=with_audio)
            pump = asyncio.create_task(self._gb_pump(source, feed),
                                       name=f"room-gb-feed-{self.session.room}-{config.id}")

            async def end_inputs() -> None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                feed.end_inputs()

            try:
                await self._ffmpeg_run(source, feed.inputs, plan, run_began_ns, redact_url_userinfo, liveness,
                                       first_segment, input_fds=feed.pass_fds, end_inputs=end_inputs)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        finally:
            feed.close()

    async def _gb_pump(self, source: SourceRecording, feed: GbRunFeed) -> None:
        """The feed's pump; a run the feed itself ended (ffmpeg cut off, the sound not taken) gets that
        reason for its gap."""
        await feed.pump()
        if feed.end_reason is not None and source.live_interruption is None and source.gap_from_ns is None:
            source.live_interruption = (feed.end_reason, (("live", "feed"),))

    def _audio_gap(self, source: SourceRecording, event: AudioGapEvent) -> None:
        """The camera's sound is lost while its picture goes on (filled with silence: edge.rooms.gb_audio):
        a gap of its own, open while it lasts (the lamp blinks), closed when the sound is back or the run
        ends (with the silence put in it), unless another gap is open (the run's end is one already). One
        found before the source's first segment opens once that is listed (a late start's gap first)."""
        if isinstance(event, AudioGapOpened):
            if source.audio_gap_from_ns is not None:
                return
            if source.gap_from_ns is not None or source.live_interruption is not None \
                    or source.last_end_ns is None:
                source.audio_gap_pending = event  # opened at the next segment, if it still lasts then
                return
            self._audio_gap_opens(source, event.from_ns)
            return
        source.audio_gap_pending = None
        to_stop = event.ongoing_at_end and self._session_stopped()
        # Lost until the stop: it ends at the stop (the feed's last picture may be seconds before it, the
        # stream stalled), as the session's other gaps do.
        stop_ns = time.time_ns() if to_stop else 0
        if source.audio_gap_from_ns is not None:
            from_ns = source.audio_gap_from_ns
            to_ns = max(event.to_ns, from_ns, stop_ns)
            stalled_ns = self._stalled_in_audio_gap(source, to_ns)
            reason, detail = self._audio_lost(event, from_ns, to_ns, stalled_ns)
            source.queue.put_nowait(GapClosed(to_ns, to_stop, reason, detail))
            source.audio_gap_from_ns = source.audio_gap_reason = None
            source.audio_gap_stalled_ns = 0
            return
        if source.gap_from_ns is not None or source.live_interruption is not None:
            return
        # Never opened: on the record now, whole.
        to_ns = max(event.to_ns, event.from_ns, stop_ns)
        reason, detail = self._audio_lost(event, event.from_ns, to_ns, 0)
        source.queue.put_nowait(GapWhole(event.from_ns, to_ns, reason, detail, to_stop))

    def _audio_gap_opens(self, source: SourceRecording, from_ns: int) -> None:
        reason = (f"{AUDIO_LOST_REASON}: the camera's sound is missing while its picture goes on; the "
                  "recording holds silence in its place")
        source.audio_gap_from_ns, source.audio_gap_reason = from_ns, reason
        source.queue.put_nowait(GapOpened(from_ns, reason, (("audio", "lost"),)))

    def _audio_gap_pending_opens(self, source: SourceRecording, segment_start_ns: int) -> None:
        """A segment is listed with no gap open: a loss of the sound found while one was (or before the
        first segment) and still going on is a gap now, from no earlier than that segment's start."""
        pending, source.audio_gap_pending = source.audio_gap_pending, None
        if pending is not None and source.gap_from_ns is None and source.audio_gap_from_ns is None \
                and source.live_interruption is None:
            self._audio_gap_opens(source, max(pending.from_ns, segment_start_ns))

    def _audio_lost(
        self, gap: AudioGap, from_ns: int, to_ns: int, stalled_ns: int
    ) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """A closed audio gap's reason and the keys of its entry. It says how long the sound was missing by
        the station's clock (its entry's duration_s) and the silence the recording holds (silence_s, of
        the stream's time): the part the stream stalled (picture and sound, gaps of their own: stalled_s)
        is in the one, not the other."""
        until = (" until the session stopped" if gap.ongoing_at_end and self._session_stopped() else
                 " until the run ended" if gap.ongoing_at_end else "")
        stalled = ("" if stalled_ns <= 0 else
                   f", for {stalled_ns / 1e9:.1f} s of it the stream stalled (picture and sound lost: a gap "
                   "of its own)")
        pieces = "" if gap.silence_s is None else " (its sound came in short pieces only)"
        reason = (f"{AUDIO_LOST_REASON}: the camera's sound was missing for {(to_ns - from_ns) / 1e9:.1f} s"
                  f"{until} while its picture went on{stalled}; the recording holds {gap.filled_s:.1f} s of "
                  f"silence there{pieces}")
        detail: tuple[tuple[str, Any], ...] = (("audio", "lost"), ("silence_s", gap.filled_s))
        if stalled_ns > 0:
            detail += (("stalled_s", round(stalled_ns / 1e9, 3)),)
        return reason, detail

    def _stalled_in_audio_gap(self, source: SourceRecording, to_ns: int) -> int:
        """How long the channel stalled within the sound's open gap, were it closed at `to_ns`: the stalls
        told meanwhile, and the one going on at the session's stop."""
        from_ns = source.audio_gap_from_ns
        if from_ns is None:
            return 0
        stalled = source.audio_gap_stalled_ns
        if source.stalled_at_stop_ns is not None and self._session_stopped():
            stalled += max(0, to_ns - max(source.stalled_at_stop_ns, from_ns))
        return min(stalled, max(0, to_ns - from_ns))

    def _session_stopped(self) -> bool:
        """The session is stopping (not interrupted by the agent's stop: it resumes at the next start)."""
        return self._stop.is_set() and self._ending_reason is None

    def _audio_gap_ends(self, source: SourceRecording, now_ns: int, *, to_stop: bool = False) -> None:
        """An audio gap still open when its run ended without its feed closing it: closed now."""
        source.audio_gap_pending = None
        if source.audio_gap_from_ns is None:
            return
        from_ns = source.audio_gap_from_ns
        to_ns = max(now_ns, from_ns)
        stalled_ns = self._stalled_in_audio_gap(source, to_ns)
        source.audio_gap_from_ns = None
        until = "the session stopped" if to_stop else "the run ended"
        stalled = ("" if stalled_ns <= 0 else
                   f", for {stalled_ns / 1e9:.1f} s of it the stream stalled (picture and sound lost: a gap "
                   "of its own)")
        reason = (f"{AUDIO_LOST_REASON}: the camera's sound was missing from {iso_from_ns(from_ns)} until "
                  f"{until} while its picture went on{stalled}; the recording holds silence there")
        detail: tuple[tuple[str, Any], ...] = (("silence_s", round((to_ns - from_ns - stalled_ns) / 1e9, 3)),)
        if stalled_ns > 0:
            detail += (("stalled_s", round(stalled_ns / 1e9, 3)),)
        source.queue.put_nowait(GapClosed(to_ns, to_stop, reason, detail))
        source.audio_gap_reason = None
        source.audio_gap_stalled_ns = 0

    async def _audio_not_recorded(self, source: SourceRecording, codec: str) -> None:
        """The camera's PSM lists sound the room cannot record (not G.711): said once per session."""
        data = {
            "stage": "room gb audio", "room_session": self.session.session, "room": self.session.room,
            "source": source.config.id, "audio_codec": printable(codec)[:32],
            "reason": (f"the camera's sound ({printable(codec)[:32]}) is not recorded: a GB/T 28181 room "
                       "source records G.711 A-law or µ-law sound (PSM stream type 0x90 or 0x91); this "
                       "source records video only"),
        }
        log.error("room %s source %s: %s", self.session.room, source.config.id, data["reason"])
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))

    async def _gb_feed(self, source: SourceRecording, run_began_ns: int) -> GbRunFeed:
        """The channel's feed for a run, once media flows (a gap while it does not)."""
        assert source.gb is not None
        try:
            return await source.gb.ready(functools.partial(self._audio_gap, source))
        except GbSourceUnavailable as exc:
            self._open_gap(source, run_began_ns, str(exc))
            raise
        except asyncio.CancelledError:
            if not self._stop.is_set():
                self._open_gap(source, run_began_ns, "the GB/T 28181 live channel delivered no media within "
                               "the start-up allowance and the liveness timeout")
            raise

    def _live_event(self, source: SourceRecording, event: LiveEvent) -> None:
        """A live channel's event as the room's gap (edge.rooms.gb_source): an interruption is the reason
        of the gap its ffmpeg's end opens; a stall or a loss is a gap of its own unless one is open."""
        if self._stop.is_set():
            return
        live = event.interruption
        if event.kind is LiveEventKind.INTERRUPTED:
            reason = f"GB/T 28181 live stream interrupted: {event.reason}"
            detail = (("live", "interrupted"), ("live_from", live.began_at if live else None))
            if source.gap_from_ns is not None:
                source.gap_reason = reason
            else:
                source.live_interruption = (reason, detail)
            return
        if event.kind is LiveEventKind.STALLED:
            self._live_gap(source, "stalled", event.reason, live)
        elif event.kind is LiveEventKind.MEDIA_LOST:
            # Looked at once the live layer is done with this moment: the losses of a Play that ended are
            # told just before its interruption, which is then their gap.
            asyncio.get_running_loop().call_soon(self._live_gap, source, "lost", event.reason, None)

    def _live_gap(self, source: SourceRecording, what: str, why: str, live: Interruption | None) -> None:
        """A stall (its times) or a loss (zero length, now) as a gap of its own, unless a run's gap is open
        (it covers the source's picture and sound already). The sound's gap open meanwhile does not take it
        in: it lost the picture too (gaps may overlap); that gap counts the stall's time within it."""
        reason = f"GB/T 28181 live media {what}: {why}"
        if self._stop.is_set():
            return
        if source.gap_from_ns is not None or source.live_interruption is not None:
            if source.gap_from_ns is not None:  # within a gap already on the ledger: not a second one
                source.gap_reason = reason
            return
        now = time.time_ns()
        from_ns = (ns_from_wall_text(live.began_at) if live else None) or now
        to_ns = max(from_ns, (ns_from_wall_text(live.ended_at) if live else None) or from_ns)
        if source.audio_gap_from_ns is not None:
            source.audio_gap_stalled_ns += max(0, to_ns - max(from_ns, source.audio_gap_from_ns))
        source.queue.put_nowait(GapWhole(from_ns, to_ns, reason, (("live", what),)))

    def _stall_at_stop(self, source: SourceRecording, now_ns: int) -> None:
        """The session stopped while its GB/T 28181 channel had no media for its stall threshold or longer
        (noted at stop()): the live layer tells a stall only once media comes again, which the stop cut
        off. A gap from the last media to the stop (to the runs' end if the stall still lasts, else to when
        the stop was asked), unless a run's gap is open (it is closed at the stop)."""
        stalled_from = source.stalled_at_stop_ns
        if stalled_from is None or self._ending_reason is not None or source.gap_from_ns is not None:
            return
        still = source.gb is not None and source.gb.stalled_since_ns() == stalled_from
        to_ns = max(stalled_from, now_ns if still or self._stop_asked_ns is None else self._stop_asked_ns)
        seconds = (to_ns - stalled_from) / 1e9
        reason = f"GB/T 28181 live media stalled: no media for {seconds:.1f} s until the session stopped"
        source.queue.put_nowait(GapWhole(stalled_from, to_ns, reason, (("live", "stalled"),), to_stop=True))

    def _feed_dropped(self, drop: FeedDrop) -> None:
        """The relay dropped packets of a source's feed the composite did not take (slow, stopped, or
        restarting: edge.rooms.feed_relay): the composite lost that source's picture meanwhile, a gap of
        its own unless one is open already (then the composite's outage is that gap). Taken during the
        stop too: the relays report the drop going on when they are closed, after the runs, and the
        sealers are still there to record it (review 27)."""
        if self.composite is None:
            return
        composite = self.sources[self.composite.config.id]
        seconds = (drop.to_ns - drop.from_ns) / 1e9
        reason = (f"{FEED_DROPPED_REASON}: the composite did not take the feed of source {drop.source} for "
                  f"{seconds:.1f} s; {drop.packets} TS packets of it were dropped (the source recorded on)")
        if composite.gap_from_ns is not None:
            return
        composite.queue.put_nowait(GapOpened(drop.from_ns, reason, (("feed", drop.source),
                                                                   ("dropped_packets", drop.packets))))
        composite.queue.put_nowait(GapClosed(drop.to_ns))

    async def _coding(
        self, config: RoomSourceConfig, inputs: list[RoomInputConfig], source: SourceRecording | None = None
    ) -> tuple[Coding, Coding]:
        if config.codec != "auto":
            return codec_plan(config.codec, None)
        if source is not None and source.probed_coding is not None:
            return source.probed_coding
        streams: list[tuple[str, str]] = []
        # All of a run's probes end well inside the time the run is kept alive for them (each input its
        # share), so a stalled probe is this run's own gap, never a cancellation from outside.
        timeout_s = self._probe_deadline_s(config) / len(inputs)
        for number, spec in enumerate(inputs, 1):
            try:
                found = await probe_streams(probe_argv(self.settings.ffprobe, spec), timeout_s)
            except TimeoutError:
                raise ProbeStalled(f"ffprobe of input {number} gave no answer within {timeout_s:g} s "
                                   "(codec = auto): the source delivers nothing") from None
            if found is None:
                return codec_plan("encode", None)
            streams += found
        plan = codec_plan("auto", streams)
        if source is not None:
            source.probed_coding = plan
        return plan

    def _probe_deadline_s(self, config: RoomSourceConfig) -> float:
        """How long all of a run's probes (codec = auto) may take together: the start grace (a probe
        waits for the camera's first frames as ffmpeg does) plus 60 % of the liveness timeout, each
        input at most PROBE_TIMEOUT_S; 0 without a probe."""
        if config.codec != "auto":
            return 0.0
        total = self.settings.start_grace_s + PROBE_SHARE * self.liveness_timeout_s
        return min(total, PROBE_TIMEOUT_S * len(config.input))

    # -- sealing and gaps ---------------------------------------------------------------------------

    def _sealer(self, source: SourceRecording) -> SegmentSealer:
        return SegmentSealer(self.pipeline, self.session, source=source.config.id,
                             source_name=source.config.name, station_id=self.station_id,
                             clock_synchronised=self.clock_synchronised(), derived=source.derived,
                             refused=source.refused)

    async def _seal_loop(self, source: SourceRecording) -> None:
        gap: GapOpened | None = None
        attempts_at_open = 0
        while True:
            work = await source.queue.get()
            if work is None:
                return
            if isinstance(work, FinalSweep):
                await self._seal_unsealed(source)
                await self._nothing_recorded_gap(source)
                return
            try:
                if isinstance(work, ClosedSegment):
                    sealer = self._sealer(source)
                    done = await sealer.seal(work)
                    source.refused = sealer.refused
                    if done is None:
                        source.failed += 1
                        if not sealer.retryable:  # never sealable as ffmpeg's: its time is a gap now
                            await self._unsealable_gap(source, work, sealer.failure)
                    else:
                        source.sealed.append(done)
                        source.latencies_s.append(done.seal_latency_s)
                elif isinstance(work, GapOpened):
                    if gap is None:
                        gap, attempts_at_open = work, source.runs
                        await self._gap_entry(source, "open", work.from_ns, None, work.reason,
                                              **dict(work.detail))
                elif isinstance(work, GapWhole):
                    detail = dict(work.detail)
                    await self._gap_entry(source, "open", work.from_ns, None, work.reason, **detail)
                    await self._gap_entry(source, "closed", work.from_ns, work.to_ns, work.reason, attempts=0,
                                          to_stop=work.to_stop, **detail)
                elif gap is not None:
                    attempts = source.runs - attempts_at_open
                    extra = {"last_reason": source.gap_reason, **dict(gap.detail), **dict(work.detail)}
                    await self._gap_entry(source, "closed", gap.from_ns, work.to_ns,
                                          work.reason or gap.reason or "", attempts=attempts,
                                          to_stop=work.to_stop, **extra)
                    gap = None
            except Exception:  # one bad segment or entry must not end the sealing of the rest
                log.exception("room %s source %s: sealing failed", self.session.room, source.config.id)
                source.failed += 1

    async def _nothing_recorded_gap(self, source: SourceRecording) -> None:
        """At a stop, a source with no sealed segment and no gap on the record (the session stopped before
        its first media: a START, STOP pressed at once, a camera slow to connect) gets a closed gap from its
        start to the stop, so that its unrecorded span is said (DESIGN invariant 9), not silent."""
        if source.sealed or source.gap_entries or self._stopped_ns is None:
            return
        try:
            from_ns = source.began_ns or self._run_began_ns or self._stopped_ns
            to_ns = max(from_ns, self._stopped_ns)
            reason = (f"{LATE_START_REASON}: the session was stopped {(to_ns - from_ns) / 1e9:.1f} s after "
                      "the source was started, before its first media: nothing of it was recorded")
            await self._gap_entry(source, "closed", from_ns, to_ns, reason, to_stop=True,
                                  attempts=source.runs)
        except Exception:  # the sealer's end must not fail for it: logged
            log.exception("room %s source %s: its gap to the stop could not be recorded", self.session.room,
                          source.config.id)

    async def _seal_unsealed(self, source: SourceRecording) -> None:
        """One more try for every segment of the source whose sealing failed during the session (a full
        disk, an I/O error): what is still in its capture directories (a sealed one was removed)."""
        base = self.files.capture_dir / self.session.session / source.config.id
        if not base.is_dir():
            return
        already = sealed_on_ledger(self.pipeline.store.ledger, self.session)
        for run_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
            for segment in leftover_segments(run_dir, already, source.config.id):
                log.warning("room %s source %s: %s/%s: sealing it again at the stop", self.session.room,
                            source.config.id, segment.run, segment.name)
                sealer = self._sealer(source)
                try:
                    done = await sealer.seal(segment)
                except Exception:
                    log.exception("room %s source %s: sealing failed", self.session.room, source.config.id)
                    done = None
                source.refused = sealer.refused
                if done is not None:
                    source.sealed.append(done)
                    source.failed = max(0, source.failed - 1)
                else:  # the stop's manifest will not list it: its time is a gap (it stays for a later try)
                    await self._unsealable_gap(source, segment, sealer.failure, kept=True)

    async def _unsealable_gap(
        self, source: SourceRecording, segment: ClosedSegment, failure: str | None, *, kept: bool = False
    ) -> None:
        """A segment ffmpeg wrote that cannot be sealed leaves its station times unrecorded on the record:
        a closed gap over them, naming the segment and what was wrong (beside the sealer's `error`).
        Once per segment (the stop's sweep tries a kept one again)."""
        key = (segment.run, segment.name)
        if key in source.unsealable_gaps:
            return
        source.unsealable_gaps.add(key)
        from_ns, to_ns = segment.times_ns()
        name = printable(f"{segment.run}/{segment.name}")[:120]
        why = printable(failure or "sealing failed")[:400]
        reason = f"{UNSEALABLE_REASON}: segment {name} could not be sealed: {why}"
        if kept:
            reason += " (its file is kept in the capture directory for a later try)"
        await self._gap_entry(source, "closed", from_ns, to_ns, reason, run=segment.run,
                              segment=printable(segment.name)[:64], unsealable=True)

    async def _gap_entry(
        self, source: SourceRecording, state: str, from_ns: int, to_ns: int | None, reason: str, **extra: Any
    ) -> None:
        data: dict[str, Any] = {
            "room_session": self.session.session, "room": self.session.room, "source": source.config.id,
            "state": state, "from": iso_from_ns(from_ns), "reason": reason,
        }
        behind_s = 0.0
        if to_ns is not None:
            if to_ns < from_ns:
                # The station's clock is behind the session's record (a power loss with the hardware clock
                # behind, a step back): the gap cannot end before it began, and the time it really lasted
                # is unknown. Said on the entry and in an entry of its own, never clamped silently.
                behind_s = (from_ns - to_ns) / 1e9
                data["clock_behind_s"] = round(behind_s, 3)
                data["reason"] = (f"{reason} (the station clock was {behind_s:.3f} s behind this gap's start "
                                  "when it closed: its length is unknown, its end is given as its start)")
            data["to"] = iso_from_ns(max(to_ns, from_ns))
            data["duration_s"] = round(max(0, to_ns - from_ns) / 1e9, 3)
        data.update({k: v for k, v in extra.items() if v is not None and v is not False})
        if behind_s > 0:
            assert to_ns is not None
            await self._clock_behind(source, from_ns, to_ns, behind_s)
        log.warning("room %s source %s: gap %s: %s", self.session.room, source.config.id, state, reason)
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.GAP, None, data))
        source.gap_entries += 1

    async def _clock_behind(
        self, source: SourceRecording, recorded_ns: int, now_ns: int, behind_s: float
    ) -> None:
        """An `error` entry (stage ``room clock``): the station's clock gives a time `behind_s` earlier than
        what the session already recorded for `source`; segments from now on may carry times before those
        of the segments sealed earlier."""
        data = {
            "stage": "room clock", "room_session": self.session.session, "room": self.session.room,
            "source": source.config.id, "recorded_utc": iso_from_ns(recorded_ns),
            "clock_utc": iso_from_ns(now_ns), "clock_behind_s": round(behind_s, 3),
            "reason": (f"the station clock ({iso_from_ns(now_ns)}) is {behind_s:.3f} s behind what the "
                       f"session already recorded for source {source.config.id} "
                       f"({iso_from_ns(recorded_ns)}): a step back of the clock (a power loss with the "
                       "hardware clock behind, a manual setting); times from now on may precede earlier "
                       "ones"),
        }
        log.error("room %s source %s: %s", self.session.room, source.config.id, data["reason"])
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))

    async def _queue_resumed_work(self, resumed_from_ns: dict[str, int]) -> None:
        """A resumed session: first what the interrupted runs left (listed segments whole, the rest
        partial; an ffmpeg a crash left running is stopped first), then each source's gap from its last
        segment to the first of the new run."""
        already = sealed_on_ledger(self.pipeline.store.ledger, self.session)
        for source in self.sources.values():
            from_ns = resumed_from_ns.get(source.config.id, 0)
            base = self.files.capture_dir / self.session.session / source.config.id
            if base.is_dir():
                for run_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
                    stopped = await stop_orphan(run_dir, self.settings.stop_timeout_s)
                    if stopped is not None:
                        log.warning("room %s source %s: %s", self.session.room, source.config.id, stopped)
                    for segment in leftover_segments(run_dir, already, source.config.id):
                        source.queue.put_nowait(segment)
                        from_ns = max(from_ns, segment.closed_ns)
            source.gap_from_ns, source.gap_reason = from_ns, RESUMED_REASON
            source.last_end_ns = from_ns
            source.queue.put_nowait(GapOpened(from_ns, RESUMED_REASON))


async def _start_grace(liveness: Liveness, first_segment: asyncio.Event, grace_s: float) -> None:
    """Keep a run alive for its first `grace_s` seconds or until its first segment, whichever is first:
    starting up (probe, connect, the camera's first frame) is not silence. After it, the run's first
    segment has the usual liveness timeout more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while not first_segment.is_set() and (left := deadline - loop.time()) > 0:
        liveness.beat()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.5, left)):
                await first_segment.wait()
    if not first_segment.is_set():
        liveness.beat()  # the grace ends now: the liveness timeout counts from here


def resolved_inputs(
    inputs: list[RoomInputConfig],
) -> tuple[list[RoomInputConfig], Callable[[str], str]]:
    """The inputs as ffmpeg takes them: each URL input's credential references resolved (ConfigError
    when one cannot be) and merged into its URL; and the redaction of text quoted from ffmpeg, which
    masks every URL's userinfo and, should ffmpeg print one in another form, every resolved secret."""
    resolved: list[RoomInputConfig] = []
    secrets_seen: set[str] = set()
    for spec in inputs:
        if spec.username is None:
            resolved.append(spec)
            continue
        username = spec.username.resolve()
        password = None if spec.password is None else spec.password.resolve()
        # A very short password would mask every copy of its characters in ffmpeg's prose: the URL rule
        # covers it.
        if password is not None and len(password) >= 4:
            secrets_seen.update({password, quote(password, safe="")})
        # model_copy does not validate again: the merged URL (with its userinfo) lives only in memory.
        resolved.append(spec.model_copy(update={"url": with_credentials(spec.url, username, password)}))
    secrets_ordered = sorted(secrets_seen, key=len, reverse=True)

    def redact(text: str) -> str:
        text = redact_url_userinfo(text)
        for secret in secrets_ordered:
            text = text.replace(secret, "***")
        return text

    return resolved, redact


def sealed_on_ledger(ledger: Ledger, session: RoomSession) -> set[tuple[str, str, str]]:
    """(source, run, segment name) of every segment the ledger has sealed for `session`."""
    return {
        (str(e.data.get("source")), str(e.data.get("run")), str(e.data.get("segment")))
        for e in ledger.entries_of_types([EntryType.SEGMENT_SEALED], session.started_seq or 1)
        if e.data.get("room_session") == session.session
    }


def leftover_segments(
    run_dir: Path, sealed: set[tuple[str, str, str]] | None = None, source: str = ""
) -> list[ClosedSegment]:
    """What an interrupted run left unsealed in `run_dir`, in order. A file whose segment the ledger
    already sealed (`sealed`: a crash came between its segment_sealed and the removal of the capture
    file) is removed, not sealed twice."""
    reader = SegmentListReader(run_dir / "segments.csv")
    untrusted: str | None = None
    try:
        listed, _ = reader.read_new()
    except SegmentListError as exc:
        listed, untrusted = [], f"untrusted segment list: {exc}"
    by_name = {seg.name: seg for seg in listed}
    pins = read_pins(run_dir)
    station = read_station_times(run_dir)
    last_station_end = max((end for _, end in station.values()), default=None)
    anchor = read_anchor(run_dir) or run_anchor_ns(run_dir.name)
    last_end_s = max((seg.end_s for seg in listed), default=0.0)
    found: list[ClosedSegment] = []
    for path in sorted(run_dir.iterdir()):
        if not SEGMENT_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
            continue
        if sealed is not None and (source, run_dir.name, path.name) in sealed:
            log.warning("%s/%s: already sealed (its segment_sealed is on the ledger): capture file removed",
                        run_dir.name, path.name)
            path.unlink(missing_ok=True)
            continue
        info = path.stat()
        if info.st_size == 0:
            continue
        seg = by_name.get(path.name)
        if seg is not None:
            refused = unpinned = None
            if seg.name not in pins:
                unpinned = ("listed by ffmpeg but without a pin in its run directory (the pin line was lost "
                            "to a power cut, or removed): sealed unchecked, it may have changed after "
                            "ffmpeg listed it")
            elif pins[seg.name] is None:
                refused = ("its run directory holds two different pins for it: changed after ffmpeg listed "
                           "it, or its pins were altered; not sealed as ffmpeg's, kept in the capture "
                           "directory")
            found.append(ClosedSegment(path, run_dir.name, seg.name, seg.index, seg.start_s, seg.end_s,
                                       info.st_mtime_ns, anchor, pin=pins.get(seg.name),
                                       station_ns=station.get(seg.name), leftover=True,
                                       pin_refused=refused, unpinned=unpinned))
        else:
            why = untrusted or "the station agent stopped before ffmpeg closed this segment"
            after = None if last_station_end is None else (
                min(last_station_end, info.st_mtime_ns), info.st_mtime_ns)
            found.append(ClosedSegment(path, run_dir.name, path.name, int(path.name[4:10]), None, None,
                                       info.st_mtime_ns, anchor, partial=why, after_s=last_end_s,
                                       written_ns=info.st_mtime_ns, station_ns=after, leftover=True))
    return found


def run_name(started_ns: int) -> str:
    """A run directory's name: its start (microseconds, UTC; the segments' times count from it) and a
    random tag, so two runs never share a directory."""
    seconds, ns = divmod(started_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"run-{stamp}.{ns // 1000:06d}Z-{secrets.token_hex(3)}"


def run_anchor_ns(name: str) -> int:
    """The start :func:`run_name` put in a run directory's name (0 when it holds none)."""
    match = re.fullmatch(r"run-(\d{8}T\d{6})\.(\d{6})Z-[0-9a-f]{6}", name)
    if match is None:
        return 0
    seconds = calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%S"))
    return seconds * 1_000_000_000 + int(match[2]) * 1000


def segment_metadata(session: RoomSession, source: RoomSourceConfig) -> dict[str, str]:
    """The case metadata ffmpeg writes into every segment (MP4 tags)."""
    return {
        "title": f"{session.room_name} {session.case_number}",
        "case_number": session.case_number,
        "room": session.room,
        "location": session.location,
        "collector": session.collector,
        "subject": session.subject,
        "room_session": session.session,
        "source": source.id,
        "comment": json.dumps({"case_number": session.case_number, "room": session.room,
                               "collector": session.collector, "subject": session.subject},
                              ensure_ascii=False, sort_keys=True),
    }


async def probe_streams(argv: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> list[tuple[str, str]] | None:
    """(codec_type, codec_name) of an input's streams by ffprobe; None when ffprobe cannot tell (it
    failed, or gave no stream list); TimeoutError when it gave no answer within `timeout_s`. ffprobe is
    killed whenever this ends before it (timeout or cancellation): none is left waiting on a camera."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
    except OSError as exc:
        log.warning("ffprobe could not be started: %s", exc)
        return None
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            # Reaped even when cancelled again meanwhile: SIGKILL ends it at once.
            await asyncio.shield(process.wait())
    if process.returncode != 0:
        return None
    try:
        return probed_codecs(json.loads(out[: 1 << 20]))
    except ValueError:
        return None
