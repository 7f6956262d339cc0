"""Recordings downloaded from GB/T 28181 devices, offered to the one ingest pipeline.

Per downloaded recording, two items:

1. **the raw PS** exactly as the media receiver wrote it (:mod:`edge.gb28181.media`: RTP payloads in
   sequence order, lost ranges recorded, never filled): the evidentiary original. Its manifest's
   `original` block is the recording as the device described it in its RecordInfo answer (name and file
   path escaped for display, never used as a path; start and end time as the device wrote them; record
   type), plus the transfer: SSRC, media transport, the gaps (lost RTP sequence ranges), bytes, how the
   session ended.
2. **the MP4** made from it by ffmpeg (:mod:`edge.gb28181.convert`): its `original` block says it was
   converted from the raw PS: that file's SHA-256 (taken in the conversion's one read of it), size and
   key, the ffmpeg version and argv, and what ffprobe checked. So anyone can run the same conversion on
   the sealed raw PS and compare.

Both carry the `source` block kind "gb28181", the station, the device id and the channel id. Their keys
(`raw_key`, `mp4_key`) are derived from the recording only (device, channel, start, end, file path; and
its FileSize where that tells it apart from a sealed recording listed with the same: `told_apart`),
never from the download, so they are the same after a restart: the platform asks `already_sealed`
before downloading a recording again, and the pipeline never seals one recording twice. A download that
was sealed incomplete (its manifest says `"complete": false`) does not count: the recording is downloaded
again, as attempt 2, 3 ... (`raw-ps#2`, `mp4#2`), each a new pair of items beside the earlier ones.
`sealed_downloads_of_device` reads them back per recording: attempt, complete, and `interrupted` (the
device went offline or the station stopped during the transfer: no fault of the recording, counted apart
by edge.sources.gb28181.downloads). A raw PS manifest may also say `overlong` (more video than the
recording's time range came: the raw PS holds media outside it) and `lossy` (RTP packets were lost in its
transfer: the copy has holes, where its `gap` entries say; such a copy is incomplete).

`ingest_download` is the whole step for one finished download: convert (a failed conversion is an
`error` ledger entry naming the recording, and the raw PS is still sealed), ingest both items in one
run, put the transfer's gaps on the ledger (`gap`, on the raw item) and any other damage or an
incomplete transfer in one bounded `error` entry of stage `media` per session (`media_damage`), and
remove the spool files, sealed or not (what was not sealed is on the ledger, and the next download of the
recording is a new transfer into a new file). A copy an earlier download left in progress under the same
keys (a crash while sealing) is closed first, never resumed (`close_interrupted_copies`). A recording
listed with the channel, times and path of a sealed one but another FileSize is told apart by it
(`RecordingRef.told_apart`), and a size beyond JSON's integers is kept as text (`listed_size`).
Files are read through `FileReader` (size and
mtime checked, so a spool file changed under the pipeline is refused), opened relative to the spool
directory without following symlinks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers.gb28181.manscdp import RecordItem
from edge.custody.canonical import MAX_SAFE_INTEGER
from edge.custody.ledger import EntryType
from edge.gb28181.convert import Conversion, ConversionError, convert_recording
from edge.gb28181.media import MediaOutcome
from edge.ingest.pipeline import IngestPipeline, IngestRun
from edge.ingest.repository import AcquisitionState, sealed_original_facts
from edge.ingest.source import FileReader, ItemReader, OfferedItem, Origin, OriginalKey, ReaderOpener
from edge.ingest.store import StationStore

log = logging.getLogger(__name__)

SOURCE_KIND = "gb28181"
MAX_DISPLAY_CHARS = 256
MAX_GAPS_ON_LEDGER = 64
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def display_text(text: str, limit: int = MAX_DISPLAY_CHARS) -> str:
    """A device's text made safe to show: control, format (bidi overrides) and other unprintable
    characters and the backslash escaped, cut at `limit` characters. Chinese text stays as it is."""
    out = []
    for char in text[:limit]:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return "".join(out) + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class RecordingRef:
    """One recording as the device described it (a RecordInfo item), and who holds it."""

    device_id: str
    channel_id: str
    name: str
    file_path: str
    start_time: str  # as the device wrote it (device local time)
    end_time: str
    record_type: str = ""
    recorder_id: str = ""
    address: str = ""  # where the device says it was recorded
    file_size_bytes: int | None = None  # as the device announced it (RecordInfo FileSize)
    # What tells this recording apart from a sealed one listed with the same channel, times and path (a
    # recorder whose clock restarts at its epoch at power-on names files by it): its FileSize, as text.
    # Empty when nothing needs to (`told_apart`); then the identity is the listed one alone.
    told_apart_by_size: str = ""

    @classmethod
    def from_record_item(cls, device_id: str, item: RecordItem) -> RecordingRef:
        """A RecordInfo item of `device_id` (its DeviceID is the channel's), times as the device wrote
        them (device local time, ISO-8601 without a zone)."""
        return cls(device_id=device_id, channel_id=item.device_id, name=item.name, file_path=item.file_path,
                   start_time=item.start_time.isoformat(), end_time=item.end_time.isoformat(),
                   record_type=item.type, recorder_id=item.recorder_id, address=item.address,
                   file_size_bytes=item.file_size_bytes)

    def identity(self) -> str:
        """The recording's stable identity at its device (what the keys are made of): channel, times and
        path as listed, and the FileSize when that tells it apart from a sealed recording listed with the
        same four (`told_apart`)."""
        listed = self.listed_identity()
        return listed if not self.told_apart_by_size else f"{listed}|FileSize={self.told_apart_by_size}"

    def listed_identity(self) -> str:
        """Channel, start, end and file path as the device lists them."""
        return "|".join((self.channel_id, self.start_time, self.end_time, self.file_path))

    def told_apart(self) -> RecordingRef:
        """This recording under the identity its FileSize tells apart (see `told_apart_by_size`)."""
        size = self.listed_size_text()
        if size is None:
            raise ValueError("a recording without a listed FileSize cannot be told apart by it")
        return replace(self, told_apart_by_size=size)

    def described(self) -> dict[str, Any]:
        return {
            "name": display_text(self.name),
            "path": display_text(self.file_path),
            "start_time": display_text(self.start_time, 64),
            "end_time": display_text(self.end_time, 64),
            "record_type": display_text(self.record_type, 32),
            "recorder_id": display_text(self.recorder_id, 64),
            "address": display_text(self.address),
            **listed_size(self.file_size_bytes),
            # Listed with the channel, times and path of another sealed recording, told apart by its size.
            **({"told_apart_by": "file_size"} if self.told_apart_by_size else {}),
        }

    def listed_size_text(self) -> str | None:
        """The FileSize the device listed, as text (None: not listed): what `described` keeps of it in
        one form or the other, for comparing a listing with a sealed manifest."""
        return None if self.file_size_bytes is None else str(self.file_size_bytes)


def listed_size(size: int | None, name: str = "file_size_bytes") -> dict[str, Any]:
    """A size a device announced (RecordInfo FileSize, SDP a=filesize), for a manifest or a ledger entry:
    the integer when JSON can carry it (I-JSON: within +-(2**53 - 1), what the canonical JSON of a
    manifest accepts), else `name` None and the digits as text under `name + "_listed"` (review 22: a
    device's garbage there, an uninitialised 64-bit field or a size in bits, kept every copy of the
    recording from being sealed)."""
    if size is None or -MAX_SAFE_INTEGER <= size <= MAX_SAFE_INTEGER:
        return {name: size}
    return {name: None, f"{name}_listed": display_text(str(size), 32)}


def json_safe_facts(facts: Mapping[str, Any]) -> dict[str, Any]:
    """A session's facts with every integer JSON cannot carry (a device's a=filesize beyond 2**53 - 1)
    kept as text beside a None (`listed_size`), so that the `acquired` entry and the manifest built from
    them are never refused for a device's number."""
    safe: dict[str, Any] = {}
    for name, value in facts.items():
        if isinstance(value, int) and not isinstance(value, bool):
            safe.update(listed_size(value, name))
        else:
            safe[name] = value
    return safe


