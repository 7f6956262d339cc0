"""Each closed segment through the one ingest pipeline, at once, while the session still runs.

:class:`SegmentSealer` turns a :class:`~edge.rooms.capture.ClosedSegment` into an
:class:`~edge.ingest.source.OfferedItem` of source kind ``room`` (the file, opened relative to its run
directory without following symlinks and checked against the size and mtime it had when listed), with the
session's case block (case number, location, collector, subject) and the room, source and session in its
manifest, and hands it to :meth:`IngestPipeline.ingest`: copied and hashed in one pass, verified, sealed,
chained and queued for upload like every item. Then it appends ``segment_sealed`` (the item, its hash,
start and end times, and ``seal_latency_s``: from ffmpeg listing the segment to the item's ``sealed``
entry being committed) and removes the capture file: the sealed copy in the store holds its exact bytes.

A segment the pipeline could not seal stays in its capture directory; the pipeline's `error` entries say
why, and the sealer records one more naming the session (`stage` ``room segment``); `failure` keeps the
reason for the caller, which records the segment's time as a gap (:mod:`edge.rooms.recording`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.ingest.manifest import iso_from_ns
from edge.ingest.pipeline import IngestPipeline, IngestProgress
from edge.ingest.source import FileReader, ItemReader, OfferedItem, Origin, OriginalKey, ReaderOpener
from edge.rooms.capture import ClosedSegment
from edge.rooms.session import RoomSession

log = logging.getLogger(__name__)

SOURCE_KIND = "room"
# How far a source's clock may run from the station's over a run before its segments say so
# (`source_clock_drift_s`): more than the jitter of ffmpeg's listing (an encoder's lookahead, a busy CPU).
SOURCE_DRIFT_TOLERANCE_S = 1.0
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class SealedSegment:
    source: str
    name: str
    run: str
    item: str
    sha256: str
    size: int
    start_utc: str
    end_utc: str
    seal_latency_s: float
    seq: int  # its segment_sealed entry
    partial: str | None = None


class RoomSegments:
    """The `Source` of one room source's segments (pipeline view)."""

    kind = SOURCE_KIND

    def __init__(self, room: str, source: str) -> None:
        self.room = room
        self.source = source

    @property
    def device(self) -> str:
        return f"{self.room}/{self.source}"

    def reachable(self) -> bool:
        return True  # the station's own disk


# The reason of a sealer's `error` entry for a segment that is not the file ffmpeg listed; such an entry also
# carries ``"changed": true``. A later sealing of that segment (a restart) is refused on the ledger's word.
CHANGED = "changed after ffmpeg listed it"


class SegmentChanged(Exception):
    """A segment file is not the one ffmpeg listed (its pin differs); the message says how."""


