"""When GB/T 28181 recordings are downloaded: the link between the platform (edge.gb28181.platform), the
download policy (edge.gb28181.policy) and the downloads (edge.sources.gb28181.downloads).

`GbDownloadScheduler` listens to the platform's devices coming online (`device_online`, registered with
`GbPlatform.add_online_listener`) and, in its supervised task (`run`), to the schedule window opening.
For a device the policy wants, while downloads may run (`on-registration`: always; `schedule`: inside
the window), one pass (`_pass`) does, one device at a time per device and at most `concurrency` downloads
over the whole station:

1. the device's channels from its Catalog (those the policy names, among them; an id that is not 20
   digits is not asked, a ledger error); a Catalog that fails falls back to the channels configured for
   the device, and with none configured is a ledger error;
2. per channel, RecordInfo over the policy's range (`lookback_days` back from now) in the device's own
   time: shifted by its measured clock offset (a recorder a year behind stamps an hour-old recording a
   year ago), plus each stretch of it an earlier clock of the device stamped before the station set it,
   shifted by that clock's offset (`_device_ranges`); with no offset measured, the station's range, and
   the operator view says so (`listing_clock`). One that fails is a ledger error. An item whose DeviceID
   is neither the channel asked about nor another channel this pass downloads from is not downloaded
   (counted, a ledger error showing its DeviceID escaped). A recording listed as ending after the device's
   now (the station's clock in the devices' zone, corrected by the measured clock offset, plus
   `FUTURE_MARGIN`) is left for a later pass: still being recorded, or the device's clock is wrong (one
   ending more than `ABSURD_FUTURE` ahead is a ledger error). These recurring problems go to the ledger
   limited (edge.custody.entry_limits: the first, then once in six hours with the repeats counted),
   and so does the recovery of a failing Catalog or RecordInfo (`"resolved": true`);
3. the listed recordings to `GbDownloads.download`, which skips the ones already sealed complete (their
   keys come from the recording alone, so a restart re-queries and downloads only what is missing; one
   sealed incomplete is downloaded again, a few times at most, then given up on the ledger) and sends
   each other one through the one ingest pipeline (raw PS + MP4).

Each Download session goes through `GbPlatform.download`; its result is checked (`completeness`, pure):
complete only if the device ended the session itself (MediaStatus 121, its BYE, its media stopping), the
received video's span (read signed in the 33-bit PTS space, so an encoder restart is no span rather than
~26.5 hours; the receiver's own measure when it gives one) is neither short of the recording's time range
(by more than `SHORT_TOLERANCE_S`, a few seconds whatever the length) nor far beyond it
(`overlong`: media that is not the recording's came with it), no RTP packet was lost on the way (`lossy`:
the copy has holes, fetched again), and the bytes reach the `a=filesize` the device announced. Anything
else is recorded as incomplete, and why, in the items' facts; the items are sealed all the same (what
came is evidence of what came).

A device that goes offline ends the pass (the rest waits for its next online); a download it cut short is
sealed as it came, marked `interrupted`, and is not one of the recording's attempts. Progress, per device
(state, the recording in progress, counts of done, skipped, failed, incomplete, interrupted, given up,
left for later as ending in the future, items of other channels, the last pass), is `snapshot()`, shown
by the platform's status section and `edge gb28181 devices`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.gb28181.manscdp import MAX_ITEMS_PER_ANSWER, ItemProblem, ManscdpError, RecordItem, items_of
from edge.custody.canonical import MAX_SAFE_INTEGER
from edge.custody.entry_limits import LimitedEntries
from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.gb28181.media import DEFAULT_MAX_RECORDING_BYTES, DEFAULT_UNLISTED_RECORDING_BYTES
from edge.gb28181.platform import GbPlatform
from edge.gb28181.policy import DownloadPolicy, device_ranges
from edge.gb28181.queries import QueryError
from edge.gb28181.registry import MAX_CLOCK_OFFSET_S, wall_text
from edge.gb28181.sessions import EndReason, SessionError, SessionResult
from edge.ingest.pipeline import IngestPipeline
from edge.sources.gb28181.download_space import DownloadSpace
from edge.sources.gb28181.downloads import (
    DeviceGone,
    FailedPasses,
    GbDownloads,
    PassEnded,
    PassFailures,
    SpaceBooked,
    StoreBelowReserve,
    Transfer,
    WindowClosed,
)
from edge.sources.gb28181.give_up_span import TryTimes
from edge.sources.gb28181.recordings import (
    INTERRUPTED_DEVICE_OFFLINE,
    INTERRUPTED_DISK_FULL,
    INTERRUPTED_DISK_SLOW,
    INTERRUPTED_STATION_STOPPED,
    GbRecordings,
    RecordingRef,
    display_text,
)

log = logging.getLogger(__name__)

SCHEDULE_CHECK_S = 30.0
# A recording whose received video spans less than its time range by more than this is incomplete. What a
# whole file may legitimately lack, none of it growing with the file's length: RecordInfo times are whole
# seconds (the listed range may exceed the media by up to a second at each end, truncated), and the PTS
# span of N frames is (N-1) frame intervals (one frame: 40 ms at 25 fps, 1 s at the 1 fps of a time-lapse
# recorder): 2 s; and an encoder that cuts its files on a keyframe near, not at, the listed time lacks at
# most one GOP (1-2 s at the usual 25-50 frames, 4 s on low-bitrate settings): KEYFRAME_CUT_S. Nothing
# more, and no share of the length: review 17 found 5 % sealed a transfer that stalled in its last 29 s of
# 600 as complete, review 20 found 1 % did the same with the last 35 s of an hour (many devices send no
# 121 and no a=filesize, and an `idle` end is no proof of the end by itself). A stall within the last
# SHORT_TOLERANCE_S of a recording is still not seen without 121 or a=filesize (README: known limits).
KEYFRAME_CUT_S = 4.0
SHORT_TOLERANCE_S = 2.0 + KEYFRAME_CUT_S
# A recording whose received video spans more than its time range by more than this is not that recording
# (the device went on sending: live after the file, another file appended). The same whole seconds and
# keyframe cut (after the listed end, this time) at least; and a share of the length, since here a wrong
# verdict costs the other way: a copy with media beyond the recording loses nothing (every byte received
# is sealed, and the receiver ends the stream past length + 30 s + 5 %), while a whole copy flagged
# overlong is downloaded again and given up as incomplete.
OVERLONG_TOLERANCE_S = SHORT_TOLERANCE_S
OVERLONG_TOLERANCE_FRACTION = 0.05
# The PS of a recording is not smaller than the file the device stores (PS adds headers, G.711 is larger
# than AAC); under this share of a=filesize the transfer was cut short.
FILESIZE_MIN_SHARE = 0.9
PTS_HZ = 90000
PTS_MODULO = 1 << 33
# Sessions the device itself ended: MediaStatus 121, its BYE, or its media stopping (its TCP connection
# closed, or no packet for idle_timeout_s: many devices send no 121, wvp #1545). Every other end (the
# station stopped the session: the device went offline or the station stopped; a byte or time limit; an
# error; the stream running past the recording's end) proves nothing about the recording being whole.
DEVICE_ENDS = frozenset({EndReason.FILE_END.value, EndReason.DEVICE_BYE.value})
DEVICE_MEDIA_ENDS = frozenset({"idle", "closed"})
# Receiver ends that mean what was received was not all written (a refused write, the disk guard): such a
# copy is never complete, whoever ended the session (review 28).
RECEIVER_FAILURES = frozenset({"error", "disk-full", "disk-slow"})
MAX_CHANNELS = 64
# GB/T 28181 ids: digits 11-13 are the type (2016 Annex D, table D.1). A Catalog lists more than video
# channels: these types hold no video and are not asked for recordings: 114 decoder, 115 video matrix,
# 116 audio matrix, 117 alarm controller, 133 display, 134/135 alarm input/output, 136/137 voice
# input/output, 2xx platform servers, business groups (215) and virtual organisations (216), 3xx/4xx
# users, 5xx other platforms. Every other type is asked: the cameras, IPC and encoders (131, 132, 113),
# DVR/NVR/HVR, mobile recorders (138), and the codes the standard leaves to extensions, since devices are
# given whatever ids their owner assigned (keying on a video type alone would drop real recorders).
NOT_VIDEO_TYPES = frozenset({114, 115, 116, 117, 133, 134, 135, 136, 137})
NOT_VIDEO_TYPE_RANGES = (range(200, 600),)
INTERRUPTIONS = {
    INTERRUPTED_DEVICE_OFFLINE: "the device went offline during the download",
    INTERRUPTED_STATION_STOPPED: "the station stopped the download (it was stopping)",
    INTERRUPTED_DISK_FULL: "the station's disk ran low during the download (the store's reserve)",
    INTERRUPTED_DISK_SLOW: "the station's disk fell behind the UDP stream (a stalled or loaded disk)",
}
# An incomplete RecordInfo answer is asked again over halves of its range, at most this many times deep,
# and not below this range (an hour of a recorder is far below one answer's bound).
MAX_RECORD_INFO_SPLITS = 10
MIN_RECORD_INFO_RANGE = timedelta(hours=1)
MAX_RANGES_ON_LEDGER = 32
MAX_FOREIGN_NAMED = 8
MAX_FOREIGN_KEPT = 1024  # DeviceIDs of other channels' items kept to name on the ledger (the rest counted)
MAX_UNREADABLE_NAMED = 8  # unreadable RecordInfo items described on the ledger entry
# Recordings one channel's pass holds at most (about 0.9 KiB each): once there, no further range is asked
# and the next pass begins where this one stopped. A pass may hold one answer more (MAX_ITEMS_PER_ANSWER).
MAX_LISTED_PER_PASS = MAX_ITEMS_PER_ANSWER
MAX_LISTING_RESUMES = 4096  # channels whose next pass resumes where the last stopped (the oldest forgotten)
# A pass whose device's clock is not measured yet waits for the platform's own measurement this many
# query timeouts at most (its description asks DeviceInfo, Catalog, then DeviceStatus), looking this often.
CLOCK_WAIT_QUERIES = 3
CLOCK_POLL_S = 0.2
MAX_SPOOL_NAMED = 32  # names of the files the start removed from the spool, on its ledger entry
CHANNEL_ID = re.compile(r"[0-9]{20}")
# A recording ending later than the device's now plus this is left for a later pass (RecordInfo times are
# whole seconds; the clock offset is measured to a second or two).
FUTURE_MARGIN = timedelta(minutes=1)
# One ending later than this after the device's now is no recording in progress: a ledger error.
ABSURD_FUTURE = timedelta(days=1)
# The raw PS and MP4 of downloads in progress, under the store's root (removed once sealed).
GB28181_SPOOL_DIR = "gb28181-spool"
# What a download leaves in the spool when a stop or crash interrupts it: the raw PS and the MP4
# (edge.sources.gb28181.downloads names them download-<uuid hex>.ps/.mp4) and the conversion's temp files
# beside the MP4 (edge.gb28181.convert.convert_recording: .<mp4 name>.part.mp4, .nut and .audio).
SPOOL_LEFTOVER = re.compile(r"download-[0-9a-f]{32}\.(?:ps|mp4)"
                            r"|\.download-[0-9a-f]{32}\.mp4\.(?:part\.mp4|nut|audio)")


def is_video_channel(channel_id: str) -> bool:
    """Whether a Catalog item may hold recordings, by its id's type code (`NOT_VIDEO_TYPES`). An id that is
    not 20 digits is not judged here (the caller refuses it, loudly)."""
    if not CHANNEL_ID.fullmatch(channel_id):
        return True
    code = int(channel_id[10:13])
    return code not in NOT_VIDEO_TYPES and not any(code in r for r in NOT_VIDEO_TYPE_RANGES)


def case_block_for_downloads(defaults: Any) -> dict[str, Any]:
    """The manifest's `case` block for downloaded recordings: the station's case defaults (a download
    has no officer at a bay; case fields are set later by `edge tag`, each change a ledger entry)."""
    return {"case_number": defaults.case_number, "location": defaults.location,
            "collector": defaults.collector, "subject": defaults.subject, "important": False,
            "category": defaults.category, "retention": defaults.retention}


def video_span_s(outcome: Any) -> tuple[float | None, str | None]:
    """The video time a transfer's timestamps establish, and why it is not to be trusted (None: it is).

    The receiver's own measure when it has one (edge.gb28181.media: `video_run_span_s`, the longest run
    of video PTS that neither stepped back beyond B-frame reordering nor jumped far ahead;
    `video_pts_restarts`, the runs it broke into, counted: any makes the span untrustworthy). Else from
    the first and the last frame's PTS only, their difference read signed in the 33-bit PTS space: a wrap
    (a stream starting near 2**33) counts forward, a last PTS below the first (an encoder that restarted its
    clock mid-file) is no span at all, never the ~26.5 hours the modulo would make of it."""
    jumps = getattr(outcome, "video_pts_restarts", None)
    measured = getattr(outcome, "video_run_span_s", None)
    distrust = (f"the video timestamps restarted or jumped {jumps} time(s) (an encoder restart?): the "
                "longest unbroken run is counted") if jumps else None
    if measured is not None:
        return round(float(measured), 3), distrust
    first, last = getattr(outcome, "first_video_pts", None), getattr(outcome, "last_video_pts", None)
    if first is None or last is None:
        return None, distrust
    half = PTS_MODULO // 2
    signed = ((last - first + half) % PTS_MODULO) - half
    if signed < 0:
        return 0.0, distrust or (f"the last video frame's timestamp is {-signed / PTS_HZ:g} s before the "
                                 "first's (an encoder restart?): the span received cannot be told")
    return round(signed / PTS_HZ, 3), distrust


def ended_by(result: SessionResult) -> str:
    """Who or what ended the session, as the manifest says it."""
    reason = str(getattr(result.end_reason, "value", result.end_reason))
    media = getattr(result.outcome, "ended", None)
    if reason == EndReason.RECEIVER_ENDED.value and media is not None:
        return f"{reason}: {getattr(media, 'value', media)}"
    return reason


def device_ended(result: SessionResult) -> bool:
    """Whether the device ended the session itself (`DEVICE_ENDS`, `DEVICE_MEDIA_ENDS`)."""
    reason = str(getattr(result.end_reason, "value", result.end_reason))
    if reason in DEVICE_ENDS:
        return True
    ended = getattr(result.outcome, "ended", None)
    media = str(getattr(ended, "value", ended))
    return reason == EndReason.RECEIVER_ENDED.value and media in DEVICE_MEDIA_ENDS


def completeness(result: SessionResult, ref: RecordingRef, expected_s: float | None) -> dict[str, Any]:
    """Whether a Download brought the whole recording and nothing else (pure). Complete only when all hold:
    the device ended the session itself (`device_ended`); the received video's span (`video_span_s`) is
    neither short of the recording's time range (`expected_s`, from RecordInfo) nor far beyond it (then
    `overlong`: the media is not that recording's alone); the timestamps are trustworthy; no RTP packet
    was lost and the numbering never jumped (else `lossy`: the copy has holes, its gaps are on the
    ledger, and the recording is downloaded again); the bytes reach the `a=filesize` the device
    announced; and the receiver wrote all it received (it did not end `error` or `disk-full`, and the raw
    PS holds `bytes`: a last write refused after the device's 121 is no complete copy, review 28)."""
    outcome = result.outcome
    reasons: list[str] = []
    received_s, distrust = video_span_s(outcome)
    overlong = False
    if distrust is not None:
        reasons.append(distrust)
    if expected_s is None or expected_s < 0:
        reasons.append("the recording's time range is not known")
    elif received_s is None:
        reasons.append("no video timestamps received")
    else:
        over = max(OVERLONG_TOLERANCE_S, OVERLONG_TOLERANCE_FRACTION * expected_s)
        if received_s + SHORT_TOLERANCE_S < expected_s:
            reasons.append(f"video spans {received_s:g} s of the recording's {expected_s:g} s")
        elif received_s > expected_s + over:
            overlong = True
            reasons.append(f"video spans {received_s:g} s, beyond the recording's {expected_s:g} s: media "
                           "that is not this recording's came with it")
    lost = int(getattr(outcome, "lost_packets", 0) or 0)
    jumps = len(getattr(outcome, "restarts", ()) or ())
    lossy = bool(lost or jumps)
    if lossy:
        # The span may be whole while its middle is not: lost RTP packets (a UDP link dropping) are holes
        # in the recording (their `gap` entries say where); the recording is fetched again.
        reasons.append(f"{lost} RTP packet(s) lost in transfer" + (
            f", the RTP numbering jumped {jumps} time(s) (an outage or a device restart)" if jumps else "")
            + ": the copy has holes")
    announced = result.file_size_bytes
    received = int(getattr(outcome, "bytes", 0))
    if announced and announced > MAX_SAFE_INTEGER:
        announced = None  # no size (review 22): garbage in the field; kept as text in the facts
    if announced and received < FILESIZE_MIN_SHARE * announced:
        reasons.append(f"{received} bytes received, the device announced a=filesize {announced}")
    # A receiver that ended `error` or `disk-full` did not write everything it received: its last buffered
    # write, made at close after the device's 121 or BYE, may have been refused (review 28). Whatever the
    # session's end reason, such a copy is never complete; the bytes the file holds are what count.
    media_end = str(getattr(getattr(outcome, "ended", None), "value", getattr(outcome, "ended", "")))
    written = getattr(outcome, "bytes_written", None)
    if media_end in RECEIVER_FAILURES:
        reasons.append(f"the media receiver ended {media_end}: "
                       f"{display_text(str(getattr(outcome, 'detail', '')), 200)}")
    if written is not None and written < received:
        reasons.append(f"the raw PS holds {written} of the {received} bytes received (a write was refused)")
    by_device = device_ended(result)
    if not by_device:
        reasons.append(f"the session ended by {ended_by(result)}, not by the device: the recording is not "
                       "known to have ended")
    facts: dict[str, Any] = {"complete": not reasons, "received_video_s": received_s,
                             "expected_s": expected_s, "ended_by": ended_by(result)}
    if overlong:
        facts["overlong"] = True
    if lossy:
        facts["lossy"] = True
    if reasons:
        facts["incomplete"] = "; ".join(reasons)
        if result.end_reason is EndReason.FILE_END:
            facts["incomplete"] += " (the device said the file had ended: MediaStatus 121)"
    return facts


@dataclass
class DeviceProgress:
    """The downloads of one device, for the operator view."""

    state: str = "idle"  # idle | listing | downloading | waiting
    current: str | None = None
    listed: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    incomplete: int = 0
    given_up: int = 0  # listed recordings not downloaded again (downloads.given_up_because)
    interrupted: int = 0  # downloads cut short by the device going offline or the station stopping
    # not started for room: cut short by the disk guard before and the disk still tight, or the room it
    # needs booked by other writers (another download, a docking copy: edge.sources.gb28181.download_space)
    waiting_for_room: int = 0
    last_pass_at: str | None = None
    last_problem: str | None = None
    record_info_complete: bool | None = None
    future: int = 0  # listed as ending after the device's now: left for a later pass (`_finished`)
    wrong_channel: int = 0  # listed under a channel with another channel's DeviceID: not downloaded
    listing_clock: str | None = None  # the clock RecordInfo was asked in (`_device_ranges`)
    not_video_channels: int = 0  # Catalog items whose id's type code holds no video: not asked
    channels_left_out: int = 0  # video channels beyond MAX_CHANNELS: not asked (a ledger error)
    unreadable_records: int = 0  # RecordInfo items the codec could not read: not downloaded (a ledger error)

    def view(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ChannelListing:
    """What one channel's RecordInfo gave: its recordings, whether the list is whole, how many items
    named another channel (not downloaded) and how many could not be read (not downloaded either)."""

    recordings: list[RecordingRef]
    complete: bool
    wrong_channel: int = 0
    unreadable: int = 0


@dataclass
class _DeviceRun:
    task: asyncio.Task[None] | None = None
    again: bool = False


class GbDownloadScheduler:
    """See the module docstring. `pipeline` is read when a pass starts (the agent makes it after the
    platform); `now` is the UTC wall clock (the seam of the schedule window)."""

    def __init__(
        self,
        platform: GbPlatform,
        policy: DownloadPolicy,
        pipeline: Callable[[], IngestPipeline | None],
        *,
        spool: Path,
        station_id: str,
        case: Mapping[str, Any],
        concurrency: int = 2,
        clock_trusted: Callable[[], bool] = lambda: False,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        check_interval_s: float = SCHEDULE_CHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.policy = policy
        self._pipeline = pipeline
        self.spool = spool
        self.station_id = station_id
        self.case = dict(case)
        self._slots = asyncio.Semaphore(concurrency)
        self._clock_trusted = clock_trusted
        self._now = now
        self._check_interval_s = check_interval_s
        self._runs: dict[str, _DeviceRun] = {}
        self.progress: dict[str, DeviceProgress] = {}
        self.passes_done = 0
        self.pass_ended = asyncio.Condition()
        self.problems = LimitedEntries(monotonic)
        # Where a channel's next listing begins, when its last pass stopped at MAX_LISTED_PER_PASS:
        # (device, channel) -> (how many ranges that pass had, the range it stopped in, the time in it).
        self._listing_resume: dict[tuple[str, str], tuple[int, int, datetime]] = {}
        self._spool_removed: list[tuple[str, int]] = []  # by the start, not on the ledger yet
        # Downloads that failed with nothing, per recording (bounded); its give-up spans days on the
        # station's clock, the one the schedule and the ledger use, and on the monotonic clock (review 21).
        self.failed_passes = FailedPasses(lambda: self._now().timestamp(), monotonic)
        # When this run's tries that the station's disk cut short ended (stuck disk-full, disk-slow): their
        # give-up spans days of such tries too, on the same clocks.
        self.try_times = TryTimes(lambda: self._now().timestamp(), monotonic)
        # Devices whose last pass was refused up front for room other writers booked (`SpaceBooked`): a new
        # pass is asked for them when a download ends (`_download_ended`), once each, since nothing else
        # would ask one while they stay registered (the online listener fires on a transition: review revgb).
        self._refused_for_room: set[str] = set()
        # How many downloads of each device have ended: a refusal racing another device's is tried again.
        self._downloads_ended: dict[str, int] = {}
        platform.add_online_listener(self.device_online)

    def snapshot(self) -> dict[str, Any]:
        return {device_id: p.view() for device_id, p in sorted(self.progress.items())}

    # -- when ------------------------------------------------------------------------------------------

    def device_online(self, device_id: str) -> None:
        """The platform's online listener: a pass for the device if the policy wants it now."""
        if self.policy.wants_device(device_id) and self.policy.may_download_now(self._now()):
            self.request(device_id)

    def _download_ended(self, ended_by: str) -> None:
        """A download ended and gave up its booking: a pass for each device refused for room meanwhile
        (registered online, the policy wanting it now). Still short, it is refused again (its ledger entry
        limited) and waits for the next download's end: one pass per device per download ended at most."""
        self._downloads_ended[ended_by] = self._downloads_ended.get(ended_by, 0) + 1
        refused, self._refused_for_room = sorted(self._refused_for_room), set()
        for device_id in refused:
            device = self.platform.registry.get(device_id)
            if device is not None and device.online:
                self.device_online(device_id)

    def _others_ended(self, device_id: str) -> int:
        """How many downloads of other devices have ended so far."""
        return sum(self._downloads_ended.values()) - self._downloads_ended.get(device_id, 0)

    def request(self, device_id: str) -> None:
        """A pass for `device_id`; one already running is followed by one more (the device came back)."""
        run = self._runs.setdefault(device_id, _DeviceRun())
        if run.task is not None and not run.task.done():
            run.again = True
            return
        run.again = False
        run.task = asyncio.ensure_future(self._device(device_id, run))

    async def run(self) -> None:
        """The supervised task: opens the schedule window for online devices; stops the passes at the end."""
        was_open = False
        removed = self._clear_spool()
        if removed:
            self._spool_removed = removed
            pipeline = self._pipeline()
            if pipeline is not None:
                await self._spool_entry(pipeline)
        try:
            while True:
                is_open = self.policy.may_download_now(self._now())
                if is_open and not was_open and self.policy.when == "schedule":
                    for device in self.platform.registry.devices():
                        if device.online and self.policy.wants_device(device.device_id):
                            self.request(device.device_id)
                was_open = is_open
                await asyncio.sleep(self._check_interval_s)
        finally:
            tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _spool_entry(self, pipeline: IngestPipeline) -> None:
        """What the start removed from the spool (`_clear_spool`), as one `error` entry of stage `spool`:
        how many files and bytes, the raw PS among them (received media), their names (the scheduler's
        own, escaped all the same), at most `MAX_SPOOL_NAMED`."""
        removed, self._spool_removed = self._spool_removed, []
        if not removed:
            return
        raw = [(name, size) for name, size in removed if name.endswith(".ps")]
        raw_bytes = sum(n for _, n in raw)
        data = {
            "source": "gb28181", "stage": "spool",
            "reason": f"the start removed {len(removed)} file(s) of downloads a stop or crash interrupted "
                      f"from the download spool, {len(raw)} of them raw PS holding {raw_bytes} bytes of "
                      "received media, never sealed; which recording each was is not kept in the spool, and "
                      "the recordings are downloaded again at their devices' next pass",
            "files": len(removed), "bytes": sum(n for _, n in removed),
            "raw_ps_files": len(raw), "raw_ps_bytes": raw_bytes,
            "names": [display_text(name, 80) for name, _ in removed[:MAX_SPOOL_NAMED]],
            "names_not_listed": max(0, len(removed) - MAX_SPOOL_NAMED),
        }
        log.warning("gb28181: %s", data["reason"])
        repository = pipeline.repository
        await pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))

    def _clear_spool(self) -> list[tuple[str, int]]:
        """Downloads a stop or crash interrupted are not sealed: their files go, the start says so on the
        ledger (`_spool_entry`: at once, or at the first pass when the pipeline is not there yet), and the
        recordings are downloaded again at the device's next pass. Only this module's own names
        (`SPOOL_LEFTOVER`: the raw PS and MP4 of a download, and the temp files edge.gb28181.convert makes
        beside the MP4), only regular files (never a symlink's target), only directly in the spool (read
        through a descriptor of the spool directory itself, opened without following a symlink)."""
        removed: list[tuple[str, int]] = []
        running = any(r.task is not None and not r.task.done() for r in self._runs.values())
        if running:
            return removed
        try:
            dir_fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return removed
        except OSError as exc:
            log.warning("gb28181: the download spool %s is not cleared: %s", self.spool, exc.strerror or exc)
            return removed
        try:
            for name in os.listdir(dir_fd):
                if not SPOOL_LEFTOVER.fullmatch(name):
                    continue
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                removed.append((name, info.st_size))
                log.info("gb28181: an interrupted download's %s removed from the spool", name)
        finally:
            os.close(dir_fd)
        return removed

    async def _device(self, device_id: str, run: _DeviceRun) -> None:
        progress = self.progress.setdefault(device_id, DeviceProgress())
        while True:
            self._refused_for_room.discard(device_id)  # this pass is its new try
            ended_before = self._others_ended(device_id)
            try:
                await self._pass(device_id, progress)
            except PassEnded as exc:
                if isinstance(exc, SpaceBooked):
                    if self._others_ended(device_id) != ended_before:
                        run.again = True  # a download ended during the pass: its room may be there now
                    else:
                        self._refused_for_room.add(device_id)
                progress.last_problem = printable(str(exc)[:200])
                waits_for = ("the window to open" if isinstance(exc, WindowClosed) else "room in the store"
                             if isinstance(exc, StoreBelowReserve) else "its next registration")
                log.info("gb28181 device %s: downloads wait for %s: %s", device_id, waits_for,
                         progress.last_problem)
            except Exception as exc:  # a pass's bug must not end the scheduler; the next online retries
                progress.last_problem = printable(str(exc)[:200])
                log.exception("gb28181 device %s: download pass failed", device_id)
            finally:
                progress.state, progress.current = "idle", None
                progress.last_pass_at = wall_text()
                self.passes_done += 1
                async with self.pass_ended:
                    self.pass_ended.notify_all()
            if not run.again or not self.policy.may_download_now(self._now()):
                return
            run.again = False

    # -- one pass --------------------------------------------------------------------------------------

    async def _channels(self, pipeline: IngestPipeline, device_id: str,
                        progress: DeviceProgress) -> list[str]:
        """The channels to list: the Catalog's (those the policy names), else the configured ones. A Catalog
        that fails with no channel configured leaves nothing to list: a ledger error (limited, and its
        recovery recorded), never a silent empty pass. With no channel named by the policy, the Catalog's
        items that hold no video (`is_video_channel`) are not asked (counted: `not_video_channels`). At
        most `MAX_CHANNELS` are asked; those beyond are counted (`channels_left_out`) and a ledger error
        (limited) names the first few."""
        where = {"stage": "catalog", "device_id": device_id}
        try:
            catalog = [item.device_id for item in await self.platform.query_catalog(device_id)]
        except (QueryError, ManscdpError) as exc:
            self._ensure_online(device_id)
            configured = self.policy.devices.get(device_id)
            catalog = list(configured.channels) if configured is not None else []
            why = printable(str(exc)[:200])
            log.warning("gb28181 device %s: no Catalog (%s); %s", device_id, why,
                        "the configured channels are asked" if catalog else "no channel is configured")
            if not catalog:
                await self._problem(pipeline, "catalog", device_id, {
                    **where, "reason": f"the device's Catalog failed ({why}) and no channel is configured "
                                      "for it: none of its recordings can be listed or downloaded"})
        else:
            await self._recovered(pipeline, "catalog", device_id, {
                **where, "reason": "the device's Catalog answers again: its channels are listed"})
        channels = self.policy.channels_for(device_id, catalog)
        configured = self.policy.devices.get(device_id)
        if configured is None or not getattr(configured, "channels", ()):
            # Every channel of the Catalog: only those that can hold video (a channel the policy names is
            # asked whatever its type: the operator knows the device).
            not_video = [c for c in channels if not is_video_channel(c)]
            progress.not_video_channels = len(not_video)
            if not_video:
                log.info("gb28181 device %s: %d Catalog item(s) that hold no video (groups, alarm inputs, "
                         "...: their id's type code) not asked for recordings", device_id, len(not_video))
                channels = [c for c in channels if is_video_channel(c)]
        malformed = [c for c in channels if not CHANNEL_ID.fullmatch(c)]
        if malformed:
            # A channel id is device text that goes into queries, the ledger and logs: 20 digits only.
            named = list(dict.fromkeys(display_text(c, 40) for c in malformed))
            reason = (f"the device's Catalog names {len(malformed)} channel(s) whose id is not 20 digits: "
                      "not asked for recordings")
            log.warning("gb28181 device %s: %s (%s)", device_id, reason, ", ".join(named[:MAX_FOREIGN_NAMED]))
            await self._problem(pipeline, "catalog-ids", device_id, {
                **where, "reason": reason, "channel_ids_listed": named[:MAX_FOREIGN_NAMED]})
        channels = [c for c in channels if CHANNEL_ID.fullmatch(c)]
        left_out = channels[MAX_CHANNELS:]
        progress.channels_left_out = len(left_out)
        if left_out:
            reason = (f"the device's Catalog lists {len(channels)} video channels, over the {MAX_CHANNELS} a "
                      f"pass asks: {len(left_out)} are not asked for recordings (name the ones to download "
                      "in [gb28181.devices])")
            log.warning("gb28181 device %s: %s", device_id, reason)
            await self._problem(pipeline, "channel-cap", device_id, {
                **where, "reason": reason, "channels_left_out": len(left_out),
                "channel_ids_left_out": left_out[:MAX_FOREIGN_NAMED]})
        return channels[:MAX_CHANNELS]

    async def _pass(self, device_id: str, progress: DeviceProgress) -> None:
        pipeline = self._pipeline()
        if pipeline is None:
            raise RuntimeError("the ingest pipeline is not running")
        await self._spool_entry(pipeline)  # what the start removed, if the pipeline was not there then
        self._ensure_online(device_id)
        self._ensure_window()
        progress.state, progress.last_problem = "listing", None
        if self._clock_offset_ms(device_id) is None or self._current_offset_s(device_id) is None:
            # Not measured in this run (an offset restored from a previous run may be a clock that has
            # stepped since), or not since the station set it: measured before listing.
            await self._measure_clock(device_id)
        ranges = self._device_ranges(device_id, progress)
        self.spool.mkdir(mode=0o700, exist_ok=True)
        source = GbRecordings(device_id, self.spool, station_id=self.station_id, case=self.case,
                              station_clock_synchronised=self._clock_trusted())
        # The download in progress's booking (one at a time per device), for its receiver's guard.
        start_download = self._start_download(device_id, progress, lambda: downloads.booked_space)
        downloads = GbDownloads(pipeline, source, start_download,
                                problems=self.problems, failed_passes=self.failed_passes,
                                try_times=self.try_times,
                                pass_failures=PassFailures(),
                                device_clock_offset_ms=lambda: self._clock_offset_ms(device_id),
                                device_tz_offset_min=self.policy.utc_offset_minutes,
                                max_recording_bytes=self._max_recording_bytes(),
                                unlisted_recording_bytes=self._unlisted_recording_bytes(),
                                download_ended=lambda: self._download_ended(device_id))
        try:
            await self._channel_passes(pipeline, device_id, progress, downloads, ranges)
        finally:
            # The failed downloads not named one by one, in one entry; shielded: a pass that is
            # cancelled (the station stopping) still leaves its tally on the ledger.
            await asyncio.shield(downloads.finish_pass())

    async def _channel_passes(self, pipeline: IngestPipeline, device_id: str, progress: DeviceProgress,
                              downloads: GbDownloads, ranges: list[tuple[datetime, datetime]]) -> None:
        channels = await self._channels(pipeline, device_id, progress)
        for channel_id in channels:
            self._ensure_online(device_id)
            where = {"stage": "record-info", "device_id": device_id, "channel_id": channel_id}
            try:
                listing = await self._list_recordings(pipeline, device_id, channel_id, *ranges[0], channels,
                                                      more_ranges=ranges[1:])
            except (QueryError, ManscdpError) as exc:
                self._ensure_online(device_id)
                progress.last_problem = printable(f"RecordInfo of {channel_id}: {exc}"[:200])
                log.warning("gb28181 device %s: %s", device_id, progress.last_problem)
                await self._problem(pipeline, "record-info", f"{device_id}|{channel_id}", {
                    **where, "reason": f"RecordInfo failed: {printable(str(exc)[:200])}; the channel's "
                                      "recordings are not listed, not downloaded"})
                continue
            await self._recovered(pipeline, "record-info", f"{device_id}|{channel_id}", {
                **where, "reason": "RecordInfo answers again: the channel's recordings are listed"})
            progress.record_info_complete = listing.complete
            progress.listed += len(listing.recordings)
            progress.wrong_channel += listing.wrong_channel
            progress.unreadable_records += listing.unreadable
            due = await self._finished(pipeline, device_id, listing.recordings, progress)
            progress.state = "downloading"
            report = await downloads.download(due)
            progress.skipped += len(report.skipped)
            progress.failed += len(report.failed)
            progress.given_up += len(report.given_up)
            progress.waiting_for_room += len(report.waiting_for_room)
            progress.done += sum(1 for done in report.ingested if done.raw_item is not None)
            if report.stopped is not None:
                raise report.stopped

    async def _finished(self, pipeline: IngestPipeline, device_id: str, refs: list[RecordingRef],
                        progress: DeviceProgress) -> list[RecordingRef]:
        """The recordings that have ended by the device's clock (now in the devices' zone, corrected by
        the measured clock offset, plus `FUTURE_MARGIN`). One ending later is left for a later pass (a
        segment still being recorded, or a device clock that is wrong): downloaded now its expected length
        could never be met. One ending absurdly far ahead (`ABSURD_FUTURE`, an EndTime of 2099) is a
        ledger error, once per recording (limited)."""
        device_now = max([self._device_now(device_id), *self._stretch_ends(device_id)])
        due: list[RecordingRef] = []
        for ref in refs:
            try:
                ends = datetime.fromisoformat(ref.end_time)
            except ValueError:  # RecordingRef's times come from parsed datetimes: not expected
                ends = datetime.max
            if ends.tzinfo is not None:
                ends = (ends.astimezone(UTC) + timedelta(minutes=self.policy.utc_offset_minutes)).replace(
                    tzinfo=None)
            if ends <= device_now + FUTURE_MARGIN:
                due.append(ref)
                continue
            progress.future += 1
            shown = f"{display_text(ref.channel_id, 64)} {display_text(ref.start_time, 64)}"
            ahead = ends - device_now
            log.info("gb28181 device %s: %s ends %s after the device's now: left for a later pass", device_id,
                     shown, ahead)
            if ahead > ABSURD_FUTURE:
                await self._problem(pipeline, "future", f"{device_id}|{ref.identity()}", {
                    "stage": "record-info", "device_id": device_id,
                    "channel_id": display_text(ref.channel_id, 64), "recording": ref.described(),
                    "device_now": device_now.isoformat(timespec="seconds"),
                    "reason": f"the device lists a recording ending {display_text(ref.end_time, 64)}, "
                              f"{ahead.days} days after its clock's now: not downloaded (its clock or its "
                              "recording list is wrong); asked again at later passes"})
        return due

    def _device_ranges(self, device_id: str, progress: DeviceProgress) -> list[tuple[datetime, datetime]]:
        """The RecordInfo ranges in the device's own time (edge.gb28181.policy.device_ranges): the policy's
        range shifted by the device's clock offset, and each stretch of it an earlier clock of the device
        stamped (before the station set it, or it stepped by itself) shifted by that clock's offset. The
        operator view says which (`listing_clock`); an offset not measured leaves the station's range, and
        says so."""
        start, end = self.policy.query_range(self._now())
        device = self.platform.registry.get(device_id)
        epochs = list(getattr(device, "clock_epochs", None) or ())
        current_s = self._current_offset_s(device_id)
        earlier: list[tuple[float | None, float]] = []
        for epoch in epochs:
            offset_s = getattr(epoch, "offset_s", None)
            ended_device_s = getattr(epoch, "ended_at_device_s", None)
            if not isinstance(ended_device_s, int | float):
                continue
            earlier.append((offset_s, float(ended_device_s) - (offset_s or 0.0)))
        ranges = device_ranges(start, end, current_s, earlier)
        if current_s is None:
            progress.listing_clock = ("the device's clock offset is not measured: its recordings are asked "
                                      "over the station's range, so a device clock far off may hide some")
        else:
            earlier_said = (f", and {len(ranges) - 1} stretch(es) an earlier clock of it stamped"
                            if len(ranges) > 1 else "")
            progress.listing_clock = (f"asked in the device's time: its clock offset {current_s:+.1f} s"
                                      f"{earlier_said}")
        if current_s is None or abs(current_s) > FUTURE_MARGIN.total_seconds():
            log.info("gb28181 device %s: %s", device_id, progress.listing_clock)
        return ranges

    async def _measure_clock(self, device_id: str) -> None:
        """The device's clock offset is not known when its pass starts: RecordInfo is to be asked in the
        device's time, so the pass waits for it. When the platform measures it itself (its description,
        or time sync: DeviceStatus after DeviceInfo and Catalog), the pass waits for that measurement, at
        most `CLOCK_WAIT_QUERIES` query timeouts (checked every `CLOCK_POLL_S`: the registry has no
        event for it); else, or if none came, it asks DeviceStatus itself (the platform records it). A
        device that does not answer, or gives no DeviceTime, leaves the station's range."""
        settings = getattr(self.platform, "settings", None)
        if getattr(settings, "describe_devices", False) or getattr(settings, "time_sync", False):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CLOCK_WAIT_QUERIES * float(getattr(settings, "query_timeout_s", 30.0))
            while loop.time() < deadline:
                self._ensure_online(device_id)
                device = self.platform.registry.get(device_id)
                if getattr(device, "clock_measured_at", None) is not None:
                    return  # measured (an offset, or none: the device gives no DeviceTime)
                await asyncio.sleep(CLOCK_POLL_S)
        try:
            await self.platform.query_device_status(device_id)
        except (QueryError, ManscdpError) as exc:
            self._ensure_online(device_id)
            log.info("gb28181 device %s: its clock offset could not be measured before listing: %s",
                     device_id, printable(str(exc)[:200]))

    def _current_offset_s(self, device_id: str) -> float | None:
        """The offset of the device's clock now (device minus station, seconds; None: not known): that of
        the open stretch since the station last set the clock (None until measured again: the one measured
        before the setting is the old clock's), else the last measured."""
        device = self.platform.registry.get(device_id)
        epochs = list(getattr(device, "clock_epochs", None) or ())
        if epochs and getattr(epochs[-1], "ended_at_device_s", 0) is None:
            offset = getattr(epochs[-1], "offset_s", None)
            offset_s = float(offset) if isinstance(offset, int | float) else None
        else:
            current = self._clock_offset_ms(device_id)
            offset_s = None if current is None else current / 1000
        # An absurd offset (review 20: a DeviceTime of 9999) is no clock to ask in.
        return None if offset_s is None or abs(offset_s) > MAX_CLOCK_OFFSET_S else offset_s

    def _stretch_ends(self, device_id: str) -> list[datetime]:
        """Where each closed stretch of the device's clock ended (registry device-clock Unix seconds), as its
        RecordInfo times read (naive, in the devices' zone): a recording of an earlier clock (it stepped, or
        the station set it) ending before that has ended, whatever the current clock's now says."""
        device = self.platform.registry.get(device_id)
        ends: list[datetime] = []
        for epoch in list(getattr(device, "clock_epochs", None) or ()):
            ended_s = getattr(epoch, "ended_at_device_s", None)
            if isinstance(ended_s, int | float):
                try:
                    ends.append((datetime.fromtimestamp(ended_s, UTC)
                                 + timedelta(minutes=self.policy.utc_offset_minutes)).replace(tzinfo=None))
                except (OverflowError, OSError, ValueError):
                    continue
        return ends

    def _device_now(self, device_id: str) -> datetime:
        """Now by the device's clock as it writes RecordInfo times (naive, in the devices' zone): the
        station's UTC now, in the configured zone, plus the device's current clock offset (0 unknown)."""
        offset_s = self._current_offset_s(device_id) or 0.0
        local = self._now().astimezone(UTC) + timedelta(minutes=self.policy.utc_offset_minutes,
                                                        seconds=offset_s)
        return local.replace(tzinfo=None)

    async def _problem(self, pipeline: IngestPipeline, kind: str, key: str, data: dict[str, Any]) -> None:
        """A recurring problem as an `error` entry, limited (edge.custody.entry_limits) within the
        budget of its device (`data["device_id"]`)."""
        extra = self.problems.seen(kind, key, str(data.get("device_id", "")))
        if extra is None:
            return
        entry = {"source": "gb28181", **data, **extra}
        repository = pipeline.repository
        await pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, entry))

    async def _recovered(self, pipeline: IngestPipeline, kind: str, key: str, data: dict[str, Any]) -> None:
        """A problem that reached the ledger is gone: an `error` entry with `"resolved": true` (the ledger
        has no entry type for good news; the stage and device say which problem ended)."""
        held_back = self.problems.cleared(kind, key)
        if held_back is None:
            return
        entry = {"source": "gb28181", **data, "resolved": True, "repeats_not_recorded": held_back}
        repository = pipeline.repository
        await pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, entry))

    async def _list_recordings(
        self, pipeline: IngestPipeline, device_id: str, channel_id: str, start: datetime, end: datetime,
        channels: Collection[str] = (), *, more_ranges: Sequence[tuple[datetime, datetime]] = (),
    ) -> ChannelListing:
        """The channel's recordings between `start` and `end`, and whether the list is known whole. An
        answer handed out incomplete (parts that never came, or more records than one answer may hold: a
        busy recorder's month) is asked again over the two halves of its range, down to
        `MIN_RECORD_INFO_RANGE` (its own items are not kept: the halves list them again); the ranges still
        incomplete there are one ledger error naming the channel and those ranges, so a recording that was
        never listed is never missing silently (review 14). Items of an answer the codec could not read
        (`items_left_out`: a FileSize of -1, an hour 24, ...) are one limited ledger error naming the
        ranges and what was wrong, and the list is not whole (review 22).

        Memory is bounded (review 22): once a pass holds `MAX_LISTED_PER_PASS` recordings of the channel it
        asks no further range; the rest is a limited ledger error, the list is not whole, and the channel's
        next pass begins where this one stopped (`_listing_resume`), so a channel with more recordings than
        that is listed over several passes, in turn, never holding more than one answer beyond the bound.

        An item is the channel's when its DeviceID is `channel_id`, or another channel of `channels` (the
        device's channels this pass downloads from: a 20-digit id the policy allows). Any other DeviceID
        (a channel the policy excludes, any text) is not downloaded: counted, and one ledger error per
        channel (limited) shows what was listed, escaped. `more_ranges` are asked too (`_device_ranges`:
        the stretches of the lookback an earlier device clock stamped), a recording listed twice kept once
        (the same channel, times, path and FileSize)."""
        # By identity and listed FileSize: two recordings listed with the same channel, times and path
        # but another FileSize are two (a recorder whose clock restarts at power-on: review 26), told
        # apart by the downloads (`_told_apart`); the same recording listed twice is kept once.
        listed: dict[tuple[str, str | None], RecordingRef] = {}
        incomplete: list[tuple[datetime, datetime, int]] = []
        unreadable: list[tuple[datetime, datetime, int, tuple[ItemProblem, ...]]] = []
        allowed = {channel_id, *channels}
        foreign: list[str] = []
        ranges = [(start, end), *more_ranges]
        resume_key = (device_id, channel_id)
        # Kept until this listing ends: a pass that fails half-way (the device offline) resumes there too.
        resume = self._listing_resume.get(resume_key)
        stopped_at: tuple[int, datetime] | None = None  # (range index, time): where a full pass stopped
        foreign_uncounted = [0]  # beyond MAX_FOREIGN_KEPT

        async def ask(index: int, start: datetime, end: datetime, depth: int) -> None:
            nonlocal stopped_at
            if stopped_at is not None:
                return
            self._ensure_online(device_id)
            answer = await self.platform.query_record_info(device_id, channel_id, start, end)
            if not answer.complete and depth < MAX_RECORD_INFO_SPLITS and end - start > MIN_RECORD_INFO_RANGE:
                # Its items are not kept: the halves list them again (holding them too would double it).
                middle = start + (end - start) / 2
                await ask(index, start, middle, depth + 1)
                await ask(index, middle, end, depth + 1)
                return
            for item in items_of(answer, RecordItem):
                if item.device_id not in allowed or not CHANNEL_ID.fullmatch(item.device_id):
                    if len(foreign) < MAX_FOREIGN_KEPT:
                        foreign.append(item.device_id)
                    else:
                        foreign_uncounted[0] += 1
                    continue
                ref = RecordingRef.from_record_item(device_id, item)
                listed.setdefault((ref.identity(), ref.listed_size_text()), ref)  # across a middle: once
            if not answer.complete:
                incomplete.append((start, end, answer.items_left_out))
            elif answer.items_left_out:
                unreadable.append((start, end, answer.items_left_out, answer.item_problems))
            if len(listed) >= MAX_LISTED_PER_PASS:
                stopped_at = (index, end)

        if resume is not None and resume[0] != len(ranges):
            resume = None  # the device's clock stretches changed since: from the beginning
        for index, (range_start, range_end) in enumerate(ranges):
            if resume is not None:
                if index < resume[1]:
                    continue  # listed by the pass that stopped: this pass goes on from there
                if index == resume[1]:
                    range_start = max(range_start, resume[2])
            if range_start >= range_end:
                continue
            await ask(index, range_start, range_end, 0)
        repository = pipeline.repository
        if incomplete:
            shown = [f"{a.isoformat()} to {b.isoformat()}" for a, b, _ in incomplete[:MAX_RANGES_ON_LEDGER]]
            data = {
                "source": "gb28181", "stage": "record-info", "device_id": device_id, "channel_id": channel_id,
                "reason": f"the device's recording list stayed incomplete over {len(incomplete)} range(s) "
                          "even asked in parts; recordings it did not list are not downloaded",
                "ranges": shown, "ranges_not_listed": max(0, len(incomplete) - MAX_RANGES_ON_LEDGER),
                "items_left_out": sum(n for _, _, n in incomplete),
            }
            log.warning("gb28181 device %s channel %s: %s", device_id, channel_id, data["reason"])
            await pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        if unreadable:
            await self._unreadable_records(pipeline, device_id, channel_id, unreadable)
        self._listing_resume.pop(resume_key, None)
        if stopped_at is not None:
            await self._listing_stopped(pipeline, device_id, channel_id, ranges, stopped_at, len(listed))
        if foreign:
            named = list(dict.fromkeys(display_text(f, 40) for f in foreign))
            count = len(foreign) + foreign_uncounted[0]
            reason = (f"the device listed {count} recording(s) under channel {channel_id} whose "
                      "DeviceID is neither that channel nor another channel downloaded from: not downloaded")
            log.warning("gb28181 device %s: %s (%s)", device_id, reason, ", ".join(named[:MAX_FOREIGN_NAMED]))
            await self._problem(pipeline, "wrong-channel", f"{device_id}|{channel_id}", {
                "stage": "record-info", "device_id": device_id, "channel_id": channel_id, "reason": reason,
                "device_ids_listed": named[:MAX_FOREIGN_NAMED], "recordings": count})
        whole = not incomplete and not unreadable and stopped_at is None and resume is None
        return ChannelListing(list(listed.values()), whole, len(foreign) + foreign_uncounted[0],
                              unreadable=sum(n for _, _, n, _ in unreadable))

    async def _unreadable_records(self, pipeline: IngestPipeline, device_id: str, channel_id: str,
                                  unreadable: list[tuple[datetime, datetime, int, tuple[ItemProblem, ...]]],
                                  ) -> None:
        """Items of complete answers the codec could not read: never downloaded, so on the ledger (limited
        per channel, like every recurring listing problem) with the ranges they were listed in and what was
        wrong (the codec's words, escaped; the item's digest names its exact XML)."""
        count = sum(n for _, _, n, _ in unreadable)
        problems = [problem for *_, reported in unreadable for problem in reported][:MAX_UNREADABLE_NAMED]
        reason = (f"the device listed {count} recording(s) of channel {channel_id} that could not be read "
                  "(a field the standard does not allow): they are not downloaded, and the channel's list is "
                  "not whole over these ranges")
        log.warning("gb28181 device %s: %s", device_id, reason)
        await self._problem(pipeline, "unreadable-records", f"{device_id}|{channel_id}", {
            "stage": "record-info", "device_id": device_id, "channel_id": channel_id, "reason": reason,
            "items_left_out": count,
            "ranges": [f"{a.isoformat()} to {b.isoformat()}"
                       for a, b, _, _ in unreadable[:MAX_RANGES_ON_LEDGER]],
            "ranges_not_listed": max(0, len(unreadable) - MAX_RANGES_ON_LEDGER),
            "problems": [{"problem": display_text(p.problem, 200),
                          "item_digest": display_text(p.item_digest, 64)} for p in problems]})

    async def _listing_stopped(self, pipeline: IngestPipeline, device_id: str, channel_id: str,
                               ranges: Sequence[tuple[datetime, datetime]], stopped_at: tuple[int, datetime],
                               held: int) -> None:
        """A pass that reached `MAX_LISTED_PER_PASS`: where it stopped is kept (the channel's next pass
        begins there), and a limited ledger error says what was left for later."""
        index, at = stopped_at
        rest = [(at, ranges[index][1]), *ranges[index + 1:]]
        rest = [(a, b) for a, b in rest if a < b]
        if not rest:
            return  # the bound was reached with the last range: nothing is left for later
        self._listing_resume[(device_id, channel_id)] = (len(ranges), index, at)
        while len(self._listing_resume) > MAX_LISTING_RESUMES:
            del self._listing_resume[next(iter(self._listing_resume))]
        reason = (f"the channel's pass holds {held} recordings, the bound of {MAX_LISTED_PER_PASS}: the rest "
                  "of its range is listed and downloaded at the next pass, which begins there")
        log.warning("gb28181 device %s channel %s: %s", device_id, channel_id, reason)
        await self._problem(pipeline, "listing-bound", f"{device_id}|{channel_id}", {
            "stage": "record-info", "device_id": device_id, "channel_id": channel_id, "reason": reason,
            "ranges_left_for_next_pass": [f"{a.isoformat()} to {b.isoformat()}" for a, b in rest]})

    def _ensure_window(self) -> None:
        """A download starts only while downloads may run (`schedule`: inside the window): a pass that
        outlasts its window leaves the rest for the next one."""
        if not self.policy.may_download_now(self._now()):
            raise WindowClosed("the download window has closed")

    def _ensure_online(self, device_id: str) -> None:
        device = self.platform.registry.get(device_id)
        if device is None or not device.online:
            raise DeviceGone(f"device {device_id} is offline")

    def _interruption(self, device_id: str, result: SessionResult) -> str | None:
        """Why an incomplete download is no fault of the recording, if it is not: the device is offline
        now (the platform stops a device's sessions when it goes offline), the station stopped the
        session while the device stayed (the station is stopping), or the station's own disk cut it
        (the receiver's `disk-full`, or `disk-slow`: the disk fell behind a UDP stream)."""
        device = self.platform.registry.get(device_id)
        if device is None or not device.online:
            return INTERRUPTED_DEVICE_OFFLINE
        if str(getattr(result.end_reason, "value", result.end_reason)) == EndReason.STOPPED.value:
            return INTERRUPTED_STATION_STOPPED
        media_end = str(getattr(getattr(result.outcome, "ended", None), "value", ""))
        if media_end == INTERRUPTED_DISK_FULL:
            return INTERRUPTED_DISK_FULL  # the receiver's free-space guard (MediaEnd disk-full)
        if media_end == INTERRUPTED_DISK_SLOW:
            return INTERRUPTED_DISK_SLOW  # the station's disk fell behind a UDP stream (review 33)
        return None

    def _max_recording_bytes(self) -> int:
        """The most the platform's receiver takes of one download ([gb28181.download] max_recording_mb)."""
        settings = getattr(self.platform, "settings", None)
        limit = getattr(settings, "max_recording_bytes", None)
        return limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_RECORDING_BYTES

    def _unlisted_recording_bytes(self) -> int:
        """What a download books for a recording listed without a FileSize ([gb28181.download]
        unlisted_recording_mb)."""
        settings = getattr(self.platform, "settings", None)
        size = getattr(settings, "unlisted_recording_bytes", None)
        return size if isinstance(size, int) and size > 0 else DEFAULT_UNLISTED_RECORDING_BYTES

    def _clock_offset_ms(self, device_id: str) -> int | None:
        device = self.platform.registry.get(device_id)
        if device is None or device.clock_offset_s is None:
            return None
        return round(device.clock_offset_s * 1000)

    def _start_download(self, device_id: str, progress: DeviceProgress,
                        booked_space: Callable[[], DownloadSpace | None] = lambda: None,
                        ) -> Callable[..., Any]:
        async def start_download(ref: RecordingRef, raw_path: Path) -> Transfer:
            self._ensure_online(device_id)  # offline: the pass ends, nothing is recorded as failed
            self._ensure_window()
            shown = f"{display_text(ref.channel_id, 64)} {display_text(ref.start_time, 64)}"
            progress.current, progress.state = shown, "waiting"
            async with self._slots:
                progress.state = "downloading"
                try:
                    result = await self.platform.download(
                        device_id, ref.channel_id, ref.start_time, ref.end_time, raw_path,
                        transport=self.policy.transport_for(device_id), speed=self.policy.speed,
                        space=booked_space())
                except SessionError:
                    self._ensure_online(device_id)
                    raise
            progress.current = None
            if not getattr(result.outcome, "bytes", 0):
                self._ensure_online(device_id)  # nothing came as the device left: not the recording's fault
            try:
                expected_s: float | None = float(self.platform.device_time_to_unix(ref.end_time)
                                                 - self.platform.device_time_to_unix(ref.start_time))
            except SessionError:
                expected_s = None
            check = completeness(result, ref, expected_s)
            interrupted = None if check["complete"] else self._interruption(device_id, result)
            if interrupted is not None:
                # Sealed as it came, marked: not one of the recording's attempts (downloads.py); the
                # recording is downloaded again when the device is back.
                progress.interrupted += 1
                check["interrupted"] = interrupted
                check["incomplete"] = f"{INTERRUPTIONS[interrupted]}; {check['incomplete']}"
                log.warning("gb28181 device %s: download of %s interrupted: %s", device_id, shown,
                            INTERRUPTIONS[interrupted])
            elif not check["complete"]:
                progress.incomplete += 1
                log.warning("gb28181 device %s: download of %s incomplete: %s", device_id, shown,
                            check["incomplete"])
            transport = self.policy.transport_for(device_id)
            return Transfer(result.outcome, {**result.facts(), "transport": transport, **check})

        return start_download