def _version(role: str, attempt: int) -> str:
    return role if attempt <= 1 else f"{role}#{attempt}"


def raw_key(ref: RecordingRef, attempt: int = 1) -> OriginalKey:
    """The raw PS's key; a later download of a recording whose earlier one was incomplete is `attempt` 2,
    3 ... (a new original of the same recording: the incomplete one stays sealed as it was)."""
    return OriginalKey(SOURCE_KIND, ref.device_id, ref.identity(), _version("raw-ps", attempt))


def mp4_key(ref: RecordingRef, attempt: int = 1) -> OriginalKey:
    return OriginalKey(SOURCE_KIND, ref.device_id, ref.identity(), _version("mp4", attempt))


@dataclass(frozen=True)
class SealedDownload:
    """One sealed download (raw PS) of a recording, as its manifest says it went."""

    item: str
    attempt: int
    complete: bool  # a manifest without the fact (from before the check existed) counts as complete
    interrupted: str | None = None  # cut short by no fault of the recording (INTERRUPTED_*)
    incomplete: str | None = None  # why it was not complete, as sealed (escaped)
    lossy: bool = False  # RTP packets were lost in its transfer: the copy has holes
    file_size_listed: str | None = None  # the FileSize its recording was listed with, as text (None: none)
    # The bytes its transfer received (the manifest's `bytes`; None: not a non-negative integer there): a
    # recording the disk guard cut short is at least this large (edge.sources.gb28181.downloads `_tight_for`).
    received_bytes: int | None = None
    # The bytes its raw PS held (the manifest's `bytes_written`; None: not there, or not a non-negative
    # integer): how far a disk-full copy got (`given_up_because`), when it is known.
    written_bytes: int | None = None
    # A write its disk refused for want of space (the manifest's `write_refused`: "ENOSPC" or "EDQUOT";
    # None: none, or another value), and the free bytes statvfs showed just after (None: not known).
    write_refused: str | None = None
    write_refused_free_bytes: int | None = None

    @property
    def reached_bytes(self) -> int | None:
        """How far the copy got: the bytes written when known, else those received."""
        return self.written_bytes if self.written_bytes is not None else self.received_bytes