class SegmentSealer:
    """Seals the segments of one source of one session."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        session: RoomSession,
        *,
        source: str,
        source_name: str,
        station_id: str,
        clock_synchronised: bool,
        derived: Mapping[str, Any] | None = None,
        refused: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.pipeline = pipeline
        # A derived output's segments (the composite) say so, and from what, in every record of them.
        self.derived = None if derived is None else dict(derived)
        self.session = session
        self.source = source
        self.source_name = source_name
        self.station_id = station_id
        self.clock_synchronised = clock_synchronised
        self.segments = RoomSegments(session.room, source)
        # Why the last seal() returned None, and whether the file is kept for another try (the pipeline
        # failed: a full disk) or can never be sealed as ffmpeg's (missing, changed, not a file).
        self.failure: str | None = None
        self.retryable = False
        # (run, segment name) -> the ledger seq of the `error` that refused it as changed: read from the
        # ledger at the first leftover (once per sealer, or handed over by the sealer before it: `refused`),
        # kept up to date by this sealer's own refusals.
        self.refused = refused

    def offered(self, segment: ClosedSegment) -> OfferedItem:
        """The segment as the pipeline takes it (raises OSError when the file is gone or not regular)."""
        info = os.stat(segment.path, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{segment.run}/{segment.name}: not a regular file")
        now = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        if segment.leftover:
            refused_at = self.refused_on_ledger().get((segment.run, segment.name))
            if refused_at is not None:
                # The ledger's word stands: the run directory's pins are plain files anyone with the disk
                # can edit, so a pin removed or re-written later never makes a refused segment ffmpeg's.
                raise SegmentChanged(
                    f"{CHANGED}: refused as such before (ledger seq {refused_at}), whatever its run "
                    "directory's pins say now; not sealed as ffmpeg's, kept in the capture directory"
                )
        if segment.pin_refused is not None:
            raise SegmentChanged(segment.pin_refused)
        if segment.pin is not None and now != segment.pin:
            size, mtime, _, inode = segment.pin
            raise SegmentChanged(
                f"changed after ffmpeg listed it (then {size} bytes, mtime {iso_from_ns(mtime)}, inode "
                f"{inode}; now {now[0]} bytes, mtime {iso_from_ns(now[1])}, inode {now[3]}, status changed "
                f"{iso_from_ns(now[2])}): not sealed as ffmpeg's, kept in the capture directory"
            )
        start_ns, end_ns = segment.times_ns()
        session = self.session
        origin = Origin(
            device=self.segments.device,
            officer_no=session.collector_no,
            original={
                "name": segment.name,
                "path": f"{segment.run}/{segment.name}",
                "device_mtime": iso_from_ns(info.st_mtime_ns),
            },
            source={
                "kind": SOURCE_KIND,
                "station": self.station_id,
                "room": session.room,
                "room_name": session.room_name,
                "room_session": session.session,
                "source": self.source,
                "source_name": self.source_name,
                **({"derived": self.derived} if self.derived is not None else {}),
            },
            time={
                "recorded_start": iso_from_ns(start_ns),
                "recorded_end": iso_from_ns(end_ns),
                "stream_start_s": segment.start_s,
                "stream_end_s": segment.end_s,
                # Written by ffmpeg on the station itself: the station clock is the device clock.
                "device_clock_offset_ms": 0,
                "station_clock_synchronised": self.clock_synchronised,
            },
            case=session.case_block(),
            facts={
                "room_session": session.session,
                "room": session.room,
                "source": self.source,
                "run": segment.run,
                "segment": segment.index,
                **({"partial": segment.partial} if segment.partial else {}),
                **({"unpinned": segment.unpinned} if segment.unpinned else {}),
                **({"derived": self.derived} if self.derived is not None else {}),
            },
        )
        original = f"{session.session}/{segment.run}/{segment.name}"
        what = f"{self.segments.device}:{segment.run}/{segment.name}"
        key = OriginalKey(SOURCE_KIND, self.segments.device, original, f"{info.st_size}:{info.st_mtime_ns}")
        return OfferedItem(
            key=key,
            name=segment.name,
            display=f"{self.source}/{segment.run}/{segment.name}",
            size=info.st_size,
            origin=origin,
            open=file_opener(segment.path, info, what, verification=False),
            reopen=file_opener(segment.path, info, what, verification=True),
        )

    async def seal(self, segment: ClosedSegment) -> SealedSegment | None:
        """Seal one segment; None when it could not be (the ledger says why; `failure` too)."""
        session = self.session
        self.failure, self.retryable = None, False
        where: dict[str, Any] = {
            "room_session": session.session,
            "room": session.room,
            "source": self.source,
            "run": segment.run,
            "segment": segment.name,
        }
        try:
            offered = self.offered(segment)
        except SegmentChanged as exc:
            self.refused_on_ledger()[(segment.run, segment.name)] = await self._error(
                {**where, "changed": True}, str(exc))
            return None
        except OSError as exc:
            await self._error(where, f"segment file unusable: {exc.strerror or exc}")
            return None
        progress = IngestProgress()
        run = await self.pipeline.ingest(self.segments, [offered], progress=progress, can_wait=False)
        work = run.items[0]
        if work.item not in run.sealed:
            why = "; ".join(progress.errors[-3:]) or run.outcome.value
            await self._error(where, f"not sealed ({work.state}): {why}")
            self.retryable = True
            return None
        sealed_ns = time.time_ns()
        latency_s = max(0.0, (sealed_ns - segment.closed_ns) / 1e9)
        record = self.pipeline.repository.item(work.item)
        assert record is not None
        start_ns, end_ns = segment.times_ns()
        data: dict[str, Any] = {
            **where,
            "index": segment.index,
            "sha256": record.sha256,
            "size": record.size,
            "start_utc": iso_from_ns(start_ns),
            "end_utc": iso_from_ns(end_ns),
            "stream_start_s": segment.start_s,
            "stream_end_s": segment.end_s,
            "closed_utc": iso_from_ns(segment.closed_ns),
            "sealed_utc": iso_from_ns(sealed_ns),
            "seal_latency_s": round(latency_s, 6),
        }
        drift_s = segment.source_drift_s
        if drift_s is not None and abs(drift_s) > SOURCE_DRIFT_TOLERANCE_S:
            # The source's own clock (stream_*_s) ran away from the station's (start_utc, end_utc follow
            # the station's): said on the record, so that nobody takes the stream times for station times.
            data["source_clock_drift_s"] = round(drift_s, 3)
        if segment.partial:
            data["partial"] = segment.partial
        if segment.unpinned:
            data["unpinned"] = segment.unpinned
        if self.derived is not None:
            data["derived"] = self.derived
        repository = self.pipeline.repository
        entry = await self.pipeline.commit(
            lambda: repository.entry(EntryType.SEGMENT_SEALED, work.item, data)
        )
        # The sealed copy in the store holds these exact bytes (re-read and matched): the capture file
        # goes.
        segment.path.unlink(missing_ok=True)
        if segment.unpinned:
            # Sealed so that its bytes are kept, but nobody may read it as checked against ffmpeg's listing.
            await self._error({**where, "item": work.item, "unpinned": True},
                              f"sealed as suspect (item {work.item}): {segment.unpinned}")
        log.debug(
            "room %s source %s: %s sealed as item %s in %.3f s",
            session.room,
            self.source,
            segment.name,
            work.item,
            latency_s,
        )
        return SealedSegment(
            self.source,
            segment.name,
            segment.run,
            work.item,
            record.sha256,
            record.size,
            data["start_utc"],
            data["end_utc"],
            latency_s,
            entry.seq,
            segment.partial,
        )

    def refused_on_ledger(self) -> dict[tuple[str, str], int]:
        """(run, segment name) -> ledger seq of every segment of this session's source a sealer refused as
        changed after ffmpeg listed it (entries before ``"changed"`` was recorded are known by their
        reason)."""
        if self.refused is None:
            session = self.session
            self.refused = {}
            for entry in self.pipeline.repository.ledger.entries_of_types([EntryType.ERROR],
                                                                          session.started_seq or 1):
                data = entry.data
                if (data.get("stage") != "room segment" or data.get("room_session") != session.session
                        or data.get("source") != self.source):
                    continue
                if data.get("changed") is True or str(data.get("reason", "")).startswith(CHANGED):
                    self.refused.setdefault((str(data.get("run")), str(data.get("segment"))), entry.seq)
        return self.refused

    async def _error(self, where: Mapping[str, Any], reason: str) -> int:
        """Record the failure (an `error` entry naming the session); its ledger seq."""
        log.error("room %s source %s: %s: %s", self.session.room, self.source, where.get("segment"), reason)
        self.failure = reason
        data = {**where, "stage": "room segment", "reason": reason}
        repository = self.pipeline.repository
        entry = await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        return entry.seq


def file_opener(path: Path, info: os.stat_result, what: str, *, verification: bool) -> ReaderOpener:
    """Opens `path` relative to its directory without following symlinks, as a reader checked against
    the size and mtime in `info` (a file changed since it was listed is refused)."""

    def open_reader() -> ItemReader:
        dir_fd = os.open(path.parent, DIR_FLAGS)
        try:
            fd = os.open(path.name, FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path.name}: no longer a regular file")
        os.set_blocking(fd, True)
        return FileReader(
            fd, size=info.st_size, mtime_ns=info.st_mtime_ns, what=what, drop_cache=verification
        )

    return open_reader


async def seal_session_file(
    pipeline: IngestPipeline,
    path: Path,
    *,
    session: RoomSession,
    role: str,
    station_id: str,
    clock_synchronised: bool,
    facts: Mapping[str, Any] | None = None,
    can_wait: bool = False,
) -> str | None:
    """Seal a file the session produced (its manifest, its joined recordings, its statement, a document
    attached to it) as an item of the session; its item id, or None when the pipeline could not (its
    entries say why). `facts` adds to the manifest's facts (the source of a joined recording, a
    document's kind). `can_wait`: the file can be sealed later (a document: attached again), so its copy
    keeps free what the rooms recording hold (edge.ingest.kept_space); not so the session's own products."""
    info = os.stat(path, follow_symlinks=False)
    device = f"{session.room}/session"
    origin = Origin(
        device=device,
        officer_no=session.collector_no,
        original={
            "name": path.name,
            "path": f"{session.session}/{path.name}",
            "role": role,
            "device_mtime": iso_from_ns(info.st_mtime_ns),
        },
        source={
            "kind": SOURCE_KIND,
            "station": station_id,
            "room": session.room,
            "room_name": session.room_name,
            "room_session": session.session,
        },
        time={
            "recorded_start": session.started_utc,
            "recorded_end": session.stopped_utc,
            "device_clock_offset_ms": 0,
            "station_clock_synchronised": clock_synchronised,
        },
        case=session.case_block(),
        facts={**(facts or {}), "room_session": session.session, "room": session.room, "role": role},
    )
    what = f"{device}:{path.name}"
    offered = OfferedItem(
        key=OriginalKey(
            SOURCE_KIND, device, f"{session.session}/{path.name}", f"{info.st_size}:{info.st_mtime_ns}"
        ),
        name=path.name,
        display=f"session/{path.name}",
        size=info.st_size,
        origin=origin,
        open=file_opener(path, info, what, verification=False),
        reopen=file_opener(path, info, what, verification=True),
    )
    run = await pipeline.ingest(RoomSegments(session.room, "session"), [offered], can_wait=can_wait)
    item = run.items[0].item
    return item if item in run.sealed else None
