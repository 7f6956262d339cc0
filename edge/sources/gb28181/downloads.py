"""Downloading a device's recordings once each, into the ingest pipeline.

`GbDownloads.download(recordings)` takes the recordings the platform listed (RecordInfo items, as
`RecordingRef`s, for example from `RecordingRef.from_record_item`) and, one after the other (devices
serve few history sessions at a time: wvp #980), for each one not already sealed complete in the store
(`sealed_downloads_of_device`: the keys come from the recording alone, so this holds across restarts):

1. a recording whose earlier downloads were all sealed incomplete (short, cut, or `lossy`: RTP packets lost
   in transfer) is downloaded again, as attempt 2, 3 ...
   (each a new pair of items), until `MAX_INCOMPLETE_ATTEMPTS` came incomplete; downloads cut short by
   the device going offline or the station stopping (their manifests say `interrupted`) are not the
   recording's fault and do not count there, and neither do those the station's disk fell behind over UDP
   (`disk-slow`, review 33), but `MAX_INTERRUPTED_ATTEMPTS` of them end it too (the `disk-slow` ones only
   once their tries span `GIVE_UP_AFTER_S`, below). Then the
   recording is given up (`given_up_because`): one `error` entry of stage `given-up` on its last raw PS
   names the device, channel and recording and why (what cut the downloads short, as sealed), written
   once (later listings find it). A download the station's own disk guard ended (`disk-full`) ends the
   pass (the next recording would be cut on the same tight disk) and counts toward no give-up unless it
   was cut by a write its disk refused with room showing (EDQUOT, or ENOSPC while statvfs showed room:
   `refused_with_room`) and got no further than an earlier disk-full copy (`stuck_disk_full`: a quota
   refusing every try at the same byte counts toward `MAX_INTERRUPTED_ATTEMPTS`; the guard's own cuts on a
   disk others fill never do: review 29). Such stuck copies and the `disk-slow` ones, the station's own disk
   troubles, count only once their tries span `GIVE_UP_AFTER_S` from the first to the latest, on the
   station's wall and monotonic clocks both (edge.sources.gb28181.give_up_span, the failed downloads' rule:
   a quota full or a disk stalled only for a while gives nothing up, review 33, nor does a pause with no
   try; `TryTimes` keeps, per recording, the span of this run's tries whose copies count, from the first
   however many follow: a restart starts the span again); the given-up entry says over how many hours and
   how many tries. While the
   spool's disk stays below the store's
   reserve plus room for the raw PS and the receiver's guard for the recording's size as known (its
   listed FileSize, and more than its disk-full copy received, at most `max_recording_bytes`), it is not
   tried again (`_tight_for`: one limited `error` entry of stage `store`,
   `DownloadReport.waiting_for_room`), so a tight disk seals at most one partial copy per pass;
2. books what the download expects to write in the store's booking ledger and checks the spool's disk
   against it and the bookings before it (edge.sources.gb28181.download_space): a download the disk is
   short for while other writers' bookings (another device's download, a docking copy) are in progress is
   not started (one
   limited `error` entry of stage `store` naming what holds the space; `SpaceBooked` ends the pass, the
   recording stays on the device for a later pass); the booking lasts until the transfer ends;
3. picks a new raw PS file name in the spool (never from the device's text) and asks `start_download`
   (the platform's session: INVITE s=Download, the media receiver on that file, until MediaStatus 121,
   BYE, the device closing, idle, limit or error) for the transfer;
4. a transfer that brought no byte, or a session that could not be made (the platform raised), is a
   failure: the empty file is removed, the next recording is tried. Failures are bounded on the ledger
   (a device refusing every INVITE, or a NAT that gives the media another address, fails every listed
   recording at every pass): per device and pass the first `MAX_FAILURES_NAMED` are `error` entries
   naming the recording (stage `download`), the rest one summary entry (count, the first reason:
   `finish_pass`); the same recording failing again at a later pass is limited like the listing's
   problems (edge.custody.entry_limits: once in six hours, the repeats counted). A recording that
   failed so at `MAX_FAILED_PASSES` passes, the first to the latest over at least
   `FAILED_GIVE_UP_AFTER_S` (two days, the same rule: a pause with no pass counts for nothing; what fails
   a download is mostly passing, a device busy or a link down; passed on the station's wall clock and on
   its monotonic clock both, so a step of the station's clock gives nothing up early) is given up
   (`FailedPasses`, in memory: a restart tries it again), one `error` entry of stage `given-up` with the
   reason, within the same naming bound. Nothing of it is sealed, so that is not for ever: it is asked
   for again once a day (`GIVEN_UP_RETRY_S`, on both clocks too), each failed try one more `given-up`
   entry, until it downloads or is no longer listed. A device
   gone offline or the download window closed (`PassEnded` from `start_download`) ends the call instead
   (`DownloadReport.stopped`);
5. anything received, however the session ended, goes to `ingest_download`: the raw PS and its MP4 are
   sealed, its gaps and how it ended are in the manifest (a partial transfer is still evidence of what
   was received, whether the recording or the device's leaving cut it short).

Each call first closes what an interrupted earlier download left in progress (`close_interrupted_copies`:
never resumed under another transfer), and reads which listed recordings are sealed in a worker thread
(`sealed_downloads_off_loop`). A recording listed with the channel, times and path of one downloaded
before (complete or not), in an earlier call or earlier in the same one, but another FileSize is another
recording (`_told_apart`). A store below its
reserve ends the call (`StoreBelowReserve`, one limited `error` entry): before a download, and when the
pipeline refused a download's copy for it (its spool files are removed).

`start_download` is the seam to the platform (edge.gb28181.platform `start_session` with a Download
`MediaRequest` and the session's `wait()`): the composition root adapts it, so this module depends on
the media receiver's outcome only.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.custody.entry_limits import LimitedEntries
from edge.custody.ledger import EntryType
from edge.durable.files import free_bytes
from edge.gb28181.media import (
    DEFAULT_MAX_RECORDING_BYTES,
    DEFAULT_UNLISTED_RECORDING_BYTES,
    ROOM_PER_RECEIVED_BYTE,
    EndReason,
    MediaOutcome,
    room_per_received_byte,
    shows_room,
)
from edge.ingest.pipeline import IngestOutcome, IngestPipeline
from edge.sources.gb28181.download_space import DOWNLOAD_BOOKING, DownloadSpace
from edge.sources.gb28181.give_up_span import (
    GIVE_UP_AFTER_S,
    FailingSpan,
    Since,
    TryTimes,
    recording_key,
)
from edge.sources.gb28181.recordings import (
    INTERRUPTED_DEVICE_OFFLINE,
    INTERRUPTED_DISK_FULL,
    INTERRUPTED_DISK_SLOW,
    INTERRUPTED_STATION_STOPPED,
    DownloadedRecording,
    DownloadIngest,
    GbRecordings,
    RecordingRef,
    SealedDownload,
    close_interrupted_copies,
    display_text,
    ingest_download,
    json_safe_facts,
    sealed_downloads_off_loop,
)

log = logging.getLogger(__name__)

# A recording whose downloads came incomplete this many times is not asked for again.
MAX_INCOMPLETE_ATTEMPTS = 3
# Downloads cut short by the device going offline (or the station stopping) are not the recording's
# fault and do not count above; a device that drops in every transfer still stops being asked after this
# many, so the station does not loop over one recording forever.
MAX_INTERRUPTED_ATTEMPTS = 10
GIVEN_UP_STAGE = "given-up"
MAX_ITEMS_NAMED = 16
# Failed downloads (no session, no byte) named one by one per device and pass; the rest are one summary
# entry. 64: a listing of a few dozen recordings is named whole (what review 17's control expects of a
# first pass), an answer of 10000 is not 10000 entries.
MAX_FAILURES_NAMED = 64
# A recording whose download failed (no session, no byte) at this many passes, the first of them at least
# FAILED_GIVE_UP_AFTER_S ago, is given up: a device refusing it, or a NAT losing its media, does not loop
# over it at every pass. Both, because what fails a download at each pass is mostly passing: a recorder
# answering 486 Busy while the command centre watches it live, an uplink or NAT down for a day, an SD card
# busy. 8 passes of a device registering often are an hour; two days are a long fault, not a busy one.
MAX_FAILED_PASSES = 8
FAILED_GIVE_UP_AFTER_S = GIVE_UP_AFTER_S  # edge.sources.gb28181.give_up_span: the stuck disk-full copies' too
# A given-up recording sealed nothing (there is no copy of it at all), so giving it up is not for ever: it
# is asked for again at the first pass this long after the give-up (or its last such try), until it
# downloads or the device stops listing it (its loop overwrote it, or it left the lookback range). A day:
# a device that refuses it for good costs one INVITE and one ledger entry a day per recording.
GIVEN_UP_RETRY_S = 24 * 3600.0
MAX_FAILING_RECORDINGS = 16384  # recordings whose failed passes are counted (the oldest forgotten)
FAILED_PROBLEM = "download-failed"
IDENTITY_PROBLEM = "reused-identity"
STORE_FULL_PROBLEM = "store-below-reserve"
STORE_TIGHT_PROBLEM = "store-tight"
STORE_BOOKED_PROBLEM = "store-booked"  # refused up front: others hold or booked the room it needs
# Room assumed for a recording its device listed no FileSize for (a download's booking, and a retry of one
# the station's disk guard cut short): the default of [gb28181.download] unlisted_recording_mb.
UNLISTED_SIZE_MARGIN_BYTES = DEFAULT_UNLISTED_RECORDING_BYTES
# Free space a download needs per byte of the recording: the raw PS itself, and the receiver's guard
# (edge.gb28181.media `_flushed`), which measures after writing it, keeps ROOM_PER_RECEIVED_BYTE more
# (none with [offload] min_free_bytes = 0: `room_per_byte_downloaded`).
ROOM_PER_BYTE_DOWNLOADED = ROOM_PER_RECEIVED_BYTE + 1


def room_per_byte_downloaded(min_free_bytes: int) -> int:
    """The raw PS itself and what the receiver's guard keeps per byte (edge.gb28181.media)."""
    return 1 + room_per_received_byte(min_free_bytes)