# Why a download came short by no fault of the recording: it is not one of the recording's attempts.
INTERRUPTED_DEVICE_OFFLINE = "device-offline"  # the device left; the platform stopped its sessions
INTERRUPTED_STATION_STOPPED = "station-stopped"  # the station stopped the session (it was stopping)
INTERRUPTED_DISK_FULL = "disk-full"  # the receiver stopped: the spool's disk ran low (edge.gb28181.media)
# The receiver stopped a UDP download: the spool's disk fell behind the stream (edge.gb28181.media
# `disk-slow`: a stalled disk, a loaded box, NFS latency; review 33).
INTERRUPTED_DISK_SLOW = "disk-slow"
_REFUSED_ERRNOS = ("ENOSPC", "EDQUOT")  # `write_refused` values (edge.gb28181.media `_refused_errno`)
_RAW_VERSION = re.compile(r"raw-ps(?:#(\d+))?")


_SEALED_FACTS = ("attempt", "complete", "interrupted", "incomplete", "lossy", "file_size_bytes",
                 "file_size_bytes_listed", "bytes", "bytes_written", "write_refused",
                 "write_refused_free_bytes")


def _sealed_download(version_text: str, item: str,
                     facts: Mapping[str, tuple[str | None, Any]]) -> SealedDownload | None:
    version = _RAW_VERSION.fullmatch(version_text)
    if version is None:
        return None

    def text(name: str) -> str | None:
        kind, value = facts[name]
        return str(value) if kind == "text" else None

    attempt_type, attempt = facts["attempt"]
    size_type, size = facts["file_size_bytes"]
    received_type, received = facts["bytes"]
    written_type, written = facts["bytes_written"]
    refused = text("write_refused")
    free_type, free = facts["write_refused_free_bytes"]
    return SealedDownload(
        item, int(attempt) if attempt_type == "integer" else int(version.group(1) or 1),
        complete=facts["complete"][0] != "false", interrupted=text("interrupted"),
        incomplete=text("incomplete"), lossy=facts["lossy"][0] == "true",
        file_size_listed=str(size) if size_type == "integer" else text("file_size_bytes_listed"),
        received_bytes=int(received) if received_type == "integer" and int(received) >= 0 else None,
        written_bytes=int(written) if written_type == "integer" and int(written) >= 0 else None,
        write_refused=refused if refused in _REFUSED_ERRNOS else None,
        write_refused_free_bytes=int(free) if free_type == "integer" and int(free) >= 0 else None)


