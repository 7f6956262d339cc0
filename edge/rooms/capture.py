"""One run of one source's ffmpeg: start it, hand over each segment as it closes, stop it gracefully.

:func:`capture_run` starts ffmpeg (argv from :mod:`edge.rooms.argv`) as an asyncio subprocess in its own
session (a terminal's Ctrl-C reaches the agent, which decides), reads its segment list every `poll_s`
and calls `on_segment` with each segment the list names (:mod:`edge.rooms.segments`: listed means
closed). It returns never: when ffmpeg exits it raises :class:`CaptureEnded` with the exit status and the
last lines ffmpeg wrote to stderr; when it is cancelled (the session stops, or the supervisor found the
source silent) it stops ffmpeg the way ffmpeg finishes its files (SIGTERM: the open segment is closed and
listed; SIGKILL only after `stop_timeout_s`), hands over what was listed meanwhile, and re-raises.

Either way, a segment file ffmpeg wrote but never listed (it was killed or crashed mid-segment) is handed
over too, marked partial with the reason: evidence is never dropped (fragmented MP4 keeps such a file
playable). Only empty files are left out (they hold nothing).

ffmpeg's pid is written into the run directory (``ffmpeg.pid``): after a crash of the agent its ffmpeg
runs on, orphaned, and the next start stops it (:func:`stop_orphan`) before sealing what it wrote.
Segment times (:meth:`ClosedSegment.times_ns`) follow the station's clock: a segment ends when ffmpeg
listed it and starts where the previous one ended, so one segment ends exactly where the next starts and a
source whose own clock runs fast or slow (an IP camera's RTP clock) does not carry them away; the stream
times of the list are kept as the source reported them, and how far they drifted is
:attr:`ClosedSegment.source_drift_s`. The station times are kept in the run directory
(``station_times``). A segment listed well after its stream duration accounts for (a source that
stalled for less than the liveness timeout, its clock not counting the stall) gets its stream-true span
and the time before it is handed over as a stall (:attr:`ClosedSegment.stalled_from_ns`, a gap of the
session). The anchor is stream second 0 (the first frame)
in station time: set when the first segment is listed, so that this segment ends when ffmpeg listed it
(a source that delivers late does not make its segments claim to be recorded early); until then, and for
a run that lists nothing, ffmpeg's start. It is kept in the run directory (``anchor_ns``).

Two flood rules end a run (a gap naming the rate): a stream whose timestamps run far ahead of the station's
clock (:class:`FloodWatch`), and a source that writes more bytes per station second than its ceiling,
whatever its timestamps say (:mod:`edge.rooms.write_rate`, measured from the files at every look). The
recording reserve (:mod:`edge.rooms.reserve`) ends a run the same way (`end_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.custody.text import printable
from edge.durable.files import make_dirs_durable
from edge.rooms.argv import SEGMENT_LIST, SEGMENT_PATTERN, redact_url_userinfo
from edge.rooms.progress import Progress, read_progress, with_progress
from edge.rooms.segments import SEGMENT_NAME, ListedSegment, SegmentListError, SegmentListReader
from edge.rooms.write_rate import WriteMeter, flood_reason

log = logging.getLogger(__name__)

STDERR_LINES = 40
PID_FILE = "ffmpeg.pid"
ANCHOR_FILE = "anchor_ns"
PINS_FILE = "pins"
STATION_TIMES_FILE = "station_times"
# A segment listed more than this much later than its stream duration accounts for (after the previous
# one ended) follows a stall of its source: max(1 s, 25 % of its stream duration), above the jitter of
# ffmpeg's listing (an encoder's lookahead, a busy CPU) and a source clock's drift over one segment.
STALL_TOLERANCE_S = 1.0
STALL_TOLERANCE_SHARE = 0.25
# A source's clock may run slow (an IP camera's RTP clock): each segment is then listed late by the same
# share of its length, which is its clock, not a stall. Its rate (stream seconds per station second, the
# stalls found left out) is measured from the run's first listed segment on, once this many stream seconds
# are behind it, and stream durations are scaled by it before a stall is judged; within these bounds.
# Until it is measured (the run's second listing) the tolerance is a whole stream duration (a clock at half
# speed): a stall there shorter than the segment goes unseen, and is taken for the clock's rate.
RATE_BASIS_MIN_S = 1.0
RATE_MIN = 0.25
RATE_MAX = 4.0
STALL_TOLERANCE_SHARE_UNMEASURED = 1.0
# A source whose stream runs faster than RATE_MAX of the station's clock, by more than this many stream
# seconds, is no real-time source (a clock that lies, a replayed buffer): its run is ended, a gap naming
# the rate, before it cuts segments faster than they can be sealed (review 27). The supervisor's backoff
# then paces its runs.
RATE_FLOOD_BURST_S = 10.0
# ... except as it connects: many RTSP cameras and GB/T 28181 IPCs send 10-20 s of GOP cache / pre-buffer
# as fast as the network allows. In the first CONNECT_WINDOW_S station seconds from the run's first listing
# the stream may run ahead by up to CONNECT_BURST_MAX_S more; after them the rate is judged from where the
# window ended (the burst is behind: a real-time camera never runs ahead again, a flood goes on and is
# ended RATE_FLOOD_BURST_S later). A flood is so ended within about CONNECT_WINDOW_S plus that (review 28).
# The stream is counted from ffmpeg's start, so the run's first listing is counted too (review 29). This
# rule reads the source's own timestamps; what it writes is judged apart (FLOOD_REASON, .write_rate).
CONNECT_WINDOW_S = 10.0
CONNECT_BURST_MAX_S = 30.0
# A run that wrote more bytes per station second than its source's ceiling (edge.rooms.write_rate): its
# gap's reason starts with this.
FLOOD_REASON = "source-flood"


@dataclass(frozen=True)
class ClosedSegment:
    """A segment file ffmpeg has finished with, ready to seal."""

    path: Path
    run: str  # the run directory's name
    name: str
    index: int
    start_s: float | None  # stream seconds from the list (None for a partial segment)
    end_s: float | None
    closed_ns: int  # station time (ns since the epoch) ffmpeg listed it, or the run ended
    anchor_ns: int  # stream second 0 in station time (the first frame; ffmpeg's start until it is known)
    partial: str | None = None  # why a segment is not whole: never listed before ffmpeg ended
    after_s: float = 0.0  # a partial segment: where the run's last listed segment ended (stream seconds)
    written_ns: int | None = None  # a partial segment: when ffmpeg last wrote to it (its mtime)
    # (size, mtime, ctime, inode) of the file when ffmpeg listed it: the sealer seals only that file
    # (a rewrite in place changes the ctime even when the mtime is set back).
    pin: tuple[int, int, int, int] | None = None
    # A segment sealed from what a run left (a restart, the stop's retry): the sealer asks the ledger
    # whether this very segment was refused before, whatever its run directory's plain files say now.
    leftover: bool = False
    # A leftover segment ffmpeg listed whose pin cannot be used: why. `pin_refused`: its pins disagree
    # (two different lines), so it is refused; `unpinned`: it has no pin line (lost to a power cut, or
    # removed), so it is sealed, but as suspect (an `error` entry and the fact in its manifest and
    # segment_sealed): its bytes are kept as evidence and nobody reads it as checked.
    pin_refused: str | None = None
    unpinned: str | None = None
    # (start, end) in station time, by the station's clock: from the end of the run's previous segment to
    # when ffmpeg listed this one (None: counted from the anchor and the stream times, see times_ns).
    station_ns: tuple[int, int] | None = None
    # The source delivered nothing from here (station time, the previous segment's end) to this segment's
    # start: a stall under the liveness timeout (stall_before). None: no stall before it.
    stalled_from_ns: int | None = None
    stalled_ns: int = 0  # station time the run's stalls took so far, up to this segment (for the drift)

    @property
    def duration_s(self) -> float | None:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s

    @property
    def source_drift_s(self) -> float | None:
        """How far the source's clock ran from the station's over the run so far: the stream seconds of
        this segment's end minus the station seconds from the anchor to it (positive: the source runs
        fast). None without station times or stream times."""
        if self.station_ns is None or self.end_s is None:
            return None
        return self.end_s - (self.station_ns[1] - self.anchor_ns - self.stalled_ns) / 1e9

    def times_ns(self) -> tuple[int, int]:
        """(start, end) in station time: the station's clock when it has them (`station_ns`), so that a
        source whose own clock runs fast or slow does not carry its segments' times away from the
        station's; else the run's anchor plus the stream times the list gives. Either way one segment
        ends where the next starts; a partial segment runs from the end of the last listed one to when
        the run ended."""
        if self.station_ns is not None:
            return self.station_ns
        if self.start_s is None or self.end_s is None:
            # Its content ends where ffmpeg last wrote (a stalled ffmpeg stopped writing long before the
            # run was ended), never later than the run's end.
            end = min(self.written_ns or self.closed_ns, self.closed_ns)
            start = self.anchor_ns + int(self.after_s * 1e9)
            return min(start, end), end
        return self.anchor_ns + int(self.start_s * 1e9), self.anchor_ns + int(self.end_s * 1e9)


class CaptureEnded(Exception):
    """ffmpeg ended by itself (or wrote a list the station cannot trust); the message says how."""


OnSegment = Callable[[ClosedSegment], None]


async def capture_run(
    argv: Sequence[str],
    run_dir: Path,
    on_segment: OnSegment,
    *,
    stop_timeout_s: float,
    poll_s: float = 0.05,
    on_started: Callable[[int], None] | None = None,
    anchor_ns: int | None = None,
    redact: Callable[[str], str] = redact_url_userinfo,
    report_stalls: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    pass_fds: Sequence[int] = (),
    meter: WriteMeter | None = None,
    end_for: Callable[[], str | None] | None = None,
    end_inputs: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ffmpeg until it ends (CaptureEnded) or this is cancelled; see the module docstring.
    `anchor_ns`: the station time the run counts from (default: now, as ffmpeg is started). `redact`:
    applied to every line of ffmpeg's stderr as it is read (a URL's password never leaves this run).
    `report_stalls`: a stall before a segment (:func:`stall_before`) is handed over with it
    (`stalled_from_ns`) and the segment keeps its stream-true span; else the segment takes up the slack.
    `on_progress`: called whenever ffmpeg's progress report shows it muxed more, with what it muxed
    (:mod:`.progress`: a source with a picture muxing sound only has lost its picture).
    `pass_fds`: descriptors ffmpeg inherits (the pipes of the composite's feeds), and no others.
    `meter`: told what the run's segment files hold (those listed and the one open) at every look; the run
    ends, a flood, once it says so (:mod:`.write_rate`: bytes per station second against the source's
    ceiling, whatever its timestamps say). `end_for`: asked at every look; a reason ends the run with it
    (the recording reserve stopping the largest writer: :mod:`.reserve`)."""
    make_dirs_durable(run_dir)  # private (0700), like the rest of the store
    anchor = anchor_ns if anchor_ns is not None else _now_ns()
    last_end_s = 0.0
    reader = SegmentListReader(run_dir / SEGMENT_LIST)
    listed: set[str] = set()
    stderr: deque[str] = deque(maxlen=STDERR_LINES)
    process = await asyncio.create_subprocess_exec(
        *(argv if on_progress is None else with_progress(argv)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL if on_progress is None else asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    # Named in the run directory, so that after a crash of the agent the next start can stop this
    # ffmpeg (still writing, orphaned) before it seals what the run left (stop_orphan).
    (run_dir / PID_FILE).write_text(f"{process.pid}\n")
    if on_started is not None:
        on_started(process.pid)
    if meter is not None:
        meter.begin_run()
    drain = asyncio.create_task(_keep_stderr(process, stderr, redact), name=f"ffmpeg-stderr-{process.pid}")
    progress: asyncio.Task[None] | None = None
    if on_progress is not None:
        assert process.stdout is not None
        progress = asyncio.create_task(read_progress(process.stdout, on_progress),
                                       name=f"ffmpeg-progress-{process.pid}")

    anchored = False
    last_end_ns: int | None = None  # station time the last listed segment ended
    stalled_total_ns = 0
    # (stream end, station end) of the run's first listed segment, and the stalls found since: the source's
    # clock rate is measured from there (source_clock_rate).
    rate_basis: tuple[float, int] | None = None
    stalled_since_basis_ns = 0
    # Counted from ffmpeg's start: the run's first listed segment is the flood's like the rest (review 29).
    flood_watch = FloodWatch((0.0, anchor))
    listed_bytes = 0  # what the listed segments held when listed (their pins)
    open_index = 0  # the segment ffmpeg writes now (seg-%06d, numbered from 0)

    def hand_over(segments: list[ListedSegment], closed_ns: int | None) -> None:
        nonlocal last_end_s, anchor, anchored, last_end_ns, stalled_total_ns, rate_basis
        nonlocal stalled_since_basis_ns, listed_bytes, open_index
        when = closed_ns if closed_ns is not None else _now_ns()
        if segments and not anchored:
            # Stream second 0 is the first frame, not ffmpeg's spawn: a source that delivers late (an RTSP
            # handshake, a camera warming up) would make every segment claim to be recorded early. The
            # first segment cannot end after ffmpeg listed it, so the run counts from there (at most the
            # listing's latency late, never seconds early).
            anchor = max(anchor, when - int(segments[0].end_s * 1e9))
            anchored = True
            write_anchor(run_dir, anchor)
        if not segments:
            return
        # Station times by the station's clock: a segment ends when ffmpeg listed it and starts where the
        # previous one ended; the source's own times stay as the list gave them (stream_*_s).
        first_start = last_end_ns if last_end_ns is not None else anchor + int(segments[0].start_s * 1e9)
        # Their lengths in station seconds, by the source's clock rate so far: a camera whose clock runs
        # slow lists each segment late by the same share, which is no stall (its drift is said apart).
        rate = source_clock_rate(rate_basis, last_end_s, last_end_ns, stalled_since_basis_ns)
        durations = [(seg.end_s - seg.start_s) / (rate or 1.0) for seg in segments]
        # A stall of the source under the liveness timeout: the time it delivered nothing is not the
        # next segment's (a second of pictures claiming eight seconds of the room), but a gap before it.
        stall_ns = 0
        if report_stalls and last_end_ns is not None:
            stall_ns = stall_before(first_start, when, durations, STALL_TOLERANCE_SHARE if rate is not None
                                    else STALL_TOLERANCE_SHARE_UNMEASURED)
        stalled_total_ns += stall_ns
        if rate_basis is not None:
            stalled_since_basis_ns += stall_ns
        else:
            rate_basis = (segments[-1].end_s, when)
        flood_watch.listed(max(last_end_s, segments[-1].end_s), when, stall_ns)
        spans = station_spans(first_start + stall_ns, when, durations)
        for number, (seg, (start_ns, end_ns)) in enumerate(zip(segments, spans, strict=True)):
            listed.add(seg.name)
            last_end_s = max(last_end_s, seg.end_s)
            pin = pin_file(run_dir, seg.name)
            listed_bytes += 0 if pin is None else pin[0]
            open_index = max(open_index, seg.index + 1)
            last_end_ns = end_ns
            write_station_times(run_dir, seg.name, start_ns, end_ns)
            on_segment(ClosedSegment(run_dir / seg.name, run_dir.name, seg.name, seg.index, seg.start_s,
                                     seg.end_s, when, anchor, pin=pin, station_ns=(start_ns, end_ns),
                                     stalled_from_ns=first_start if stall_ns and number == 0 else None,
                                     stalled_ns=stalled_total_ns))

    ended: str | None = None
    try:
        while process.returncode is None:
            try:
                hand_over(*reader.read_new())
            except SegmentListError as exc:
                ended = f"untrusted segment list: {exc}"
                break
            flood = flood_watch.rate(last_end_s, last_end_ns)
            if flood is not None:
                ended = (f"the source's stream runs {flood:.1f}x the station's clock (more than "
                         f"{RATE_MAX:g}x: no real-time source); the run ends before it floods the sealer")
                break
            if meter is not None:
                meter.written(listed_bytes + _size(run_dir / (SEGMENT_PATTERN % open_index)))
                if (written_rate := meter.flood()) is not None:
                    ended = f"{FLOOD_REASON}: {flood_reason(written_rate, meter.max_bytes_per_s)}"
                    break
            if end_for is not None and (reason := end_for()) is not None:
                ended = reason
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    await process.wait()
        if ended is None:
            await drain  # every line ffmpeg wrote before it exited
            ended = describe_exit(process.returncode, list(stderr))
    finally:
        if end_inputs is not None and process.returncode is None:
            # Pipes the agent writes (a GB/T 28181 channel's feed) end first: ffmpeg blocked reading a
            # stalled input restarts its read after SIGTERM and would be killed with its open segment
            # unfinished (an MP4 without its index); at the end of its input it closes the segment itself.
            try:
                await end_inputs()
            except Exception:  # the stop goes on whatever ending the inputs met
                log.exception("the inputs of ffmpeg %d could not be ended before its stop", process.pid)
        await _stop(process, stop_timeout_s)
        drain.cancel()
        if progress is not None:
            progress.cancel()
        await asyncio.gather(drain, *([progress] if progress is not None else []), return_exceptions=True)
        with contextlib.suppress(SegmentListError):
            hand_over(*reader.read_new())
        why = ended or "ffmpeg was stopped before it closed this segment"
        for leftover, written_ns in _unlisted(run_dir, listed):
            ended_ns = _now_ns()
            station: tuple[int, int] | None = None
            if last_end_ns is not None:  # from the last listed segment's end to ffmpeg's last write
                end = min(written_ns, ended_ns)
                station = (min(last_end_ns, end), end)
            on_segment(ClosedSegment(leftover, run_dir.name, leftover.name, _index(leftover.name), None, None,
                                     ended_ns, anchor, partial=why, after_s=last_end_s,
                                     written_ns=written_ns, station_ns=station))
    raise CaptureEnded(ended)


def pin_file(run_dir: Path, name: str) -> tuple[int, int, int, int] | None:
    """Pin a segment as ffmpeg listed it: its (size, mtime, ctime, inode), kept in the run directory
    (``pins``, one line per segment) so that a later sealing (held up by a full disk, or after a restart)
    checks the same file. None when it is not there to pin (the sealer says so)."""
    try:
        info = os.lstat(run_dir / name)
    except OSError:
        return None
    pin = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    with open(run_dir / PINS_FILE, "a", encoding="ascii") as pins:
        pins.write(f"{name} {' '.join(str(v) for v in pin)}\n")
    return pin


def read_pins(run_dir: Path) -> dict[str, tuple[int, int, int, int] | None]:
    """The pins :func:`pin_file` kept in `run_dir`. A line that is not one is skipped, as is a last line
    without its newline (the file is appended without fsync: a power cut can cut it short, and
    "seg-000000.mp4 18086 ... 22634" may be "... 2263427" cut). A name with two different pins maps to
    None: ffmpeg lists a segment once, so the second was written by someone else, and neither is trusted
    (the sealer refuses the segment)."""
    found: dict[str, tuple[int, int, int, int] | None] = {}
    try:
        text = (run_dir / PINS_FILE).read_text(encoding="ascii", errors="replace")
    except OSError:
        return found
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) == 5 and SEGMENT_NAME.fullmatch(parts[0]) and all(p.isdigit() for p in parts[1:]):
            size, mtime, ctime, inode = (int(p) for p in parts[1:])
            pin = (size, mtime, ctime, inode)
            found[parts[0]] = pin if found.get(parts[0], pin) == pin else None
    return found


def source_clock_rate(basis: tuple[float, int] | None, end_s: float, end_ns: int | None,
                      stalled_ns: int) -> float | None:
    """Stream seconds per station second of a source, from `basis` (stream end, station end of the run's
    first listed segment) to the last one (`end_s`, `end_ns`), less the `stalled_ns` of the stalls found
    meanwhile, bounded by RATE_MIN and RATE_MAX; None until RATE_BASIS_MIN_S stream seconds are behind
    it."""
    if basis is None or end_ns is None:
        return None
    stream_s = end_s - basis[0]
    station_s = (end_ns - basis[1] - stalled_ns) / 1e9
    if stream_s < RATE_BASIS_MIN_S or station_s <= 0:
        return None
    return min(RATE_MAX, max(RATE_MIN, stream_s / station_s))


def source_flood_rate(basis: tuple[float, int] | None, end_s: float, end_ns: int | None,
                      stalled_ns: int, burst_s: float = RATE_FLOOD_BURST_S) -> float | None:
    """The rate (stream seconds per station second, unbounded) of a source whose stream ran ahead of
    RATE_MAX times the station's clock by more than `burst_s` since `basis` (as
    :func:`source_clock_rate`); None for any other source."""
    if basis is None or end_ns is None:
        return None
    stream_s = end_s - basis[0]
    station_s = max(0.0, (end_ns - basis[1] - stalled_ns) / 1e9)
    if stream_s - RATE_MAX * station_s <= burst_s:
        return None
    return stream_s / max(station_s, 0.001)


class FloodWatch:
    """The flood rule of one run (see CONNECT_WINDOW_S): a bounded burst as the source connects, then
    no more than RATE_FLOOD_BURST_S ahead of RATE_MAX times the station's clock."""

    def __init__(self, start: tuple[float, int]) -> None:
        # (stream, station) the rate is judged from: the run's start (stream second 0 at ffmpeg's start),
        # so that its first listed segment counts too (review 29: a run's first listing, up to two
        # segments of a flood, went uncounted when the basis was its end).
        self.basis: tuple[float, int] = start
        self.stalled_ns = 0  # stalls found since the basis (not the source's time)
        # The connect window runs from the run's first listing (a camera slow to connect has its burst
        # after it): None until then.
        self.window_from_ns: int | None = None
        self.connecting = True

    def listed(self, end_s: float, end_ns: int, stalled_ns: int) -> None:
        """Segments were listed up to `end_s` (stream) at `end_ns` (station), after `stalled_ns` of stall."""
        if self.window_from_ns is None:
            self.window_from_ns = end_ns
        self.stalled_ns += stalled_ns

    def rate(self, end_s: float, end_ns: int | None) -> float | None:
        """The source's rate if it floods (its run is to end), else None."""
        if end_ns is None or self.window_from_ns is None:
            return None
        if self.connecting:
            flood = source_flood_rate(self.basis, end_s, end_ns, self.stalled_ns,
                                      RATE_FLOOD_BURST_S + CONNECT_BURST_MAX_S)
            if flood is not None or (end_ns - self.window_from_ns - self.stalled_ns) / 1e9 < CONNECT_WINDOW_S:
                return flood  # over the window's whole allowance (no burst), or still within the window
            # The window is over: what the connection sent at once is behind; judged from here on.
            self.connecting = False
            self.basis, self.stalled_ns = (end_s, end_ns), 0
        return source_flood_rate(self.basis, end_s, end_ns, self.stalled_ns)


def stall_before(start_ns: int, listed_ns: int, stream_durations_s: Sequence[float],
                 tolerance_share: float = STALL_TOLERANCE_SHARE) -> int:
    """Station nanoseconds before the first of segments listed together at `listed_ns` (the previous one
    ended at `start_ns`) that their durations (in station seconds) do not account for, when more than the
    tolerance (max(STALL_TOLERANCE_S, `tolerance_share` of the first one's duration)): the source
    delivered nothing meanwhile. 0 within the tolerance (the first segment takes up the slack)."""
    durations = [max(0.0, d) for d in stream_durations_s]
    if not durations:
        return 0
    excess_ns = (listed_ns - start_ns) - int(sum(durations) * 1e9)
    tolerance_ns = int(max(STALL_TOLERANCE_S, tolerance_share * durations[0]) * 1e9)
    return excess_ns if excess_ns > tolerance_ns else 0


def station_spans(
    start_ns: int, listed_ns: int, stream_durations_s: Sequence[float]
) -> list[tuple[int, int]]:
    """Station times of segments ffmpeg listed together at `listed_ns`, the first starting at `start_ns`
    (where the previous one ended): consecutive, the last ending when they were listed. Each lasts its
    stream duration, counted back from the listing, the first taking up any slack; when the station's
    interval is shorter than their stream durations (a source that buffered and sent a burst, a clock
    running fast), each is shortened in proportion, so none is ever of zero or negative length while its
    stream duration is not."""
    total_ns = max(0, listed_ns - start_ns)
    durations = [max(0.0, d) for d in stream_durations_s]
    stream_ns = sum(durations) * 1e9
    if stream_ns > total_ns and stream_ns > 0:
        lengths = [int(d * 1e9 * total_ns / stream_ns) for d in durations]
    else:
        lengths = [int(d * 1e9) for d in durations]
        if lengths:
            lengths[0] += total_ns - sum(lengths)  # the slack: the first segment's start was the last end
    spans = []
    at = start_ns
    for index, length in enumerate(lengths):
        end = listed_ns if index == len(lengths) - 1 else at + length
        spans.append((at, max(at, end)))
        at = max(at, end)
    return spans


_FFMPEG_CONTEXT = re.compile(r"\[([A-Za-z0-9_:-]{1,32}) @ 0x[0-9a-f]{1,16}\]")


def describe_exit(returncode: int | None, stderr: Sequence[str]) -> str:
    """Why ffmpeg ended, for a gap's reason (the operator reads it on the page, the court on the ledger):
    its status, or the signal that killed it by name, then its last warnings, each once (ffmpeg repeats a
    warning for every packet) and without its memory addresses (``[mp4 @ 0x55d0...]`` is ``[mp4]``)."""
    if returncode is not None and returncode < 0:
        try:
            head = f"ffmpeg was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            head = f"ffmpeg was killed by signal {-returncode}"
    else:
        head = f"ffmpeg exited with status {returncode}"
    lines: list[list[Any]] = []  # [text, repeats]
    for raw in stderr:
        text = _FFMPEG_CONTEXT.sub(lambda m: f"[{m[1]}]", printable(raw).strip())
        if not text:
            continue
        same = next((line for line in lines if line[0] == text), None)
        if same is not None:
            same[1] += 1
        else:
            lines.append([text, 1])
    shown = [text if count == 1 else f"{text} (x{count})" for text, count in lines[-3:]]
    return head + (f": {' | '.join(shown)}" if shown else "")


def write_station_times(run_dir: Path, name: str, start_ns: int, end_ns: int) -> None:
    """Keep a listed segment's station times beside it (``station_times``), for a resumed session that
    seals what the run left (:func:`read_station_times`)."""
    with open(run_dir / STATION_TIMES_FILE, "a", encoding="ascii") as times:
        times.write(f"{name} {start_ns} {end_ns}\n")


def read_station_times(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The station times :func:`write_station_times` kept in `run_dir` (a line that is not one is
    skipped, as is one whose end precedes its start, and a last line without its newline: a crash cut it
    short, and "seg-000007.mp4 4000 50" may be "... 5000" cut)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        text = (run_dir / STATION_TIMES_FILE).read_text(encoding="ascii", errors="replace")
    except OSError:
        return found
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) == 3 and SEGMENT_NAME.fullmatch(parts[0]) and parts[1].isdigit() and parts[2].isdigit():
            start, end = int(parts[1]), int(parts[2])
            if start <= end:
                found[parts[0]] = (start, end)
    return found


def write_anchor(run_dir: Path, anchor_ns: int) -> None:
    """Keep a run's anchor (its stream second 0 in station time) beside its segments, for a resumed
    session that seals what the run left (:func:`read_anchor`)."""
    (run_dir / ANCHOR_FILE).write_text(f"{anchor_ns}\n")


def read_anchor(run_dir: Path) -> int | None:
    try:
        return int((run_dir / ANCHOR_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


async def _stop(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM (ffmpeg closes and lists its open segment), SIGKILL after `timeout_s`."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout_s):
            await process.wait()
        return
    except TimeoutError:
        log.warning("ffmpeg %d did not stop within %.0f s of SIGTERM: killed", process.pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


async def _keep_stderr(
    process: asyncio.subprocess.Process, lines: deque[str], redact: Callable[[str], str]
) -> None:
    """Keep ffmpeg's last stderr lines (shown only when it fails), redacted (ffmpeg names an RTSP URL
    with its credentials); never let the pipe fill up."""
    assert process.stderr is not None
    while True:
        raw = await process.stderr.readline()
        if not raw:
            return
        text = raw.decode("utf-8", errors="replace").strip()
        if text:
            # Redacted whole, before the cut: a cut could split a password from the URL naming it.
            lines.append(redact(text)[:300])


def _unlisted(run_dir: Path, listed: set[str]) -> list[tuple[Path, int]]:
    """Segment files in `run_dir` the list does not name, with their mtimes (empty files left out)."""
    found = []
    for name in sorted(os.listdir(run_dir)):
        if name in listed or not SEGMENT_NAME.fullmatch(name):
            continue
        path = run_dir / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if info.st_size > 0 and stat.S_ISREG(info.st_mode):
            found.append((path, info.st_mtime_ns))
    return found


def _size(path: Path) -> int:
    """The size of `path` (0 when it is not there yet, or not a regular file)."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _index(name: str) -> int:
    return int(name[4:10])


def _now_ns() -> int:
    return time.time_ns()


async def stop_orphan(run_dir: Path, timeout_s: float) -> str | None:
    """Stop the ffmpeg a crashed agent left writing into `run_dir` (named by its pid file and found with
    that directory on its command line, so a reused pid is never signalled): SIGTERM, then SIGKILL after
    `timeout_s`. What was done, or None when no such process runs."""
    try:
        pid = int((run_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if os.fsencode(str(run_dir / SEGMENT_LIST)) not in cmdline.split(b"\0"):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running(pid):
            return f"stopped the orphaned ffmpeg {pid} (SIGTERM)"
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"killed the orphaned ffmpeg {pid} (no exit {timeout_s:g} s after SIGTERM)"


def _running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, whose parent is gone or not reaping, counts as ended)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"