# How the give-up names why downloads were cut short (`interrupted`, as sealed).
INTERRUPTED_SAID = {INTERRUPTED_DEVICE_OFFLINE: "the device going offline",
                    INTERRUPTED_STATION_STOPPED: "the station stopping",
                    INTERRUPTED_DISK_SLOW: "the station's disk falling behind the UDP stream",
                    INTERRUPTED_DISK_FULL: "the station's disk refusing it again no further than before (a "
                                           "quota, or a disk fuller than its free space says)"}
# The station's own disk troubles: they count toward a give-up only over GIVE_UP_AFTER_S of such tries.
STATION_DISK = frozenset({INTERRUPTED_DISK_FULL, INTERRUPTED_DISK_SLOW})


@dataclass(slots=True)  # up to MAX_FAILING_RECORDINGS of them
class FailingRecording:
    """One recording's failed passes: how many, from the first to the latest (`FailingSpan`), when it was
    last given up (None: not given up), on the wall clock (`given_up_at`) and the monotonic clock
    (`given_up_mono`)."""

    passes: int
    span: FailingSpan  # the first and the latest failed pass, on both clocks
    given_up_at: float | None = None
    given_up_mono: float = 0.0  # meaningful when given_up_at is not None
    tries_since_given_up: int = 0  # passes that asked for it again after it was given up, and failed