def sealed_downloads_in(conn: sqlite3.Connection, device_id: str,
                        identities: Collection[str] | None = None) -> dict[str, list[SealedDownload]]:
    """The sealed raw PS of the device's recordings (those of `identities` only, when given), by recording
    identity (`RecordingRef.identity`), in attempt order. Given identities, the work is bounded by them,
    never by how many the device has sealed (edge.ingest.repository `sealed_original_facts`)."""
    found: dict[str, list[SealedDownload]] = {}
    for original, version, item, facts in sealed_original_facts(conn, SOURCE_KIND, device_id, identities,
                                                                _SEALED_FACTS):
        sealed = _sealed_download(version, item, facts)
        if sealed is not None:
            found.setdefault(original, []).append(sealed)
    for downloads in found.values():
        downloads.sort(key=lambda d: d.attempt)
    return found


def sealed_downloads_of_device(store: StationStore, device_id: str,
                               identities: Collection[str] | None = None) -> dict[str, list[SealedDownload]]:
    """`sealed_downloads_in` the store's own connection (on the caller's thread)."""
    return sealed_downloads_in(store.conn, device_id, identities)


async def sealed_downloads_off_loop(store: StationStore, device_id: str,
                                    identities: Collection[str]) -> dict[str, list[SealedDownload]]:
    """`sealed_downloads_in`, in a worker thread on a read-only connection of its own (the store's
    connection belongs to the event loop's writers; a reader beside them sees committed rows only)."""
    database = store.layout.db

    def read() -> dict[str, list[SealedDownload]]:
        conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return sealed_downloads_in(conn, device_id, identities)
        finally:
            conn.close()

    return await asyncio.to_thread(read)


def sealed_downloads(store: StationStore, ref: RecordingRef) -> list[SealedDownload]:
    """The sealed downloads of one recording, in attempt order."""
    return sealed_downloads_of_device(store, ref.device_id, {ref.identity()}).get(ref.identity(), [])


def sealed_attempts(store: StationStore, ref: RecordingRef) -> list[bool]:
    """Per sealed raw PS of this recording (one per download that brought something), whether it was
    complete."""
    return [download.complete for download in sealed_downloads(store, ref)]


def already_sealed(store: StationStore, ref: RecordingRef) -> bool:
    """Whether this recording's raw PS is already sealed in the store, complete (then it is not downloaded
    again)."""
    return any(sealed_attempts(store, ref))


@dataclass(frozen=True)
class DownloadedRecording:
    """A finished download: the recording, the raw PS file the receiver wrote, and how the transfer went."""

    recording: RecordingRef
    raw_ps: Path
    outcome: MediaOutcome
    device_clock_offset_ms: int | None = None  # from DeviceStatus, when the platform measured it
    device_tz_offset_min: int | None = None  # the devices' configured zone (UTC+8: 480)
    facts: Mapping[str, Any] = field(default_factory=dict)  # for the `acquired` entry (e.g. the Call-ID)
    attempt: int = 1  # the how-manieth download of this recording that is sealed (earlier ones incomplete)


class GbRecordings:
    """A `Source`: the downloads of one GB/T 28181 device, files in the station's spool directory."""

    kind = SOURCE_KIND

    def __init__(
        self,
        device_id: str,
        spool: Path,
        *,
        station_id: str,
        case: Mapping[str, Any],
        collector_no: str = "",
        station_clock_synchronised: bool = False,
    ) -> None:
        self.device_id = device_id
        self.spool = spool
        self.station_id = station_id
        self.case = dict(case)
        self.collector_no = collector_no
        self.station_clock_synchronised = station_clock_synchronised

    @property
    def device(self) -> str:
        return self.device_id

    def reachable(self) -> bool:
        return self.spool.is_dir()  # the files are on the station's disk, not on the device

    def _source_block(self, ref: RecordingRef) -> dict[str, Any]:
        # device_serial as every source names its device (the central's index reads it).
        return {"kind": SOURCE_KIND, "station": self.station_id, "device_id": ref.device_id,
                "channel_id": ref.channel_id, "device_serial": ref.device_id}

    def _time_block(self, download: DownloadedRecording) -> dict[str, Any]:
        ref = download.recording
        return {
            "recorded_start": display_text(ref.start_time, 64),
            "recorded_end": display_text(ref.end_time, 64),
            "device_clock_offset_ms": download.device_clock_offset_ms,
            # Why the offset is None when the platform could tell (edge.gb28181.registry: ambiguous,
            # between-clocks, not-measured, before-history, unreadable-time); absent when it is known.
            **({"device_clock_unknown": display_text(str(download.facts["device_clock_unknown"]), 64)}
               if download.device_clock_offset_ms is None and download.facts.get("device_clock_unknown")
               else {}),
            # The zone the platform is configured to read device times in (None: not known).
            "device_tz_offset_min": download.device_tz_offset_min,
            "station_clock_synchronised": self.station_clock_synchronised,
        }

    def raw_item(self, download: DownloadedRecording) -> OfferedItem:
        ref, outcome = download.recording, download.outcome
        original = {
            **ref.described(),
            "role": "raw-ps",
            "ssrc": outcome.ssrc,
            "transport": str(outcome.transport),
            "gaps": [list(g) for g in outcome.gaps],
            # Jumps in the RTP numbering (an outage beyond the dropout bound, or a device restart): the
            # stream is not known whole there either.
            "rtp_jumps": [list(r) for r in outcome.restarts],
            "bytes": outcome.bytes,
            # What the raw PS holds (None: not measured): below `bytes` when a write was refused (review 28).
            "bytes_written": getattr(outcome, "bytes_written", None),
            # A write the disk refused for want of space (ENOSPC, EDQUOT; None: none) and the free bytes
            # statvfs showed just after: a quota's refusal, not the guard's stop (review 29).
            "write_refused": getattr(outcome, "write_refused", None),
            "write_refused_free_bytes": getattr(outcome, "write_refused_free_bytes", None),
            "transfer": outcome.summary(),
        }
        if "complete" in download.facts:
            # Whether the whole recording came (its time range and a=filesize against what was received).
            original["complete"] = bool(download.facts["complete"])
            if download.facts.get("incomplete"):
                original["incomplete"] = display_text(str(download.facts["incomplete"]), 300)
            if download.facts.get("interrupted"):
                # Cut short by the device leaving or the station stopping: not one of the recording's
                # attempts (edge.sources.gb28181.downloads counts these apart).
                original["interrupted"] = display_text(str(download.facts["interrupted"]), 64)
            if download.facts.get("lossy"):
                # RTP packets were lost (or the numbering jumped): the copy has holes (its gap entries).
                original["lossy"] = True
            if download.facts.get("overlong"):
                # More video than the recording's time range: the raw PS holds media outside it.
                original["overlong"] = True
        if download.attempt > 1:
            original["attempt"] = download.attempt
        return self._offer(download, raw_key(ref, download.attempt), download.raw_ps, original, "ps")

    def mp4_item(self, download: DownloadedRecording, conversion: Conversion) -> OfferedItem:
        ref = download.recording
        key = raw_key(ref, download.attempt)
        original = {
            **ref.described(),
            "role": "mp4",
            "converted_from": {
                "sha256": conversion.scan.raw_sha256,
                "size": conversion.scan.raw_bytes,
                "key": {"source": key.source, "device": key.device, "original": display_text(key.original),
                        "version": key.version},
            },
            "conversion": conversion.summary(),
        }
        return self._offer(download, mp4_key(ref, download.attempt), conversion.mp4, original, "mp4")

    def _offer(self, download: DownloadedRecording, key: OriginalKey, path: Path, original: dict[str, Any],
               extension: str) -> OfferedItem:
        if path.parent.resolve() != self.spool.resolve():
            raise ValueError(f"{path.name} is not in the spool directory of {self.device_id}")
        info = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} in the spool is not a regular file")
        ref = download.recording
        shown = f"{ref.channel_id} {display_text(ref.start_time, 64)}–{display_text(ref.end_time, 64)} " \
                f"({original['role']})"
        origin = Origin(
            device=self.device_id,
            officer_no=self.collector_no,
            original=original,
            source=self._source_block(ref),
            time=self._time_block(download),
            case=self.case,
            facts={"channel_id": ref.channel_id, **download.facts},
        )
        opener = self._opener(path.name, info, shown)
        return OfferedItem(key=key, name=f"{ref.channel_id}.{extension}", display=shown, size=info.st_size,
                           origin=origin, open=opener, reopen=opener)

    def _opener(self, name: str, info: os.stat_result, shown: str) -> ReaderOpener:
        def open_reader() -> ItemReader:
            dir_fd = os.open(self.spool, DIR_FLAGS)
            try:
                fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            return FileReader(fd, size=info.st_size, mtime_ns=info.st_mtime_ns,
                              what=f"{self.device_id}:{shown}")

        return open_reader