class FailedPasses:
    """Across the passes of every device: per recording (the SHA-256 of its device and identity, never
    the device's text), the passes at which its download failed with no session or no byte, and whether it
    is given up (`MAX_FAILED_PASSES` passes, the first to the latest over at least `FAILED_GIVE_UP_AFTER_S`:
    edge.sources.gb28181.give_up_span, so a pause with no pass is no failing by itself) until its next try
    (`GIVEN_UP_RETRY_S` later). Bounded to the newest `MAX_FAILING_RECORDINGS`; a recording that downloads
    is forgotten, and so is everything at a restart (each recording asked again).

    `clock` is the station's wall clock in seconds (the scheduler's `now`): the spans are days, the time an
    operator reads on the ledger; `monotonic` the monotonic clock (review 21): each span must have passed
    on both, so a station clock stepped forward (an RTC corrected, an NTP server that was off) gives
    nothing up early and makes no given-up recording due early. A wall clock stepped back (now before a
    recording's first failure) starts its give-up span again from now (passes too many, never too few),
    and a given-up recording is then due at once: one try too many, never a recording left waiting for
    the clock to catch up.

    Across a restart nothing is kept (the monotonic clock starts again with the machine, so kept state could
    only count on the wall clock): every recording's failures are counted again from its first failure
    in the new run, and a given-up recording is asked for at the first pass: at worst a day's try early and
    two more days of passes before it is given up again."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._failing: dict[bytes, FailingRecording] = {}

    @staticmethod
    def _key(ref: RecordingRef) -> bytes:
        # With the listed FileSize: two recordings listed with the same channel, times and path but other
        # sizes (review 26) are two, and their failures are counted apart.
        return recording_key(ref)

    def failed(self, ref: RecordingRef) -> FailingRecording:
        """One more pass failed for `ref`: its count, and whether it is given up now (`given_up_at`)."""
        now, mono = self._clock(), self._monotonic()
        key = self._key(ref)
        failing = self._failing.pop(key, None)
        if failing is None:
            failing = FailingRecording(passes=0, span=FailingSpan.starting(Since(now, mono)))
        else:
            failing.span.failed_again(Since(now, mono))  # a wall clock stepped back starts it again
        self._failing[key] = failing  # the newest last
        while len(self._failing) > MAX_FAILING_RECORDINGS:
            del self._failing[next(iter(self._failing))]
        failing.passes += 1
        if failing.given_up_at is not None:
            failing.tries_since_given_up += 1
            # its try after the give-up failed too: the next one a day from now
            failing.given_up_at, failing.given_up_mono = now, mono
        elif failing.passes >= MAX_FAILED_PASSES and failing.span.passed(FAILED_GIVE_UP_AFTER_S):
            failing.given_up_at, failing.given_up_mono = now, mono
        return failing

    def given_up(self, ref: RecordingRef) -> bool:
        """Whether `ref` is given up and not due for its next try."""
        failing = self._failing.get(self._key(ref))
        if failing is None or failing.given_up_at is None:
            return False
        wall_elapsed = self._clock() - failing.given_up_at
        if wall_elapsed < 0:  # the wall clock stepped back past the give-up: due (one try too many)
            return False
        return wall_elapsed < GIVEN_UP_RETRY_S or self._monotonic() - failing.given_up_mono < GIVEN_UP_RETRY_S

    def succeeded(self, ref: RecordingRef) -> None:
        self._failing.pop(self._key(ref), None)


@dataclass
class PassFailures:
    """The failed downloads of one device's pass: how many were named on the ledger, and those that were
    not (over `MAX_FAILURES_NAMED`), for the pass's summary entry."""

    named: int = 0
    not_named: int = 0
    given_up_not_named: int = 0
    first_not_named: str | None = None


def refused_with_room(download: SealedDownload) -> bool:
    """Whether the copy was cut by a write its disk refused though statvfs showed room: EDQUOT (a quota,
    a btrfs qgroup: never in statvfs), or ENOSPC with at least a flush's worth (`FLUSH_BYTES`) free just
    after. Not the receiver's own guard (it stops on a low statvfs and sets no `write_refused`), nor an
    ENOSPC on a disk statvfs showed full (another writer filled it: that passes, review 29). The receiver
    never tries a refused write again (review 33: on NFS a retry could hide bytes lost at writeback), so a
    neighbour that filled the disk and gave its room back before the reading in the refused call (review
    30) is taken for a quota too: the give-up needs that at `MAX_INTERRUPTED_ATTEMPTS` downloads."""
    return shows_room(download.write_refused, download.write_refused_free_bytes)


def stuck_disk_full(earlier: Sequence[SealedDownload]) -> list[SealedDownload]:
    """The disk-full copies (in attempt order) cut by a write refused with room showing
    (`refused_with_room`) that got no further than an earlier disk-full copy of the same recording
    (`SealedDownload.reached_bytes`; one whose extent is not known counts as no further).

    A disk-full end is mostly the station's disk running low, no fault of the recording: such a copy does
    not count toward a give-up (review 24), and `_tight_for` keeps it from being tried while the disk is
    tight. But a write refused where statvfs shows room (EDQUOT: a user or group quota, a btrfs qgroup; a
    disk `_tight_for` misjudges) cuts every try at the same byte, and nothing else would end that loop
    (review 28): a try that got no further than one before it is such a repeat, and counts. A cut by the
    receiver's own guard never counts: how far it gets depends on what else the disk takes meanwhile (a
    second download, a docked camera's offload), and the recording can be had once that is gone (review
    29); its reach still counts as an earlier copy's."""
    stuck: list[SealedDownload] = []
    furthest: int | None = None
    seen = False
    for download in earlier:
        if download.interrupted != INTERRUPTED_DISK_FULL:
            continue
        reached = download.reached_bytes
        if seen and refused_with_room(download) and (
                reached is None or furthest is None or reached <= furthest):
            stuck.append(download)
        seen = True
        if reached is not None:
            furthest = reached if furthest is None else max(furthest, reached)
    return stuck


def station_disk_copies(earlier: Sequence[SealedDownload]) -> list[SealedDownload]:
    """The copies the station's own disk troubles count toward a give-up (the UDP downloads its disk fell
    behind, and `stuck_disk_full`), once their tries span GIVE_UP_AFTER_S."""
    return [d for d in earlier if d.interrupted == INTERRUPTED_DISK_SLOW] + stuck_disk_full(earlier)