def media_damage(outcome: MediaOutcome, facts: Mapping[str, Any]) -> list[str]:
    """What was wrong with a transfer besides lost packets (those have their `gap` entry): unreadable
    packets, packets of another SSRC, PS resynchronisations and dropped frames, refused connections and
    datagrams, and a transfer shorter than the recording (`facts["incomplete"]`,
    edge.sources.gb28181.scheduler). Counts only: bounded whatever the stream did."""
    counted = (("invalid_packets", "unreadable RTP packets"), ("ssrc_mismatches", "packets of another SSRC"),
               ("resyncs", "PS resynchronisations"), ("dropped_frames", "frames dropped by the demuxer"),
               ("refused_connections", "refused TCP connections"),
               ("refused_packets", "UDP datagrams from another host than the device's refused"))
    damage = [f"{getattr(outcome, name)} {what}" for name, what in counted if getattr(outcome, name, 0)]
    if facts.get("incomplete"):
        damage.append(f"incomplete: {display_text(str(facts['incomplete']), 300)}")
    return damage


INTERRUPTED_STAGE = "interrupted"


async def close_interrupted_copies(pipeline: IngestPipeline, device_id: str,
                                   keys: Collection[OriginalKey] | None = None) -> list[str]:
    """Close the device's acquisitions an earlier download left in progress (those of `keys` only, when
    given): the station stopped (kill -9, power cut) or the run ended (store full) after the pipeline had
    copied a download's raw PS or MP4 and before it was sealed. Each becomes `failed`, with an `error`
    entry of stage `interrupted` on its item naming the copy that is discarded (its SHA-256 and size, as
    its `acquired` entry has them), and its copy in the store's tmp goes. Returns the items.

    Never resumed (review 22): a download's bytes are those of one transfer, gone with the spool; the
    next download of the recording is another transfer (other bytes, gaps, SSRC, Call-ID), which the
    pipeline would otherwise seal the first transfer's copy under (the key is the recording's). The key's
    next offer starts afresh (a `failed` row is admitted `pending` again, the copy made from that
    download; a row still `pending` has no copy and is left so). An MP4 whose raw PS was sealed is not
    made again by a later download (the recording counts as downloaded): its entry says the recording has
    no MP4, and why."""
    closed: list[str] = []
    layout = pipeline.store.layout
    repository = pipeline.repository
    for row in repository.in_progress(SOURCE_KIND, device_id, keys):
        original, version, item, state = row.key.original, row.key.version, row.item, row.state
        sha256, size = row.sha256, row.size
        raw_version = version.replace("mp4", "raw-ps", 1) if version.startswith("mp4") else None
        raw_row = None if raw_version is None else repository.state_of(replace(row.key, version=raw_version))
        raw_sealed = raw_row if raw_row is not None and raw_row[1] == AcquisitionState.SEALED else None
        if state == AcquisitionState.PENDING and not raw_sealed:
            continue  # nothing copied: the next offer of the key copies that download's file, as it should
        copy = ("no copy had been made" if state == AcquisitionState.PENDING or sha256 is None
                else f"its copy (SHA-256 {sha256}, {size} bytes, as its `acquired` entry says) is discarded, "
                     "never sealed")
        if raw_sealed:
            reason = (f"the MP4 made from this recording's sealed raw PS (item {raw_sealed[0]}) was being "
                      f"sealed when the station stopped or its run ended: {copy}. The recording has no "
                      "sealed MP4 from that download, and is not downloaded again for one (its raw PS is "
                      "sealed): the raw PS is the evidence; an MP4 can be made from it with the conversion "
                      "its other downloads' MP4 manifests name")
        else:
            role = "MP4" if raw_version is not None else "raw PS"
            reason = (f"the {role} of a download of this recording was being acquired when the station "
                      f"stopped or its run ended: {copy}. That transfer's bytes are gone with the spool; "
                      "the recording is downloaded again at its next listing, and sealed from that "
                      "download's own bytes")
        data = {"source": SOURCE_KIND, "stage": INTERRUPTED_STAGE, "device_id": display_text(device_id, 64),
                "original": display_text(original), "version": display_text(version, 32), "reason": reason,
                "discarded_sha256": sha256 if state != AcquisitionState.PENDING else None,
                "temp_copy": str(layout.tmp_copy(item).relative_to(layout.root))}
        log.warning("gb28181 %s: item %s: %s", display_text(device_id, 64), item, reason)
        await pipeline.commit(functools.partial(repository.failed, item, 0, data))
        # Removed once the entry naming it is committed; a crash in between leaves a copy the next
        # acquisition of the key removes (a stale copy is never trusted: edge.ingest.pipeline).
        layout.tmp_copy(item).unlink(missing_ok=True)
        closed.append(item)
    return closed


@dataclass
class DownloadIngest:
    """What `ingest_download` did."""

    run: IngestRun
    raw_item: str | None
    mp4_item: str | None
    conversion: Conversion | None
    conversion_error: str | None


async def ingest_download(
    pipeline: IngestPipeline,
    source: GbRecordings,
    download: DownloadedRecording,
    *,
    convert_timeout_s: float = 600.0,
) -> DownloadIngest:
    """Convert, ingest both items, ledger the gaps, and clear the spool (see the module docstring)."""
    ref = download.recording
    shown = f"{ref.device_id}/{ref.channel_id} {display_text(ref.start_time, 64)}"
    mp4_path = download.raw_ps.with_name(download.raw_ps.stem + ".mp4")
    conversion: Conversion | None = None
    error: str | None = None
    # An MP4 an earlier, interrupted attempt left (ours: named after the raw PS, in the spool) is made again.
    mp4_path.unlink(missing_ok=True)
    try:
        conversion = await convert_recording(download.raw_ps, mp4_path, display=shown,
                                             timeout_s=convert_timeout_s)
    except ConversionError as exc:
        error = str(exc)
        log.error("gb28181 %s: %s", ref.device_id, error)
    # A copy an earlier, interrupted download of this recording left under these keys is never resumed.
    await close_interrupted_copies(pipeline, ref.device_id,
                                   [raw_key(ref, download.attempt), mp4_key(ref, download.attempt)])
    offered = [source.raw_item(download)]
    if conversion is not None:
        offered.append(source.mp4_item(download, conversion))
    run = await pipeline.ingest(source, offered)
    items = {w.offered.key: w for w in run.items}
    raw = items.get(raw_key(ref, download.attempt))
    mp4 = items.get(mp4_key(ref, download.attempt))
    raw_item = raw.item if raw is not None and raw.state == AcquisitionState.SEALED else None
    mp4_item = mp4.item if mp4 is not None and mp4.state == AcquisitionState.SEALED else None
    repository = pipeline.repository
    where = {"device_id": ref.device_id, "channel_id": ref.channel_id, "original": shown}
    if error is not None:
        data = {**where, "stage": "convert", "reason": error}
        await pipeline.commit(lambda: repository.entry(EntryType.ERROR, raw_item, data))
    outcome = download.outcome
    if (outcome.lost_packets or outcome.restarts) and raw_item is not None:
        # A jump in the RTP numbering beyond the reorder buffer's dropout bound (an outage of a few
        # seconds on a 4G link, or a device that renumbered) cannot be told apart from the numbers alone:
        # either way the stream is not known whole there, so it is a gap on the ledger too, never only a
        # line in the manifest's transfer block (review 14).
        gap = {**where, "reason": "RTP packets lost in transfer" if not outcome.restarts else
               "RTP packets lost in transfer, or the RTP numbering jumped (an outage or a device restart: "
               "not distinguishable from the numbers)",
               "lost_packets": outcome.lost_packets,
               "rtp_ranges": [list(g) for g in outcome.gaps[:MAX_GAPS_ON_LEDGER]],
               "ranges_not_listed": max(0, len(outcome.gaps) - MAX_GAPS_ON_LEDGER) + outcome.gaps_unrecorded}
        if outcome.restarts:
            gap["rtp_jumps"] = [list(r) for r in outcome.restarts[:MAX_GAPS_ON_LEDGER]]
        await pipeline.commit(lambda: repository.entry(EntryType.GAP, raw_item, gap))
    damage = media_damage(outcome, download.facts)
    if damage and raw_item is not None:
        # One bounded entry per session, however many garbage packets or resyncs the stream had.
        counts = {k: v for k, v in outcome.summary().items() if k != "gaps"}  # the ranges are the gap's
        summary = {**where, "stage": "media", "reason": "; ".join(damage), "transfer": counts}
        await pipeline.commit(lambda: repository.entry(EntryType.ERROR, raw_item, summary))
    # Removed whether sealed or not: an item not sealed is on the ledger (the pipeline's entries, an
    # `interrupted` one for a row left in progress), and is never offered from this file again (the next
    # download of the recording is a new transfer into a new file), so the spool keeps nothing for good
    # (review 22: a full store left every refused download there until a restart).
    download.raw_ps.unlink(missing_ok=True)
    mp4_path.unlink(missing_ok=True)
    return DownloadIngest(run, raw_item, mp4_item, conversion, error)