def given_up_because(earlier: Sequence[SealedDownload], tried: FailingSpan | None = None) -> str | None:
    """Why a recording with these sealed downloads, none complete, is not downloaded again (None: it is).
    `tried`: the span of this run's tries whose copies the station's disk troubles count (`TryTimes`; None:
    none known, those troubles give nothing up)."""
    # A download the station's own disk cut short is no fault of the recording nor of the device: a disk-full
    # copy counts toward a give-up only when a write was refused with room showing and it got no further
    # than an earlier disk-full copy (`stuck_disk_full`: a quota refusing every try at the same byte, review
    # 28; never the guard's cut, review 29), and those and the UDP downloads the disk fell behind
    # (`disk-slow`, review 33) only once their tries span GIVE_UP_AFTER_S from the first to the latest on
    # both clocks (edge.sources.gb28181.give_up_span: a quota full or a disk stalled for a few hours, a
    # pause with no try, give nothing up).
    departed = [d for d in earlier if d.interrupted and d.interrupted not in STATION_DISK]
    station_disk = station_disk_copies(earlier)
    over = ""
    if len(departed) < MAX_INTERRUPTED_ATTEMPTS and station_disk:
        if tried is None or not tried.passed():
            station_disk = []  # not for long enough: a disk in trouble only for a while
        else:
            over = (f" over {tried.hours():.0f} h ({tried.count} of these tries in this run, from the first "
                    "to the latest: the station's disk cutting tries short gives a recording up only once "
                    f"they span {GIVE_UP_AFTER_S / 3600:.0f} h on the station's wall and monotonic clocks)")
    interrupted = departed + station_disk
    incomplete = [d for d in earlier if not d.complete and not d.interrupted]
    if len(incomplete) >= MAX_INCOMPLETE_ATTEMPTS:
        last = incomplete[-1].incomplete or "no reason sealed"
        lossy = sum(1 for d in incomplete if d.lossy)
        said = (f"; {lossy} of the copies sealed are lossy (RTP packets lost in transfer: holes where their "
                "gap entries say; a TCP media transport avoids this on a lossy link)") if lossy else ""
        return (f"incomplete at each of its {len(incomplete)} downloads (the last: {last}){said}; what came "
                "is sealed, the recording is not downloaded again")
    if len(interrupted) >= MAX_INTERRUPTED_ATTEMPTS:
        reasons = Counter(display_text(str(d.interrupted), 64) for d in interrupted)
        said = " and ".join(f"{INTERRUPTED_SAID.get(reason, reason)} ({count})"
                            for reason, count in sorted(reasons.items()))
        return (f"{len(interrupted)} downloads were cut short by {said}{over}; what came is sealed, the "
                "recording is not downloaded again")
    return None


def shown_recording(ref: RecordingRef) -> str:
    """The recording as logs and ledger entries name it (device text escaped)."""
    return (f"{display_text(ref.device_id, 64)}/{display_text(ref.channel_id, 64)} "
            f"{display_text(ref.start_time, 64)}")


@dataclass(frozen=True)
class Transfer:
    """What a download session gave: the receiver's outcome, and facts for the `acquired` entry (the
    session's Call-ID, the SSRC offered and answered, why the session ended)."""

    outcome: MediaOutcome
    facts: Mapping[str, Any] = field(default_factory=dict)


class PassEnded(Exception):
    """Raised by `start_download` when no more recordings are to be downloaded now, through no fault of
    theirs: the call ends, nothing is recorded as failed, the rest waits for the next pass."""


class DeviceGone(PassEnded):
    """The device is no longer there (offline): the rest of the listing waits for its next registration
    instead of becoming one `error` entry per recording."""


class WindowClosed(PassEnded):
    """The schedule's download window closed: the rest waits for the window to open again."""


class StoreBelowReserve(PassEnded):
    """The station's disk is below the store's reserve (`[offload] min_free_bytes`): every download would
    fill the spool on that disk only for its copy to be refused, so the pass ends (review 22)."""


class SpaceBooked(StoreBelowReserve):
    """The space a download needs is held or booked by other writers (another download, a docking copy, a
    room recording: edge.sources.gb28181.download_space): refused up front, the pass ends, the recording
    stays on its device for a later pass."""


StartDownload = Callable[[RecordingRef, Path], Awaitable[Transfer]]


@dataclass
class DownloadReport:
    """One `download` call: what was skipped (already sealed), ingested, and what failed and why."""

    skipped: list[RecordingRef] = field(default_factory=list)
    ingested: list[DownloadIngest] = field(default_factory=list)
    failed: list[tuple[RecordingRef, str]] = field(default_factory=list)
    # incomplete MAX_INCOMPLETE_ATTEMPTS times, or interrupted MAX_INTERRUPTED_ATTEMPTS times
    given_up: list[RecordingRef] = field(default_factory=list)
    # cut short by the station's disk guard before, and the disk still too tight for it, or refused up front
    # for room other writers booked (`SpaceBooked`): not tried now
    waiting_for_room: list[RecordingRef] = field(default_factory=list)
    stopped: PassEnded | None = None  # the device left or the window closed: the rest was not tried


class GbDownloads:
    """The downloads of one device (see the module docstring)."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        source: GbRecordings,
        start_download: StartDownload,
        *,
        device_clock_offset_ms: Callable[[], int | None] = lambda: None,
        device_tz_offset_min: int | None = None,
        convert_timeout_s: float = 600.0,
        problems: LimitedEntries | None = None,
        failed_passes: FailedPasses | None = None,
        try_times: TryTimes | None = None,
        pass_failures: PassFailures | None = None,
        max_recording_bytes: int = DEFAULT_MAX_RECORDING_BYTES,
        unlisted_recording_bytes: int = UNLISTED_SIZE_MARGIN_BYTES,
        download_ended: Callable[[], None] = lambda: None,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.start_download = start_download
        self.device_clock_offset_ms = device_clock_offset_ms
        self.device_tz_offset_min = device_tz_offset_min
        self.convert_timeout_s = convert_timeout_s
        if max_recording_bytes <= 0:
            raise ValueError("max_recording_bytes must be positive")
        self.max_recording_bytes = max_recording_bytes  # the receiver's max_bytes ([..] max_recording_mb)
        if unlisted_recording_bytes <= 0:
            raise ValueError("unlisted_recording_bytes must be positive")
        # What a recording listed without a FileSize is taken to be ([..] unlisted_recording_mb), at most
        # what the receiver takes.
        self.unlisted_recording_bytes = min(unlisted_recording_bytes, max_recording_bytes)
        # The booking of the download in progress (one at a time), for its receiver's guard (the scheduler's
        # `start_download` passes it to the platform): edge.sources.gb28181.download_space.
        self.booked_space: DownloadSpace | None = None
        # Called once a download that went ahead (its check passed, or it booked nothing) has ended, its
        # booking given up and what came copied into the store: the scheduler asks a new pass of the devices
        # refused for room meanwhile (`SpaceBooked`), which nothing else would (review revgb).
        self.download_ended = download_ended
        # The scheduler gives its own (one limiter and one memory for the station, one tally per pass, the
        # summary written at the pass's end); alone, each call is a pass of its own.
        self._own_pass = pass_failures is None
        self.problems = problems if problems is not None else LimitedEntries()
        self.failed_passes = failed_passes if failed_passes is not None else FailedPasses()
        # When this run's tries of each recording ended, by the raw PS they sealed (the scheduler's: one for
        # the station): the station's disk troubles give a recording up only over days of such tries.
        self.try_times = try_times if try_times is not None else TryTimes()
        self.pass_failures = pass_failures if pass_failures is not None else PassFailures()

    async def download(self, recordings: Sequence[RecordingRef]) -> DownloadReport:
        report = DownloadReport()
        for ref in recordings:
            if ref.device_id != self.source.device_id:
                raise ValueError(f"recording of device {ref.device_id} given to the downloads of "
                                 f"{self.source.device_id}")
        # Copies an interrupted download left in progress (a crash while sealing) are closed, never resumed.
        await close_interrupted_copies(self.pipeline, self.source.device_id)
        identities = {ref.identity() for ref in recordings}
        identities.update(ref.told_apart().identity() for ref in recordings if ref.listed_size_text())
        sealed = await sealed_downloads_off_loop(self.pipeline.store, self.source.device_id, identities)
        for listed in recordings:
            ref = await self._told_apart(listed, sealed)
            earlier = sealed.get(ref.identity(), [])
            if any(d.complete for d in earlier):
                report.skipped.append(ref)
                self.try_times.forget(ref)
                continue
            if self.failed_passes.given_up(ref):
                report.given_up.append(ref)  # failed with nothing, given up (on the ledger) till its next try
                continue
            why = given_up_because(earlier, self.try_times.of(ref))
            if why is not None:
                report.given_up.append(ref)  # what came is sealed, no more tries
                await self._given_up(ref, earlier, why)
                continue
            attempt = max((d.attempt for d in earlier), default=0) + 1
            try:
                await self._ensure_room()
                if await self._tight_for(ref, earlier):
                    report.waiting_for_room.append(ref)
                    continue
                ingested = len(report.ingested)
                failure = await self._one(ref, report, attempt=attempt, earlier=earlier)
            except PassEnded as exc:
                report.stopped = exc  # what was done so far stays counted
                break
            if len(report.ingested) > ingested:
                # What this call sealed counts for the recordings after it in the same call, as it would
                # at the next pass: another listed with the same channel, times and path but another
                # FileSize is told apart from it (review 26), the same one listed twice is skipped.
                sealed.update(await sealed_downloads_off_loop(self.pipeline.store, self.source.device_id,
                                                              {ref.identity()}))
            if failure is not None:
                report.failed.append((ref, failure))
        if self._own_pass:
            await self.finish_pass()
        return report

    async def finish_pass(self) -> None:
        """The pass's failures that were not named one by one, in one `error` entry (count, the first
        reason), if any; the tally starts again."""
        tally = self.pass_failures
        if not tally.not_named:
            return
        device = display_text(self.source.device_id, 64)
        data = {"source": "gb28181", "stage": "download", "device_id": device,
                "reason": f"{tally.not_named} more download(s) of the device failed this pass (no session or "
                          f"no media), not named one by one (the first: {tally.first_not_named})",
                "failures_not_named": tally.not_named, "given_up_not_named": tally.given_up_not_named}
        log.error("gb28181 %s: %s", device, data["reason"])
        tally.not_named, tally.given_up_not_named, tally.first_not_named = 0, 0, None
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))

    async def _told_apart(self, ref: RecordingRef,
                          sealed: Mapping[str, list[SealedDownload]]) -> RecordingRef:
        """`ref`, or `ref` under the identity its FileSize tells apart (`RecordingRef.told_apart`) when a
        recording listed with the same channel, times and path was downloaded (complete or not, given up
        or not) with another FileSize: a recorder whose clock restarts at its epoch at every power-on names
        its files by it, so a new recording can be listed under an old one's name (review 22). Then it is a
        recording of its own, downloaded and sealed under its own keys, with an `error` entry of stage
        `identity` on the earlier one (limited like the listing's problems) when it is to be downloaded.
        Where the sizes agree, or either is not known, nothing the device listed tells them apart: the
        same recording (README: known limits)."""
        size = ref.listed_size_text()
        # Every earlier download of the identity that carries a FileSize counts, complete or not, given up
        # or not (review 24): a recording whose tries all came incomplete is given up, and a new one listed
        # under its identity must not be given up with it, nor sealed as one more try of it.
        sized = [d for d in sealed.get(ref.identity(), []) if d.file_size_listed is not None]
        sizes = {d.file_size_listed for d in sized}
        if size is None or not sizes or size in sizes:
            return ref
        told = ref.told_apart()
        if any(d.complete for d in sealed.get(told.identity(), [])):
            return told  # sealed under its own identity already: said when it was downloaded
        device = display_text(ref.device_id, 64)
        extra = self.problems.seen(IDENTITY_PROBLEM, f"{ref.device_id}|{told.identity()}", ref.device_id)
        if extra is not None:
            earlier = sized[-1]
            shown = shown_recording(ref)
            sealed_size = display_text(str(earlier.file_size_listed), 32)
            reason = (f"listed with the channel, start, end and file path of the sealed recording (item "
                      f"{earlier.item}, FileSize {sealed_size}) but with FileSize {display_text(size, 32)}: "
                      "another recording (a device whose clock restarts at power-on names its files by that "
                      "clock), downloaded and sealed as a recording of its own")
            data = {"source": "gb28181", "stage": "identity", "device_id": device,
                    "channel_id": display_text(ref.channel_id, 64), "original": shown,
                    "recording": told.described(), "sealed_file_size": sorted(str(s) for s in sizes),
                    "reason": reason, **extra}
            log.warning("gb28181 %s: %s: %s", device, shown, data["reason"])
            repository = self.pipeline.repository
            await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, earlier.item, data))
        return told

    async def _ensure_room(self) -> None:
        """Raise `StoreBelowReserve` (after one `error` entry, limited like the listing's problems) when the
        spool's disk is below the store's reserve: a download there would only be refused by the copy."""
        # The rooms recording hold space beyond the reserve too (edge.ingest.kept_space): the copy would keep
        # it, so the download waits for them rather than fill the spool into it (issue 11); and what other
        # writers booked (a docking copy still writing), which the receiver's guard keeps as well.
        taken = self.pipeline.kept_space.held_or_booked()
        held = f" and {taken.said}" if taken.bytes else ""
        reserve = self.pipeline.settings.min_free_bytes + taken.bytes
        try:
            available = await asyncio.to_thread(free_bytes, self.source.spool)
        except OSError:
            return  # the spool's own error is the download's (the receiver cannot create its file)
        if available >= reserve:
            return
        await self._store_full(f"the station disk holding the download spool has {available} bytes free, "
                               f"below the store's reserve of {self.pipeline.settings.min_free_bytes} "
                               f"([offload] min_free_bytes){held}")

    async def _tight_for(self, ref: RecordingRef, earlier: Sequence[SealedDownload]) -> bool:
        """Whether `ref`, whose last download the station's own free-space guard ended (`disk-full`), is
        left for a later pass because the spool's disk is still too tight for it: below the store's reserve
        plus `ROOM_PER_BYTE_DOWNLOADED` times the recording's size as known (the raw PS itself, then the
        receiver's guard, which measures after writing it, keeps `ROOM_PER_RECEIVED_BYTE` times it: review
        28; with no reserve the guard keeps no such room, and the raw PS alone is asked for: review
        revs13a). That size is the larger of its listed FileSize (without one, `UNLISTED_SIZE_MARGIN_BYTES`)
        and one byte more than its largest disk-full copy received (the manifest's `bytes`): the guard cut
        that copy there, so the recording is larger, whatever the device listed (a FileSize in KiB, stale, or
        false: review 26); and at most `max_recording_bytes`, the most the receiver takes (review 28).
        Each try with less room would end the same way and seal one more partial copy into the tight store
        (review 24). One `error` entry, limited like the listing's problems."""
        if not earlier or earlier[-1].interrupted != INTERRUPTED_DISK_FULL:
            return False
        reserve = self.pipeline.settings.min_free_bytes
        # With what the rooms recording hold and other writers booked (edge.ingest.kept_space): the receiver's
        # guard and the copy keep it too (issue 11).
        taken = self.pipeline.kept_space.held_or_booked()
        kept, held = taken.bytes, f" and {taken.said}" if taken.bytes else ""
        # A FileSize of 0 is none, as for the booking (`expected_bytes`): the two agree on one size.
        listed = ref.file_size_bytes if ref.file_size_bytes is not None and ref.file_size_bytes > 0 else None
        assumed = self.unlisted_recording_bytes if listed is None else listed
        received = max((d.received_bytes for d in earlier if d.interrupted == INTERRUPTED_DISK_FULL
                        and d.received_bytes is not None), default=None)
        size = assumed if received is None else max(assumed, received + 1)
        # The receiver takes no more than `max_recording_bytes` of any download: room for that is room for
        # any try, whatever the device listed (a FileSize of 2**64 - 1 would be no room ever: review 28).
        capped = size > self.max_recording_bytes
        size = min(size, self.max_recording_bytes)
        per_byte = room_per_byte_downloaded(reserve)
        needed = reserve + kept + per_byte * size
        try:
            available = await asyncio.to_thread(free_bytes, self.source.spool)
        except OSError:
            return False  # the spool's own error is the download's
        if available >= needed:
            return False
        shown = shown_recording(ref)
        extra = self.problems.seen(STORE_TIGHT_PROBLEM, f"{ref.device_id}|{ref.identity()}", ref.device_id)
        if extra is not None:
            sized = f"its listed FileSize {assumed}" if listed is not None else \
                f"{assumed} bytes assumed (no FileSize listed, or 0)"
            if size != assumed:  # the copy the guard cut says the recording is larger than listed
                shown_listed = "its listed FileSize" if listed is not None else "the size assumed without one"
                sized = (f"{size} bytes, one more than the {received} a cut-short download of it received "
                         f"({shown_listed}, {assumed}, is less)")
            if capped:
                sized = (f"{size} bytes, the most the station takes of one recording ([gb28181.download] "
                         "max_recording_mb; the size known of it is larger)")
            sealing = " and the receiver's room to seal it" if per_byte > 1 else ""
            reason = (f"its last download was cut short by the station's disk running low (disk-full); the "
                      f"disk holding the download spool has {available} bytes free, below the {needed} a "
                      f"download needs (the store's reserve of {reserve}{held} plus "
                      f"{per_byte} times {sized}: the raw PS itself{sealing}): not downloaded until there "
                      "is room, never given up for waiting")
            data = {"source": "gb28181", "stage": "store", "device_id": display_text(ref.device_id, 64),
                    "channel_id": display_text(ref.channel_id, 64), "original": shown,
                    "recording": ref.described(), "reason": reason, **extra}
            log.error("gb28181 %s: %s: %s", display_text(ref.device_id, 64), shown, reason)
            repository = self.pipeline.repository
            last = earlier[-1].item
            await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, last, data))
        return True

    async def _store_full(self, why: str) -> None:
        device = display_text(self.source.device_id, 64)
        reason = f"{why}: the device's downloads stop for this pass; the rest waits for room in the store"
        extra = self.problems.seen(STORE_FULL_PROBLEM, self.source.device_id, self.source.device_id)
        if extra is not None:
            data = {"source": "gb28181", "stage": "store", "device_id": device, "reason": reason, **extra}
            log.error("gb28181 %s: %s", device, reason)
            repository = self.pipeline.repository
            await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        raise StoreBelowReserve(reason)

    async def _given_up(self, ref: RecordingRef, earlier: list[SealedDownload], why: str) -> None:
        """The decision not to download `ref` again, on the ledger once: an `error` entry of stage
        `given-up` on its last sealed raw PS, naming the device, channel and recording (escaped) and why.
        Later listings find that entry and write none (the recording is listed again at every pass)."""
        last = earlier[-1].item
        if any(e.type == EntryType.ERROR and e.data.get("stage") == GIVEN_UP_STAGE
               for e in self.pipeline.store.ledger.entries(item=last)):
            return
        shown = shown_recording(ref)
        data = {"source": "gb28181", "stage": GIVEN_UP_STAGE, "device_id": display_text(ref.device_id, 64),
                "channel_id": display_text(ref.channel_id, 64), "original": shown,
                "recording": ref.described(), "attempts": len(earlier),
                "raw_items": [d.item for d in earlier][-MAX_ITEMS_NAMED:], "reason": why}
        log.error("gb28181 %s: %s given up: %s", display_text(ref.device_id, 64), shown, why)
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, last, data))

    def expected_bytes(self, ref: RecordingRef, earlier: Sequence[SealedDownload]) -> int:
        """What a download of `ref` is expected to write: its listed FileSize (none, or not positive: the
        configured `unlisted_recording_bytes`), no less than one byte more than an earlier copy the
        station's disk guard cut short received, at most `max_recording_bytes` (what the receiver takes)."""
        listed = ref.file_size_bytes
        size = listed if listed is not None and listed > 0 else self.unlisted_recording_bytes
        received = max((d.received_bytes for d in earlier if d.interrupted == INTERRUPTED_DISK_FULL
                        and d.received_bytes is not None), default=None)
        if received is not None:
            size = max(size, received + 1)
        return min(size, self.max_recording_bytes)

    async def _transfer(self, ref: RecordingRef, raw: Path, earlier: Sequence[SealedDownload],
                        report: DownloadReport) -> Transfer:
        """The download's session, its expected bytes booked for as long as it runs (given up however it
        ends), refused up front (`SpaceBooked`) when others hold or booked the room it needs."""
        kept_space = self.pipeline.kept_space
        expected = self.expected_bytes(ref, earlier)
        per_byte = room_per_byte_downloaded(self.pipeline.settings.min_free_bytes)
        with kept_space.booking_for(DOWNLOAD_BOOKING, shown_recording(ref), per_byte * expected) as booking:
            space = DownloadSpace(kept_space, booking, expected)
            await self._booked_or_refused(ref, space, per_byte, report)
            self.booked_space = space
            try:
                return await self.start_download(ref, raw)
            finally:
                self.booked_space = None

    async def _booked_or_refused(self, ref: RecordingRef, space: DownloadSpace, per_byte: int,
                                 report: DownloadReport) -> None:
        """The download's check (edge.sources.gb28181.download_space): the spool's disk must keep the
        store's reserve, what the groups hold and the bookings made before this one, plus this one's. Passed,
        the booking is admitted. Short while bookings before it have still to write: one `error` entry of
        stage `store` naming what holds the space (limited like the listing's problems) and `SpaceBooked`:
        the recording stays on the device, the pass ends. Short with no booking before it: it books nothing
        and goes on, as before downloads booked."""
        kept_space = self.pipeline.kept_space
        reserve = self.pipeline.settings.min_free_bytes
        booked = space.booking.remaining
        before = kept_space.booked_before(space.booking)  # admitted or not: read before the free space
        taken = kept_space.held_and(before)
        try:
            available = await asyncio.to_thread(free_bytes, self.source.spool)
        except OSError:
            space.pass_check()
            return  # the spool's own error is the download's (the receiver cannot create its file)
        needed = reserve + taken.bytes + booked
        if available >= needed:
            space.pass_check()
            return
        if not any(b.remaining for b in before):
            # Short with no other writer's booking in the way (a FileSize that may be false: reviews 26, 28):
            # it goes on as before downloads booked (see edge.sources.gb28181.download_space).
            space.book_nothing()
            return
        report.waiting_for_room.append(ref)
        shown = shown_recording(ref)
        held = f", {taken.said}" if taken.bytes else ""
        sealing = " and the room to seal it" if per_byte > 1 else ""
        reason = (f"the disk holding the download spool has {available} bytes free, below the {needed} this "
                  f"download needs (the store's reserve of {reserve}{held}, plus {per_byte} times the "
                  f"{space.expected_bytes} bytes it is expected to write: the raw PS itself{sealing}): not "
                  "started, the recording stays on the device and is downloaded at a later pass once there "
                  "is room")
        extra = self.problems.seen(STORE_BOOKED_PROBLEM, f"{ref.device_id}|{ref.identity()}", ref.device_id)
        if extra is not None:
            data = {"source": "gb28181", "stage": "store", "device_id": display_text(ref.device_id, 64),
                    "channel_id": display_text(ref.channel_id, 64), "original": shown,
                    "recording": ref.described(), "reason": reason, "free_bytes": available,
                    "needed_bytes": needed, "held_or_booked_bytes": taken.bytes,
                    "held_or_booked": taken.said, **extra}
            log.error("gb28181 %s: %s: %s", display_text(ref.device_id, 64), shown, reason)
            repository = self.pipeline.repository
            await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        raise SpaceBooked(f"{shown}: {reason}")

    async def _one(self, ref: RecordingRef, report: DownloadReport, *, attempt: int,
                   earlier: Sequence[SealedDownload] = ()) -> str | None:
        """One download, then `download_ended` if it went ahead (however it ended)."""
        waiting_before = len(report.waiting_for_room)
        try:
            return await self._one_download(ref, report, attempt=attempt, earlier=earlier)
        finally:
            # Refused up front (`SpaceBooked`, added to waiting_for_room) it booked nothing that ended.
            if len(report.waiting_for_room) == waiting_before:
                self.download_ended()

    async def _one_download(self, ref: RecordingRef, report: DownloadReport, *, attempt: int,
                            earlier: Sequence[SealedDownload] = ()) -> str | None:
        raw = self.source.spool / f"download-{uuid.uuid4().hex}.ps"
        shown = shown_recording(ref)
        try:
            transfer = await self._transfer(ref, raw, earlier, report)
        except PassEnded:
            raw.unlink(missing_ok=True)
            raise
        except Exception as exc:  # the platform's refusal, in whatever form: recorded, next recording
            return await self._failed(ref, raw, shown, f"no download session: {exc}")
        ended = self.try_times.now()  # when the try ended, before its sealing (ffmpeg) takes its time
        outcome = transfer.outcome
        if outcome.bytes == 0:
            return await self._failed(ref, raw, shown, f"no media came ({outcome.ended}: {outcome.detail})")
        self.failed_passes.succeeded(ref)
        # The platform gives the offset of the clock that stamped this recording (the one before the
        # station last set it, for a recording made before); the device's latest is the fallback.
        facts = json_safe_facts(transfer.facts)  # a device's a=filesize beyond JSON's integers: as text
        offset = facts["device_clock_offset_ms"] if "device_clock_offset_ms" in facts \
            else self.device_clock_offset_ms()
        download = DownloadedRecording(ref, raw, outcome, device_clock_offset_ms=offset,
                                       device_tz_offset_min=self.device_tz_offset_min,
                                       facts=facts, attempt=attempt)
        done = await ingest_download(self.pipeline, self.source, download,
                                     convert_timeout_s=self.convert_timeout_s)
        report.ingested.append(done)
        if done.raw_item is not None and transfer.facts.get("interrupted") in STATION_DISK \
                and await self._counted(ref, done.raw_item):
            self.try_times.tried(ref, done.raw_item, ended)  # the span the station's disk troubles count
        if done.run.outcome is IngestOutcome.STORE_FULL and done.raw_item is None:
            # The pipeline's `store` entry says what was refused; its spool files are gone (ingest_download).
            await self._store_full(f"the store refused the copy of {shown} ({outcome.bytes} bytes received, "
                                   "removed from the spool, never sealed: the recording is downloaded again "
                                   "when there is room)")
        if outcome.ended is EndReason.DISK_FULL or transfer.facts.get("interrupted") == INTERRUPTED_DISK_FULL:
            # The station's disk cut this one short: the next recording would start on the same tight disk,
            # less what sealing this copy took, and be cut too (review 28). The rest waits for room.
            await self._store_full(f"the download of {shown} was cut short by the station's disk running "
                                   f"low ({outcome.bytes} bytes received, sealed as it came, marked "
                                   "`disk-full`)")
        if done.raw_item is None:
            return "the raw PS was not sealed (see the pipeline's error entries)"
        return None

    async def _counted(self, ref: RecordingRef, item: str) -> bool:
        """Whether the copy of `ref` sealed as `item` is one the station's disk troubles count
        (`station_disk_copies`), read back from the store as the next pass reads it: a disk-full copy counts
        only against the copies sealed before it, so whether it does is settled once it is sealed."""
        try:
            sealed = await sealed_downloads_off_loop(self.pipeline.store, ref.device_id, {ref.identity()})
        except (sqlite3.Error, OSError) as exc:
            # Its try stays out of the span: the span starts at a later one, a give-up later, never earlier.
            log.warning("gb28181 %s: could not read back the copy of %s (%s): its try is not counted",
                        display_text(ref.device_id, 64), shown_recording(ref), exc)
            return False
        return any(d.item == item for d in station_disk_copies(sealed.get(ref.identity(), [])))

    async def _failed(self, ref: RecordingRef, raw: Path, shown: str, reason: str) -> str:
        """A download with no session or no byte: named on the ledger within the bounds (see the module
        docstring), given up after `MAX_FAILED_PASSES` such passes over `FAILED_GIVE_UP_AFTER_S`, until
        its next try `GIVEN_UP_RETRY_S` later."""
        raw.unlink(missing_ok=True)
        device = display_text(ref.device_id, 64)
        log.error("gb28181 %s: download of %s: %s", device, shown, reason)
        failing = self.failed_passes.failed(ref)
        passes = failing.passes
        given_up = failing.given_up_at is not None
        tally = self.pass_failures
        data: dict[str, Any] = {"device_id": device, "channel_id": display_text(ref.channel_id, 64),
                                "original": shown, "stage": "download", "reason": reason,
                                "passes_failed": passes}
        if given_up:
            hours = failing.span.hours()  # from the first failed pass to the one that gave it up
            again = (f"asked for again {failing.tries_since_given_up} time(s) a day after it was given up, "
                     "failed again; ") if failing.tries_since_given_up else ""
            data.update(stage=GIVEN_UP_STAGE, recording=ref.described(),
                        tries_since_given_up=failing.tries_since_given_up,
                        reason=f"its download failed at {passes} passes over {hours:.0f} h with no session "
                               f"or no media (the last: {reason}); {again}nothing of it is sealed: asked for "
                               f"again at the first pass {GIVEN_UP_RETRY_S / 3600:.0f} h from now, until it "
                               "downloads or the device no longer lists it")
            log.error("gb28181 %s: %s given up: %s", device, shown, data["reason"])
        if tally.named >= MAX_FAILURES_NAMED:
            # Before the limiter is asked: a recording not named now is named at a later pass.
            tally.not_named += 1
            tally.given_up_not_named += given_up
            tally.first_not_named = tally.first_not_named or display_text(reason, 200)
            return reason
        if not given_up:
            extra = self.problems.seen(FAILED_PROBLEM, f"{ref.device_id}|{ref.identity()}", ref.device_id)
            if extra is None:
                return reason  # the same failure at a recent pass is on the ledger (its repeats counted)
            data.update(extra)
        tally.named += 1
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        return reason
