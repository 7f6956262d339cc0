"""The media receiver of a GB/T 28181 session: RTP carrying MPEG-PS in, the raw PS as received out.

The platform's INVITE (Play, Playback, Download) needs a local media endpoint before it sends its offer:
`open_receiver(transport, ...)` binds one (one port per session, from a configured range: a port shared
by two streams is how "ssrc mismatched" happens in the field, gb28181.md §12) and returns a
`MediaReceiver`; its `local_port` goes into the offer's `m=` line. The platform owns SIP (INVITE, ACK,
BYE, MediaStatus 121); the receiver owns the bytes.

Transports (`MediaTransport`):

* `udp`: RTP datagrams on the bound port.
* `tcp-passive`: we listen (offer `a=setup:passive`); exactly one connection is taken; any other
  connection is closed at once and counted (`refused_connections`).

Where media may come from: with `expected_peer_host` (the platform passes the host the device registered
from: that one passed digest, while the answer's `c=` is only what the device claims, and behind a NAT a
private address) only that host's media is taken. A TCP connection from another host is refused as above;
a UDP datagram from another host is counted (`refused_packets`, the first few sources in
`refused_sources`) and dropped before anything else looks at it: it never locks the SSRC, never becomes
the `peer`, never keeps the session from going idle. Without it (a receiver used on its own) any host is
taken, as before. The media port is open before the INVITE and the SSRC is guessable, so without this
check anyone on the network could have a stream of theirs sealed as the device's recording (review 16).
* `tcp-active`: we connect (offer `a=setup:active`) from the bound port to the address in the device's
  answer: `connect(host, port)` after the 200 OK.

On TCP the framing is detected from the first bytes (RFC 4571 length, or `$` interleaved: drivers/gb28181/
framing.py); a stream that stops being framed RTP ends the session (`error`): TCP has no resync point.

What is taken: packets of the expected SSRC (`y=` of the answer, or of our offer) only; others are
counted and dropped (`ssrc_mismatches`, the first few values in `mismatched_ssrcs`). With no SSRC
expected the receiver locks on the first packet's SSRC and says so (`ssrc_policy` "first-seen"). Packets
go through a `ReorderBuffer` (UDP: a window of `reorder_window` packets; TCP: 1, since TCP does not
reorder but a device may have lost packets before sending); every lost range is a recorded gap
(`gaps`, extended sequence numbers) and a `discontinuity()` of the PS demuxer, so no frame is ever
counted across a hole. A confirmed renumbering of the device's packets (RFC 3550 A.1) is recorded in
`restarts` (last extended number before, first after; the first `MAX_RECORDED_GAPS`) and is a
`discontinuity()` too; a lone packet far off the numbering is dropped and counted (`strays`). The RTP
payloads, in sequence order, are the raw PS file, byte for byte as the device sent it (RTP headers
dropped); bytes that were lost are not invented, the gaps say where.

A packet with no payload (header only, or all of it padding: RFC 6263's keepalive for a NAT binding, a
device saying it is there, or a hostile sender) is no media: it keeps its place in the numbering (so it is
no loss), is counted (`empty_packets`) and dropped when its turn comes; it never reaches the raw PS or the
sink, and it does not count as media arriving (the idle timeout, `last_packet_at`, the drains' silence): a
device that sends only such packets is as silent as one that sends nothing (review rev11f).

A `sink` (a callable) gets the same bytes as they are taken, in order, one RTP payload at a time, on the
event loop (it must not block: edge.gb28181.live fans a live Play out to its consumers this way); with
`raw_path` None nothing is written to disk and `max_bytes` does not apply (a live stream has no end).

The raw PS is written to `raw_path`, created new (never overwriting, never through a symlink, mode 0600):
the caller puts it in the station's spool or temp area, and nothing else is written anywhere. Writes go
through a bounded buffer flushed by a worker thread (at most one flush in flight), so the event loop
never waits for the disk; if the disk falls `max_buffered_bytes` behind, TCP reading pauses (the device
is slowed, nothing lost) and UDP ends the session (`disk-slow`: the bytes would be lost otherwise; what was
taken is still written whole). `disk-slow` is the station's trouble (a stalled disk, a loaded box, NFS
latency), never the recording's: the scheduler seals such a copy as an interruption (review 33). At the
end the file is fsynced, then its directory; the outcome's `bytes_written` is what it holds then (less than
`bytes` received when a write was refused: review 28).

The session ends on `close()` (the platform saw MediaStatus 121 or BYE: `closed`; packets already on
their way are still taken, until a short silence). After MediaStatus 121 the platform first calls
`drain()`: reading goes on while the media keeps coming, until `END_QUIET_S` without a packet, bounded only
by the session's own bounds below (a device sends 121 once it has read its file, which over a slow uplink
is long before the last packet arrives). The session ends also on the device closing
its TCP connection (`closed`), on `idle_timeout_s` without a packet of the session (`idle`; also when no
media ever came), on `max_bytes` of raw PS (`limit`: the packet that would pass it is not written), when
the video's media time passes `max_media_span_s` (`past-end`: a device that keeps sending after the
recording it was asked for), when the transfer stalls or runs too long (`time-limit`, below), or on an
error (`error`), on the disk falling behind a UDP stream (`disk-slow`, above), or when the disk holding the
raw PS runs low (`disk-full`, with `min_free_bytes`: after each write, the disk's free space must keep
`min_free_bytes` plus `ROOM_PER_RECEIVED_BYTE` times what was received, so what came can still be copied
into the store and converted there without eating into the store's reserve; review 22; plus `kept_free()`,
read as each write is handed to the worker, before the worker reads the free space: what other writers hold
beyond that reserve, the rooms recording, issue 11, and what other writers that can wait booked, passed
their own check for (a booking still to be judged may be refused: review revs13a) and have still to write, a
docking copy, a disc export, another download's copy into the store, so the download does not take the bytes
their own checks counted on; or, for a download that booked its own bytes (`space`, a `ReceiverSpace`:
edge.sources.gb28181.download_space), what that booking's rules say instead, its own booking never, each
write lowering it; the guard is on with any of them; with `min_free_bytes` 0 it keeps no
`ROOM_PER_RECEIVED_BYTE` rule, only what `kept_free()` says (`room_per_received_byte`); a write refused for
a full disk, ENOSPC or EDQUOT, is `disk-full` too: review 26, also the write in flight as the session ends;
the outcome's `write_refused` names the errno and `write_refused_free_bytes` what statvfs showed just after,
in the worker call that was refused, which tells a quota from a full disk: review 29; an fsync refused for
want of space is `disk-full` too: review 30). The free space, for the guard and for a refusal alike, is the
lesser of what statvfs shows for the raw file and for its directory (the spool): an XFS project quota shows
only at a directory carrying the project-inherit flag, a file shows the whole file system (review 33).
A refused write is never tried again (review 33; reviews 30 to 32 tried one refused with room showing once
more, and each review found it sealing a hole): after the refusal nothing the station can read tells a
write that took nothing (a local disk: write(2) takes what fits, then refuses) from bytes taken earlier and
lost at writeback, which Linux's NFS client reports as a later write's error, once, without moving the
offset, while fstat may show the client's size or, once the failed pages are dropped, the server's. A retry
that succeeds then hides the loss, and the copy is sealed complete with a hole. The pause a retry needs
also lets a fast UDP download overflow the write buffer (`disk-slow`: the station's interruption, but a
copy cut short all the same). So a refusal ends the copy `disk-full`: what was written is sealed, marked
as no fault of the recording, and the recording is downloaded again at a later pass. Whether such a copy
counts toward giving the recording up is the downloads' call, from `write_refused` and the free space read
in the refused call (edge.sources.gb28181.downloads `stuck_disk_full`: only a refusal with room showing, a
quota's mark, that got no further than an earlier copy, and only once such copies span two days).
The media time is the longest span of
a monotonic run of video PTS (`video_run_span_s`): a PTS that steps back more than `PTS_BACKSTEP` (B-frames
step back a little) or jumps ahead more than `PTS_JUMP` starts a new run (`video_pts_restarts`), so an
encoder that restarts its PTS does not stretch the span (a wrap read as 26 hours).

`time-limit` has two causes, both judged on the monotonic `clock` (never the wall clock, which NTP steps):
* a stall (with `progress_window_s` and `min_progress_s`): from the first packet on, every
  `progress_window_s` of clock must bring at least `min_progress_s` of video media time (the forward
  advance of the video PTS inside its monotonic runs, summed: a restart of the PTS adds nothing, B-frames
  add nothing twice). A device that keeps sending bytes (so never idle) whose video does not advance, or
  advances at a trickle, is ended; one that delivers steadily, however slowly above that rate (a
  high-bitrate recording over a 4G uplink), is not. No packet at all is the idle timeout's.
* a hard cap: `time_limit_s` since the receiver opened, whatever the stream does (a device restarting its
  PTS over and over makes progress without end).
`wait_closed()` returns the `MediaOutcome`. `progress` is readable while it runs.
Memory is bounded whatever the stream's length: the reorder window, the write buffer, the PS demuxer's
frame bound, and the first `MAX_RECORDED_GAPS` gaps (the rest are counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from drivers.gb28181.framing import Framing, FramingError, StreamDeframer, TcpFrame
from drivers.gb28181.ps import EsFrame, PsDemuxer, PsEvent, StreamMap, is_audio, is_video
from drivers.gb28181.rtp import (
    Delivered,
    Duplicate,
    Gap,
    Late,
    ReorderBuffer,
    ReorderEvent,
    Restart,
    RtpError,
    Stray,
    parse_rtp,
)

log = logging.getLogger(__name__)

DEFAULT_REORDER_WINDOW = 64
FLUSH_BYTES = 256 * 1024  # a write is handed to the worker thread once this much is buffered
DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024  # how far the disk may fall behind (2 s of a 32 Mbit/s burst)
MAX_RECORDED_GAPS = 1024
IDLE_CHECK_S = 0.5
DRAIN_S = 2.0  # close(): how long packets already sent may still be taken
QUIET_S = 0.2  # close(): the silence that says they have all come
# drain() after MediaStatus 121: the silence that says the device has sent everything (a 4G uplink's jitter
# stays well under it); no cap of its own, the session's bounds hold
END_QUIET_S = 2.0
MAX_RECORDED_SSRCS = 8
MAX_RECORDED_SOURCES = 8  # refused media sources kept by address (the rest are only counted)
MAX_FRAME_BYTES = 8 * 1024 * 1024  # the PS demuxer's bound on one frame
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # asked for; the kernel caps it at net.core.rmem_max
RAW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PTS_MODULO = 1 << 33
PTS_HZ = 90000
PTS_BACKSTEP = PTS_HZ  # video PTS may step back this much inside a run (B-frames: a few frames)
PTS_JUMP = 60 * PTS_HZ  # ... or jump ahead this much (packets lost over an outage); more: a new run
# Free space kept per byte received, beyond `min_free_bytes`: the station copies the raw PS into its store
# (one), converts it to an MP4 in the spool (about one more) and copies that (one more) before the spool
# files go.
ROOM_PER_RECEIVED_BYTE = 3


def room_per_received_byte(min_free_bytes: int) -> int:
    """Free space the guard keeps per byte received: `ROOM_PER_RECEIVED_BYTE` with a reserve, none without
    one (`[offload] min_free_bytes = 0`: a station keeping no reserve receives what its disk holds, as before
    the guard counted other writers' bytes; review revs13a)."""
    return ROOM_PER_RECEIVED_BYTE if min_free_bytes else 0
# The most of one recording a download takes by default (`max_bytes`: [gb28181.download] max_recording_mb).
DEFAULT_MAX_RECORDING_BYTES = 8 * 1024 * 1024 * 1024
# What a download books for a recording its device listed no FileSize for ([gb28181.download]
# unlisted_recording_mb: edge.sources.gb28181.download_space).
DEFAULT_UNLISTED_RECORDING_BYTES = 256 * 1024 * 1024


class SpaceTaken(Protocol):
    """What other writers hold or booked on the raw PS's disk beyond `min_free_bytes` (the station passes
    edge.ingest.kept_space's `HeldOrBooked`)."""

    @property
    def bytes(self) -> int: ...

    @property
    def said(self) -> str:
        """Who, for the guard's reason ("" when nothing is taken)."""
        ...


class ReceiverSpace(Protocol):
    """A download's own booking on the raw PS's disk (edge.sources.gb28181.download_space): the guard keeps
    free what `taken` says, instead of `kept_free()` (never the download's own booking: the guard keeps its
    own room by `min_free_bytes` and `ROOM_PER_RECEIVED_BYTE`), and each write's bytes lower the booking."""

    def taken(self, received: int) -> SpaceTaken:
        """What other writers hold or booked that this download, `received` bytes in, keeps free."""
        ...

    def wrote(self, count: int) -> None:
        """`count` more bytes of the raw PS are on the disk (in its free figure from now on)."""
        ...


class MediaError(Exception):
    """The receiver could not be opened or connected; the message says what and where."""


class MediaTransport(StrEnum):
    UDP = "udp"
    TCP_PASSIVE = "tcp-passive"  # we listen, the device connects
    TCP_ACTIVE = "tcp-active"  # we connect to the device


class EndReason(StrEnum):
    IDLE = "idle"
    CLOSED = "closed"
    LIMIT = "limit"
    ERROR = "error"
    PAST_END = "past-end"  # the video's media time passed `max_media_span_s`
    TIME_LIMIT = "time-limit"  # the video stalled (`min_progress_s` per `progress_window_s`), or the hard cap
    # The raw PS's disk ran low (`min_free_bytes`), or a write found it full: what came is kept, the rest not.
    DISK_FULL = "disk-full"
    # UDP: the raw PS's disk fell `max_buffered_bytes` behind the stream (a stalled disk, a loaded box, NFS
    # latency): what came is kept whole, the rest would be lost. The station's trouble, not the recording's.
    DISK_SLOW = "disk-slow"


@dataclass(frozen=True)
class MediaProgress:
    """Counters of a running session (raw PS bytes written or buffered, packets taken, frames)."""

    bytes: int
    packets: int
    frames: int
    lost_packets: int
    elapsed_s: float
    rate_bps: float  # raw PS bits per second since the first packet
    empty_packets: int = 0  # packets with no payload (keepalives, padding only): dropped, no media


@dataclass(frozen=True)
class MediaOutcome:
    """How a session ended and what it received. `gaps`: lost RTP sequence ranges (extended numbers,
    inclusive), the first `MAX_RECORDED_GAPS`; `lost_packets` counts them all."""

    transport: MediaTransport
    ended: EndReason
    detail: str
    bytes: int
    packets: int
    gaps: list[tuple[int, int]]
    lost_packets: int
    gaps_unrecorded: int
    duplicates: int
    late: int
    ssrc: int | None  # the SSRC whose packets were taken
    ssrc_expected: int | None
    ssrc_policy: str  # "expected" | "first-seen"
    ssrc_mismatches: int
    mismatched_ssrcs: list[int]
    invalid_packets: int
    refused_connections: int
    write_stalls: int  # TCP: times reading paused because the raw file's writes fell behind
    peer: str | None  # where the media came from (host:port)
    framing: str | None  # TCP: rfc4571 | interleaved
    payload_types: list[int]
    video_frames: int
    audio_frames: int
    resyncs: int
    dropped_frames: int
    streams: dict[int, str]  # PS stream id -> codec, from the stream map
    first_video_pts: int | None
    last_video_pts: int | None
    elapsed_s: float
    # confirmed renumberings (RFC 3550 A.1): (last extended number before, first after), the first
    # MAX_RECORDED_GAPS; not losses, though packets may have been lost at the jump
    restarts: list[tuple[int, int]] = field(default_factory=list)
    strays: int = 0  # packets far off the numbering that nothing confirmed: dropped
    expected_peer_host: str | None = None  # the only host media was taken from (None: any)
    refused_packets: int = 0  # UDP datagrams from another host than `expected_peer_host`: dropped
    refused_sources: list[str] = field(default_factory=list)  # where refused media came from (first few)
    # the longest span of a monotonic run of video PTS (seconds), and how often a run restarted
    video_run_span_s: float | None = None
    video_pts_restarts: int = 0
    # What the raw PS file holds at its close (None: no file, or its size could not be read): less than
    # `bytes` when a write was refused (a full disk, an I/O error) or a limit left buffered bytes unwritten.
    bytes_written: int | None = None
    # A write of the raw PS the disk refused for want of space: "ENOSPC" or "EDQUOT" (None: none was), and
    # the free bytes statvfs showed on its disk just after (None: not read). An EDQUOT, or an ENOSPC with
    # room showing, is the disk refusing this file whatever statvfs says (a quota, a qgroup): the next try
    # would be cut the same way; the guard's own stop (low statvfs) sets neither (review 29). A refused fsync
    # is recorded the same way (review 30); a refused write is never tried again (review 33).
    write_refused: str | None = None
    write_refused_free_bytes: int | None = None
    empty_packets: int = 0  # packets with no payload (header only or all padding): dropped, not media

    @property
    def video_span_s(self) -> float | None:
        """Media time from the first to the last video frame's PTS (33-bit wrap handled)."""
        if self.first_video_pts is None or self.last_video_pts is None:
            return None
        return ((self.last_video_pts - self.first_video_pts) % PTS_MODULO) / 90000

    def summary(self) -> dict[str, Any]:
        """The facts a manifest carries about the transfer (JSON-ready)."""
        return {
            "transport": str(self.transport),
            "ended": str(self.ended),
            "detail": self.detail,
            "bytes": self.bytes,
            "bytes_written": self.bytes_written,
            "write_refused": self.write_refused,
            "write_refused_free_bytes": self.write_refused_free_bytes,
            "packets": self.packets,
            "gaps": [list(g) for g in self.gaps],
            "lost_packets": self.lost_packets,
            "gaps_unrecorded": self.gaps_unrecorded,
            "duplicates": self.duplicates,
            "late": self.late,
            "restarts": [list(r) for r in self.restarts],
            "strays": self.strays,
            "ssrc": self.ssrc,
            "ssrc_expected": self.ssrc_expected,
            "ssrc_policy": self.ssrc_policy,
            "ssrc_mismatches": self.ssrc_mismatches,
            "mismatched_ssrcs": self.mismatched_ssrcs,
            "invalid_packets": self.invalid_packets,
            "empty_packets": self.empty_packets,
            "refused_connections": self.refused_connections,
            "expected_peer_host": self.expected_peer_host,
            "refused_packets": self.refused_packets,
            "refused_sources": list(self.refused_sources),
            "video_run_span_s": self.video_run_span_s,
            "video_pts_restarts": self.video_pts_restarts,
            "write_stalls": self.write_stalls,
            "framing": self.framing,
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "resyncs": self.resyncs,
            "dropped_frames": self.dropped_frames,
        }


@dataclass
class _Counters:
    bytes: int = 0
    packets: int = 0
    video_frames: int = 0
    audio_frames: int = 0
    lost_packets: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    gaps_unrecorded: int = 0
    duplicates: int = 0
    late: int = 0
    restarts: list[tuple[int, int]] = field(default_factory=list)
    strays: int = 0
    ssrc_mismatches: int = 0
    mismatched_ssrcs: list[int] = field(default_factory=list)
    invalid_packets: int = 0
    empty_packets: int = 0
    refused_connections: int = 0
    refused_packets: int = 0
    refused_sources: list[str] = field(default_factory=list)
    write_stalls: int = 0
    payload_types: set[int] = field(default_factory=set)
    streams: dict[int, str] = field(default_factory=dict)
    first_video_pts: int | None = None
    last_video_pts: int | None = None
    pts_run_base: int | None = None  # the PTS the current run started at
    pts_run_last: int = 0
    pts_run_high: int = 0  # the furthest the current run went past its base (ticks)
    pts_longest: int = 0  # the longest run's span (ticks)
    pts_restarts: int = 0
    pts_progress: int = 0  # the forward advance of the video PTS inside its runs, summed (ticks)


def _pts_delta(a: int, b: int) -> int:
    """a - b on the 33-bit PTS circle, as the shorter way round (negative: a is before b)."""
    delta = (a - b) % PTS_MODULO
    return delta - PTS_MODULO if delta >= PTS_MODULO // 2 else delta


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_and_measure(fd: int, data: bytes | bytearray) -> int:
    """Write `data`; the free bytes left on the file's disk after it."""
    _write_all(fd, data)
    return _free_bytes_of(fd)


class RefusedWrite(Exception):
    """A write (or the fsync) of the raw PS its disk refused for want of space (`refused`: ENOSPC, EDQUOT),
    with the free bytes statvfs showed in the same worker call, just after the refusal (None: not read).
    Read there, not later: by then a neighbour refused by the same full disk (a docked camera's copy into the
    store, whose `.part` the pipeline removes) may have given its room back, and the reading would show room
    the refusal never had (review 30)."""

    def __init__(self, refused: OSError, free_bytes: int | None) -> None:
        super().__init__(refused)
        self.refused = refused
        self.free_bytes = free_bytes


def shows_room(refused: str | None, free_bytes: int | None) -> bool:
    """Whether a refusal for want of space came while the disk showed room: EDQUOT (a quota, a btrfs qgroup:
    never in statvfs), or ENOSPC with at least a flush's worth (`FLUSH_BYTES`) free just after it."""
    if refused == "EDQUOT":
        return True
    return refused == "ENOSPC" and free_bytes is not None and free_bytes >= FLUSH_BYTES


def _free_bytes_or_none(fd: int) -> int | None:
    try:
        return _free_bytes_of(fd)
    except OSError:
        return None


def _free_bytes_in(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _spool_free_bytes(fd: int, directory: Path, file_free: int | None) -> int | None:
    """The free bytes the raw PS may still take: the lesser of what statvfs shows for the file
    (`file_free`, read by the caller; None: not read) and for its directory. An XFS project quota shows only
    in statfs of an inode with the project-inherit flag, which is on directories: the file shows the whole
    file system (review 33). None when neither could be read."""
    try:
        directory_free: int | None = _free_bytes_in(directory)
    except OSError:
        directory_free = None
    readings = [free for free in (file_free, directory_free) if free is not None]
    return min(readings) if readings else None


_Written = TypeVar("_Written")


def _write_refusal_measured(write: Callable[[int, bytes | bytearray], _Written], fd: int,
                            data: bytes | bytearray, directory: Path) -> _Written:
    """`write(fd, data)` in the worker thread; a refusal for want of space (ENOSPC, EDQUOT) is raised as
    `RefusedWrite` with the free space read right after it, in this call, as the guard reads it
    (`_spool_free_bytes`: the file's and its `directory`'s); any other failure as it came.
    Never tried again (review 33, the module docstring): a write refused on NFS may stand for bytes taken
    before and lost at writeback, which a retry that succeeds would hide."""
    try:
        return write(fd, data)
    except OSError as exc:
        if _refused_errno(exc) is None:
            raise
        raise RefusedWrite(exc, _spool_free_bytes(fd, directory, _free_bytes_or_none(fd))) from exc


def _flush_measured(fd: int, data: bytes | bytearray, directory: Path) -> int:
    """One flush of the raw PS in the worker thread (`_write_and_measure`, refusals as
    `_write_refusal_measured`): the free bytes left after it, as `_spool_free_bytes` reads them."""
    file_free = _write_refusal_measured(_write_and_measure, fd, data, directory)
    free = _spool_free_bytes(fd, directory, file_free)
    assert free is not None  # the file's reading was taken
    return free


def _write_failure_reason(exc: BaseException) -> EndReason:
    """How a failed write of the raw PS ends the session: a full disk (ENOSPC, EDQUOT: filled by something
    else between the guard's looks, review 26) is `disk-full` like the guard's own stop, no fault of the
    recording; any other failure is an `error`."""
    if _refused_errno(exc) is not None:
        return EndReason.DISK_FULL
    return EndReason.ERROR


def _refused_errno(exc: BaseException) -> str | None:
    """The name of the errno ("ENOSPC", "EDQUOT") when `exc` is a write refused for want of space."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errno.errorcode[exc.errno]
    return None


def _free_bytes_of(fd: int) -> int:
    stats = os.fstatvfs(fd)
    return stats.f_bavail * stats.f_frsize


def _sync_and_close(fd: int, directory: Path, *, sync: bool) -> None:
    try:
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _sync_and_close_measured(fd: int, directory: Path, *, sync: bool) -> None:
    """`_sync_and_close`; an fsync refused for want of space (the disk refusing the bytes at writeback: NFS,
    CIFS, a thin or btrfs volume, a quota enforced there) is raised as `RefusedWrite` with the free space of
    the file's directory read just after (review 30). Not retried: after a failed writeback the kernel has
    dropped the error, and a second fsync would report success for bytes that never reached the disk."""
    try:
        _sync_and_close(fd, directory, sync=sync)
    except OSError as exc:
        if _refused_errno(exc) is None:
            raise
        try:
            free: int | None = _free_bytes_in(directory)
        except OSError:
            free = None
        raise RefusedWrite(exc, free) from exc


def _create_raw(raw_path: Path) -> int:
    """The raw PS file, created new in its directory (which must exist): no overwrite, no symlink."""
    try:
        dir_fd = os.open(raw_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise MediaError(f"raw PS directory {raw_path.parent}: {exc.strerror or exc}") from exc
    try:
        return os.open(raw_path.name, RAW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise MediaError(f"raw PS file {raw_path}: {exc.strerror or exc}") from exc
    finally:
        os.close(dir_fd)


def _host_key(host: str) -> str:
    """A host as compared for "is this the device's host": an IPv4-mapped IPv6 address as its IPv4 one
    (a dual-stack socket reports IPv4 peers that way), other addresses in their canonical form."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def same_host(a: str, b: str) -> bool:
    return _host_key(a) == _host_key(b)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_media_socket(transport: MediaTransport, host: str, port_range: tuple[int, int]) -> socket.socket:
    """A socket bound to the first free port of `port_range` (inclusive), starting at a random one so
    that a port just given up is not reused at once (a late packet of the old session would land in the
    new one). Raises MediaError when every port is taken."""
    first, last = port_range
    if not 0 < first <= last <= 65535:
        raise MediaError(f"port range {first}-{last} is not within 1-65535")
    ports = list(range(first, last + 1))
    start = random.randrange(len(ports))
    kind = socket.SOCK_DGRAM if transport is MediaTransport.UDP else socket.SOCK_STREAM
    for port in ports[start:] + ports[:start]:
        sock = socket.socket(_family(host), kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise MediaError(f"cannot bind a {transport} media socket on {host}:{port}: {exc.strerror}") \
                from exc
        sock.setblocking(False)
        return sock
    raise MediaError(f"no free {transport} media port on {host} in {first}-{last}")


@dataclass(frozen=True)
class UdpReceiveBuffer:
    """What a UDP media socket's receive buffer came to: asked for, and what the kernel granted (it caps
    SO_RCVBUF at net.core.rmem_max, ~208 KiB by default, without an error)."""

    asked_bytes: int
    granted_bytes: int
    rmem_max_bytes: int | None  # /proc/sys/net/core/rmem_max when readable

    @property
    def limited(self) -> bool:
        return self.granted_bytes < self.asked_bytes

    def summary(self) -> dict[str, Any]:
        hint = None
        if self.limited:
            hint = (f"net.core.rmem_max caps UDP media receive buffers at {self.granted_bytes} bytes (asked "
                    f"{self.asked_bytes}): a burst of a fast download over UDP may be dropped by the kernel; "
                    f"raise it (systemd/evidence-edge.sysctl.conf: net.core.rmem_max = {self.asked_bytes})")
        return {"asked_bytes": self.asked_bytes, "granted_bytes": self.granted_bytes,
                "rmem_max_bytes": self.rmem_max_bytes, "limited": self.limited, "hint": hint}


def _rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().strip())
    except (OSError, ValueError):
        return None


def granted_receive_buffer(sock: socket.socket) -> int:
    """The receive buffer the kernel gave `sock`, in the bytes SO_RCVBUF was asked in (Linux reports
    twice the value it granted, the doubling being its bookkeeping overhead: socket(7))."""
    reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return reported // 2 if sys.platform.startswith("linux") else reported


def probe_udp_receive_buffer(asked_bytes: int = UDP_RECEIVE_BUFFER_BYTES) -> UdpReceiveBuffer:
    """Ask a throwaway UDP socket for `asked_bytes` of receive buffer, as every UDP media socket does, and
    read back what it got: the platform logs and shows it when the kernel gave less (review 22)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, asked_bytes)
        granted = granted_receive_buffer(sock)
    return UdpReceiveBuffer(asked_bytes, granted, _rmem_max())


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: MediaReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.receiver._rtp(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: not the end of a UDP stream
        log.debug("media UDP socket: %s", exc)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, receiver: MediaReceiver) -> None:
        self.receiver = receiver
        self.deframer = StreamDeframer(Framing.AUTO)
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.peer: tuple[Any, ...] | None = None
        self.unconsumed = b""  # bytes of a frame begun in an earlier read (at most one frame)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.admitted = self.receiver._admit(self)
        if not self.admitted:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        try:
            frames = self.deframer.feed(data)
        except FramingError as exc:
            # The frames of this read before the bad one are good: take them, then end.
            for frame in self._frames_before_error(data):
                self.receiver._rtp(frame.payload, self.peer)
            self.receiver._end(EndReason.ERROR, f"TCP media from {_address(self.peer)}: {exc}")
            return
        held = self.deframer.buffered_bytes  # the start of a frame that the next read completes
        self.unconsumed = (self.unconsumed + data)[-held:] if held else b""
        for frame in frames:
            self.receiver._rtp(frame.payload, self.peer)

    def _frames_before_error(self, data: bytes) -> list[TcpFrame]:
        """The whole frames of `data` (after what an earlier read left) before the first bad one: a failed
        `feed` returns none of them, so they are cut again, one frame per feed, by a fresh deframer."""
        framing = self.deframer.framing
        if framing is Framing.AUTO:
            return []
        fresh = StreamDeframer(framing)
        header = 4 if framing is Framing.INTERLEAVED else 2
        buffer = self.unconsumed + data
        frames: list[TcpFrame] = []
        at = 0
        while at + header <= len(buffer):
            end = at + header + int.from_bytes(buffer[at + header - 2:at + header], "big")
            if end > len(buffer):
                break
            try:
                frames += fresh.feed(buffer[at:end])
            except FramingError:
                break
            at = end
        return frames

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.receiver._connection_lost(self, exc)


def _address(addr: tuple[Any, ...] | None) -> str:
    if not addr:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class MediaReceiver:
    """One session's media endpoint (see the module docstring). Made by `open_receiver`."""

    def __init__(
        self,
        transport: MediaTransport,
        *,
        sock: socket.socket,
        raw_path: Path | None,
        raw_fd: int | None,
        ssrc: int | None,
        idle_timeout_s: float,
        max_bytes: int,
        expected_peer_host: str | None,
        max_media_span_s: float | None,
        time_limit_s: float | None,
        progress_window_s: float | None,
        min_progress_s: float | None,
        clock: Callable[[], float],
        reorder_window: int,
        max_buffered_bytes: int,
        sink: Callable[[bytes], None] | None = None,
        min_free_bytes: int = 0,
        kept_free: Callable[[], SpaceTaken] | None = None,
        space: ReceiverSpace | None = None,
    ) -> None:
        self.transport = transport
        self.raw_path = raw_path
        self.local_port: int = sock.getsockname()[1]
        self._sock = sock
        self._fd = raw_fd
        # Where the free space is read beside the file (`_spool_free_bytes`: a project quota shows there).
        self._raw_directory = raw_path.parent if raw_path is not None else Path(".")
        self._sink = sink
        self._ssrc_expected = ssrc
        self._ssrc = ssrc
        self._idle_timeout_s = idle_timeout_s
        self._max_bytes = max_bytes
        self._expected_peer_host = expected_peer_host
        self._max_media_span = None if max_media_span_s is None else round(max_media_span_s * PTS_HZ)
        self._time_limit_s = time_limit_s
        self._progress_window_s = progress_window_s
        self._min_progress_s = min_progress_s or 0.0
        self._window_started: float | None = None  # the stall rule's current window (from the first packet)
        self._window_progress_mark = 0  # pts_progress when it started
        self._clock = clock
        self._max_buffered = max_buffered_bytes
        self._min_free_bytes = min_free_bytes
        self._kept_free = kept_free  # read on the loop at each write: the holders and bookings come and go
        self._space = space  # a download's own booking: what it keeps free instead of `kept_free()`
        self._guarded = bool(min_free_bytes) or kept_free is not None or space is not None
        self._taken_at_flush: SpaceTaken | None = None  # what `kept_free()` said as the write in flight began
        self._flight_bytes = 0  # the size of the write in flight
        window = reorder_window if transport is MediaTransport.UDP else 1
        self._reorder = ReorderBuffer(window=window)
        self._demuxer = PsDemuxer(max_frame_bytes=MAX_FRAME_BYTES)
        self._counters = _Counters()
        self._pending = bytearray()
        self._flight: asyncio.Future[int] | None = None
        self._write_failed: str | None = None
        self._bytes_written: int | None = None  # what the raw PS holds at its close (`_finish`)
        self._write_refused: str | None = None  # ENOSPC / EDQUOT: a write the disk refused for want of space
        self._write_refused_free: int | None = None  # statvfs's free bytes just after it (the worker reads)
        self._opened_at = clock()
        self._first_packet_at: float | None = None
        self._last_activity = self._opened_at
        self._ended: EndReason | None = None
        self._detail = ""
        self._limit_reached = False
        self._peer: str | None = None
        self._connection: _TcpProtocol | None = None
        self._paused = False
        self._datagram: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._finish_task: asyncio.Task[MediaOutcome] | None = None
        self._framing: str | None = None
        self._ended_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_packet_at = self._loop.time()  # on the loop's clock: what close() drains by
        self._last_packet_wall: float | None = None  # time.time() when the last packet taken arrived
        self._last_packet_mono: float | None = None  # and time.monotonic() (durations: no clock step)

    # -- the interface ---------------------------------------------------------------------------------------

    @property
    def progress(self) -> MediaProgress:
        c = self._counters
        now = self._clock()
        since_first = now - self._first_packet_at if self._first_packet_at is not None else 0.0
        return MediaProgress(
            bytes=c.bytes, packets=c.packets, frames=c.video_frames + c.audio_frames,
            lost_packets=c.lost_packets, elapsed_s=now - self._opened_at,
            rate_bps=8 * c.bytes / since_first if since_first > 0 else 0.0, empty_packets=c.empty_packets,
        )

    @property
    def ended(self) -> EndReason | None:
        return self._ended

    @property
    def last_packet_at(self) -> float | None:
        """When (`time.time()`) the session's last packet arrived, None before the first: bytes the
        reorder buffer gives out later (a hole filled, or flushed at the end) arrived then at the latest,
        which is what a live stream's last byte is stamped with (edge.gb28181.live)."""
        return self._last_packet_wall

    @property
    def last_packet_monotonic(self) -> float | None:
        """The same arrival on the monotonic clock (`time.monotonic()`): what durations between packets are
        measured on (a step of the station's clock is no stall)."""
        return self._last_packet_mono

    @property
    def _raw_name(self) -> str:
        return "(none)" if self.raw_path is None else self.raw_path.name

    def expect_ssrc(self, ssrc: int | None) -> None:
        """The device's answer named another SSRC than our offer (`y=`), or none (None: take the first one
        seen). From now on packets of that SSRC are the session's; what was already taken stays."""
        if ssrc is not None and not 0 <= ssrc <= 0xFFFFFFFF:
            raise MediaError(f"SSRC {ssrc} does not fit 32 bits")
        if self._counters.packets and ssrc != self._ssrc:
            log.warning("media port %d: SSRC changed from %s to %s after %d packets", self.local_port,
                        self._ssrc, ssrc, self._counters.packets)
        self._ssrc_expected = ssrc
        self._ssrc = ssrc

    def expect_peer(self, host: str) -> None:
        """From now on, take media only from `host` (the device's address): a TCP connection, or UDP
        datagrams. Better given to `open_receiver` (the port is open from then on)."""
        self._expected_peer_host = host

    async def connect(self, remote_host: str, remote_port: int) -> None:
        """TCP active: connect from our bound port to the device's listening address (from its answer).
        Raises MediaError (and ends the session, `error`) when that fails within the idle timeout."""
        if self.transport is not MediaTransport.TCP_ACTIVE:
            raise MediaError(f"connect() is for {MediaTransport.TCP_ACTIVE} sessions, not {self.transport}")
        if self._connection is not None or self._ended is not None:
            raise MediaError("this media session is already connected or ended")
        where = _address((remote_host, remote_port))
        try:
            await asyncio.wait_for(self._loop.sock_connect(self._sock, (remote_host, remote_port)),
                                   self._idle_timeout_s)
            await self._loop.create_connection(lambda: _TcpProtocol(self), sock=self._sock)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            detail = f"cannot connect to the device's media address {where}: {reason}"
            self._end(EndReason.ERROR, detail)
            raise MediaError(detail) from exc

    async def close(self, *, drain_s: float = DRAIN_S) -> MediaOutcome:
        """End the session (MediaStatus 121, BYE, or the platform gave up) and return its outcome.

        A device sends MediaStatus 121 after its last packet, but those packets may still be on their
        way or in the socket's buffer when the platform hears of it: reading goes on until `QUIET_S`
        pass without a packet of the session, for at most `drain_s` (0: at once)."""
        loop = self._loop
        deadline = loop.time() + drain_s
        while self._ended is None and drain_s > 0:
            now = loop.time()
            quiet_at = self._last_packet_at + QUIET_S
            if now >= quiet_at or now >= deadline:
                break
            await asyncio.sleep(min(quiet_at, deadline) - now)
        self._end(EndReason.CLOSED, "closed by the platform")
        return await self.wait_closed()

    async def drain(self, quiet_s: float = END_QUIET_S) -> None:
        """Go on receiving until `quiet_s` pass without a packet of the session, or the session ends on its
        own (idle timeout, TCP closed, byte, media-time and time limits, stall): no other bound. A device
        sends MediaStatus 121 when it has read its file, which over a slow uplink is long before its last
        packet arrives (megabytes still in its TCP buffer): the platform drains before it sends BYE, since
        a BYE stops the device (review 22)."""
        loop = self._loop
        while self._ended is None:
            wait_s = self._last_packet_at + quiet_s - loop.time()
            if wait_s <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended_event.wait(), wait_s)

    async def wait_closed(self) -> MediaOutcome:
        """Wait for the session to end (however it ends) and its raw file to be durable."""
        while self._finish_task is None:
            await self._ended_event.wait()
        return await asyncio.shield(self._finish_task)

    # -- start -----------------------------------------------------------------------------------------------

    async def _start(self) -> None:
        if self.transport is MediaTransport.UDP:
            self._datagram, _ = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=self._sock)
        elif self.transport is MediaTransport.TCP_PASSIVE:
            self._sock.listen(4)
            self._server = await self._loop.create_server(lambda: _TcpProtocol(self), sock=self._sock)
        self._idle_task = asyncio.create_task(self._watch_idle(), name=f"media-idle-{self.local_port}")

    async def _watch_idle(self) -> None:
        while self._ended is None:
            now = self._clock()
            remaining = self._last_activity + self._idle_timeout_s - now
            if remaining <= 0:
                what = "no media arrived" if self._first_packet_at is None else "no media"
                self._end(EndReason.IDLE, f"{what} for {self._idle_timeout_s:g} s")
                return
            if self._time_limit_s is not None:
                left = self._opened_at + self._time_limit_s - now
                if left <= 0:
                    self._end(EndReason.TIME_LIMIT, f"still receiving after the session's limit of "
                                                    f"{self._time_limit_s:g} s")
                    return
                remaining = min(remaining, left)
            stalled = self._check_progress(now)
            if stalled is not None:
                self._end(EndReason.TIME_LIMIT, stalled)
                return
            if self._window_started is not None and self._progress_window_s is not None:
                remaining = min(remaining, self._window_started + self._progress_window_s - now)
            # Woken at least every IDLE_CHECK_S, so the clock given (a monotonic seam) rules, not the loop's.
            await asyncio.sleep(min(remaining, IDLE_CHECK_S))

    def _check_progress(self, now: float) -> str | None:
        """The stall rule (see the module docstring): why the session ends, or None. A window that brought
        enough starts the next one."""
        window = self._progress_window_s
        if window is None or self._window_started is None or now - self._window_started < window:
            return None
        progress = self._counters.pts_progress
        gained_s = (progress - self._window_progress_mark) / PTS_HZ
        if gained_s < self._min_progress_s:
            elapsed = now - self._window_started
            return (f"the transfer stalled: {gained_s:.1f} s of video in the last {elapsed:.0f} s, under the "
                    f"{self._min_progress_s:g} s per {window:g} s a transfer must bring")
        self._window_started, self._window_progress_mark = now, progress
        return None

    # -- bytes in --------------------------------------------------------------------------------------------

    def _admit(self, connection: _TcpProtocol) -> bool:
        peer_host = str(connection.peer[0]) if connection.peer else None
        if self._ended is not None or self._connection is not None:
            why = "a connection was already taken" if self._connection is not None else "the session ended"
        elif (self.transport is MediaTransport.TCP_PASSIVE and self._expected_peer_host is not None
              and (peer_host is None or not same_host(peer_host, self._expected_peer_host))):
            why = f"not from the device's address {self._expected_peer_host}"
        else:
            self._connection = connection
            self._peer = _address(connection.peer)
            return True
        self._counters.refused_connections += 1
        self._note_refused_source(connection.peer)
        log.warning("media port %d: refused a TCP connection from %s: %s", self.local_port,
                    _address(connection.peer), why)
        return False

    def _connection_lost(self, connection: _TcpProtocol, exc: Exception | None) -> None:
        if self._ended is not None:
            return
        left = connection.deframer.buffered_bytes
        tail = f", {left} bytes of an incomplete frame at its end" if left else ""
        if exc is not None:
            self._end(EndReason.ERROR, f"the TCP media connection from {self._peer} failed: {exc}{tail}")
        else:
            self._end(EndReason.CLOSED, f"the device closed the TCP media connection{tail}")
        framing = connection.deframer.framing
        self._framing = None if framing is Framing.AUTO else str(framing)

    def _note_refused_source(self, addr: tuple[Any, ...] | None) -> None:
        sources = self._counters.refused_sources
        shown = _address(addr)
        if len(sources) < MAX_RECORDED_SOURCES and shown not in sources:
            sources.append(shown)

    def _refuse_datagram(self, addr: tuple[Any, ...] | None) -> bool:
        """UDP: whether this datagram comes from another host than the device's (then it is counted and
        nothing else is done with it; logged for the first few sources only: a flood must not flood the
        log)."""
        expected = self._expected_peer_host
        if expected is None or (addr and same_host(str(addr[0]), expected)):
            return False
        c = self._counters
        c.refused_packets += 1
        before = len(c.refused_sources)
        self._note_refused_source(addr)
        if len(c.refused_sources) > before:
            log.warning("media port %d: refused UDP media from %s: not from the device's address %s",
                        self.local_port, _address(addr), expected)
        return True

    def _rtp(self, data: bytes, addr: tuple[Any, ...] | None) -> None:
        if self._ended is not None:
            return
        if self.transport is MediaTransport.UDP and self._refuse_datagram(addr):
            return
        c = self._counters
        try:
            packet = parse_rtp(data)
        except RtpError:
            c.invalid_packets += 1
            return
        if self._ssrc is None:
            self._ssrc = packet.ssrc
            log.info("media port %d: no SSRC expected, locked on %d from %s", self.local_port, packet.ssrc,
                     _address(addr))
        elif packet.ssrc != self._ssrc:
            c.ssrc_mismatches += 1
            if len(c.mismatched_ssrcs) < MAX_RECORDED_SSRCS and packet.ssrc not in c.mismatched_ssrcs:
                c.mismatched_ssrcs.append(packet.ssrc)
            return
        if packet.payload:  # media arrived; a packet without payload is none (counted in `_take`)
            now = self._clock()
            self._last_activity = now
            self._last_packet_at = self._loop.time()
            self._last_packet_wall = time.time()
            self._last_packet_mono = time.monotonic()
            if self._first_packet_at is None:
                self._first_packet_at = now
                self._window_started = now
        if self._peer is None:
            self._peer = _address(addr)
        if len(c.payload_types) < 128:
            c.payload_types.add(packet.payload_type)
        self._take(self._reorder.push(packet))

    def _take(self, events: list[ReorderEvent]) -> None:
        c = self._counters
        for event in events:
            if isinstance(event, Delivered):
                if not event.packet.payload:  # a keepalive, padding only: its place kept, nothing to take
                    c.empty_packets += 1
                elif not self._payload(event.packet.payload):
                    return
            elif isinstance(event, Gap):
                c.lost_packets += event.count
                if len(c.gaps) < MAX_RECORDED_GAPS:
                    c.gaps.append((event.first, event.last))
                else:
                    c.gaps_unrecorded += 1
                self._demux(self._demuxer.discontinuity(f"RTP packets {event.first}..{event.last} lost"))
            elif isinstance(event, Duplicate):
                c.duplicates += 1
            elif isinstance(event, Late):
                c.late += 1
            elif isinstance(event, Restart):
                if len(c.restarts) < MAX_RECORDED_GAPS:
                    c.restarts.append((event.previous, event.first))
                self._demux(self._demuxer.discontinuity(
                    f"RTP numbering restarted from {event.previous_sequence} to {event.sequence}"))
            elif isinstance(event, Stray):
                c.strays += 1

    def _payload(self, payload: bytes) -> bool:
        """Append one packet's payload to the raw PS; False once the size limit stops the session."""
        c = self._counters
        if self._limit_reached or self._write_failed is not None:
            return False
        if self._fd is not None and c.bytes + len(payload) > self._max_bytes:
            self._limit_reached = True
            self._end(EndReason.LIMIT, f"the raw PS reached its limit of {self._max_bytes} bytes")
            return False
        c.bytes += len(payload)
        c.packets += 1
        if self._fd is not None:
            self._pending += payload
        if self._sink is not None:
            try:
                self._sink(payload)
            except Exception as exc:  # the consumer's bug ends the session, never the receiver's loop
                log.exception("media port %d: the stream's sink failed", self.local_port)
                self._end(EndReason.ERROR, f"the stream's consumer failed: {exc}")
                return False
        self._demux(self._demuxer.feed(payload))
        if self._flight is None and len(self._pending) >= FLUSH_BYTES:
            self._start_flush()
        if len(self._pending) > self._max_buffered:
            self._behind()
        return True

    def _demux(self, events: list[PsEvent]) -> None:
        c = self._counters
        for event in events:
            if isinstance(event, EsFrame):
                if is_video(event.stream_id):
                    c.video_frames += 1
                    if event.pts is not None:
                        if c.first_video_pts is None:
                            c.first_video_pts = event.pts
                        c.last_video_pts = event.pts
                        self._pts_run(event.pts)
                elif is_audio(event.stream_id):
                    c.audio_frames += 1
            elif isinstance(event, StreamMap):
                c.streams = {s.stream_id: str(s.codec) for s in event.streams}

    def _pts_run(self, pts: int) -> None:
        """Follow the monotonic runs of video PTS; end the session once the longest passes the bound."""
        c = self._counters
        if c.pts_run_base is not None:
            step = _pts_delta(pts, c.pts_run_last)
            if -PTS_BACKSTEP <= step <= PTS_JUMP:
                high = _pts_delta(pts, c.pts_run_base)
                if high > c.pts_run_high:
                    c.pts_progress += high - c.pts_run_high
                    c.pts_run_high = high
                c.pts_run_last = pts
                c.pts_longest = max(c.pts_longest, c.pts_run_high)
                if self._max_media_span is not None and c.pts_longest > self._max_media_span:
                    bound = self._max_media_span / PTS_HZ
                    self._end(EndReason.PAST_END, f"{c.pts_longest / PTS_HZ:.1f} s of video, past the "
                                                  f"{bound:g} s the recording may hold")
                return
            c.pts_restarts += 1
        c.pts_run_base = c.pts_run_last = pts
        c.pts_run_high = 0

    # -- bytes out -------------------------------------------------------------------------------------------

    def _behind(self) -> None:
        """The disk is `max_buffered_bytes` behind: slow a TCP device down, end a UDP session `disk-slow`
        (UDP cannot slow the device; what was taken is written whole at the end)."""
        if self._connection is not None and self._connection.transport is not None:
            if not self._paused:
                self._paused = True
                self._counters.write_stalls += 1
                self._connection.transport.pause_reading()
            if self._flight is None:
                self._start_flush()
            return
        self._end(EndReason.DISK_SLOW, f"writing the raw PS fell more than {self._max_buffered} bytes behind "
                                       "the stream (the disk is too slow); later packets would be lost")

    def _start_flush(self) -> None:
        assert self._fd is not None
        chunk, self._pending = self._pending, bytearray()
        # Read before the worker reads the free space (edge.ingest.kept_space): a booking written meanwhile
        # is in the free figure by then, so it is never missed, at worst counted twice.
        if self._space is not None:
            self._taken_at_flush = self._space.taken(self._counters.bytes)
        else:
            self._taken_at_flush = None if self._kept_free is None else self._kept_free()
        self._flight_bytes = len(chunk)
        flight = self._loop.run_in_executor(None, _flush_measured, self._fd, chunk, self._raw_directory)
        self._flight = flight
        flight.add_done_callback(self._flushed)

    def _note_refusal(self, exc: BaseException) -> BaseException:
        """Record a refusal for want of space (the first one: its errno and the free space read with it);
        returns the OSError itself for the message."""
        if isinstance(exc, RefusedWrite):
            if self._write_refused is None:
                self._write_refused = _refused_errno(exc.refused)
                self._write_refused_free = exc.free_bytes
            return exc.refused
        return exc

    def _flushed(self, flight: asyncio.Future[int]) -> None:
        self._flight = None
        exc = flight.exception()
        if exc is not None:
            exc = self._note_refusal(exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._write_failed = f"writing the raw PS {self._raw_name} failed: {reason}"
            self._pending.clear()
            if self._ended is None:
                self._end(_write_failure_reason(exc), self._write_failed)
            else:
                # The write in flight as the session ended (a device closing right after its last packet,
                # a close after 121) failed: the outcome says so, as `_finish` does for its own (review 29).
                self._ended = _write_failure_reason(exc)
                self._detail = self._write_failed
            return
        if self._space is not None:
            self._space.wrote(self._flight_bytes)
        received = self._counters.bytes
        taken = self._taken_at_flush
        kept = 0 if taken is None else taken.bytes
        per_byte = room_per_received_byte(self._min_free_bytes)
        needed = self._min_free_bytes + kept + per_byte * received
        if self._guarded and self._ended is None and flight.result() < needed:
            # Stopped here, not at a full disk: what came can still be sealed (the rest of the stream is
            # not taken: `_finish` writes only what was already buffered).
            held = f" and the {kept} other writers hold or booked ({taken.said})" if taken and kept else ""
            room = f" plus {per_byte} x what came (room to seal it)" if per_byte else ""
            self._end(EndReason.DISK_FULL,
                      f"the disk of the raw PS has {flight.result()} bytes free after {received} bytes "
                      f"received: under the {self._min_free_bytes} kept free{held}{room}")
            return
        if self._paused and len(self._pending) < self._max_buffered // 2 and self._ended is None:
            self._paused = False
            if self._connection is not None and self._connection.transport is not None:
                self._connection.transport.resume_reading()
        if self._ended is None and len(self._pending) >= FLUSH_BYTES:
            self._start_flush()

    # -- the end ---------------------------------------------------------------------------------------------

    def _end(self, reason: EndReason, detail: str) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        self._detail = detail
        log.info("media port %d (%s): ended %s: %s", self.local_port, self.transport, reason, detail)
        if self._connection is not None and self._connection.transport is not None:
            framing = self._connection.deframer.framing
            self._framing = None if framing is Framing.AUTO else str(framing)
            self._connection.transport.abort()
        if self._datagram is not None:
            self._datagram.abort()
        if self._server is not None:
            self._server.close()
        if self.transport is MediaTransport.TCP_ACTIVE and self._connection is None:
            self._sock.close()
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        self._finish_task = asyncio.ensure_future(self._finish())
        self._ended_event.set()

    async def _finish(self) -> MediaOutcome:
        if self._ended not in (EndReason.LIMIT,) and self._write_failed is None:
            self._take(self._reorder.flush())
        self._demux(self._demuxer.flush())
        while self._flight is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flight)
            await asyncio.sleep(0)  # let the done callback run
        if self._fd is None:  # nothing stored: a sink took the bytes
            if self._server is not None:
                await self._server.wait_closed()
            return self._outcome()
        synced = self._write_failed is None
        fd, directory = self._fd, self._raw_directory
        try:
            if synced and self._pending:
                chunk, self._pending = self._pending, bytearray()
                await self._loop.run_in_executor(None, _write_refusal_measured, _write_all, fd, chunk,
                                                 directory)
        except (OSError, RefusedWrite) as failure:
            synced = False
            exc = self._note_refusal(failure)
            self._ended = _write_failure_reason(exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._detail = f"writing the raw PS {self._raw_name} failed: {reason}"
        try:
            # What the file holds, whatever was received: a refused last write (after MediaStatus 121 or
            # BYE) leaves it short of `bytes`, and the verdict and the manifest say so (review 28).
            self._bytes_written = await self._loop.run_in_executor(None, lambda: os.fstat(fd).st_size)
        except OSError:
            self._bytes_written = None
        try:
            await self._loop.run_in_executor(
                None, lambda: _sync_and_close_measured(fd, directory, sync=synced))
        except RefusedWrite as refusal:
            # The disk refused the bytes at writeback, for want of space: the station's disk, as a refused
            # write is (review 30); what the file holds past its last durable point is not known.
            self._note_refusal(refusal)
            self._ended = EndReason.DISK_FULL
            self._detail = (f"making the raw PS {self._raw_name} durable failed: "
                            f"{refusal.refused.strerror or refusal.refused}")
        except OSError as exc:
            self._ended = EndReason.ERROR
            self._detail = f"making the raw PS {self._raw_name} durable failed: {exc.strerror or exc}"
        if self._server is not None:
            await self._server.wait_closed()
        return self._outcome()

    def _outcome(self) -> MediaOutcome:
        c = self._counters
        assert self._ended is not None
        return MediaOutcome(
            transport=self.transport, ended=self._ended, detail=self._detail, bytes=c.bytes,
            packets=c.packets,
            gaps=list(c.gaps), lost_packets=c.lost_packets, gaps_unrecorded=c.gaps_unrecorded,
            duplicates=c.duplicates, late=c.late, ssrc=self._ssrc if c.packets else None,
            ssrc_expected=self._ssrc_expected,
            ssrc_policy="expected" if self._ssrc_expected is not None else "first-seen",
            ssrc_mismatches=c.ssrc_mismatches, mismatched_ssrcs=list(c.mismatched_ssrcs),
            invalid_packets=c.invalid_packets, empty_packets=c.empty_packets,
            refused_connections=c.refused_connections,
            write_stalls=c.write_stalls, peer=self._peer,
            framing=self._framing, payload_types=sorted(c.payload_types),
            video_frames=c.video_frames, audio_frames=c.audio_frames, resyncs=self._demuxer.stats.resyncs,
            dropped_frames=self._demuxer.stats.dropped_frames, streams=dict(c.streams),
            first_video_pts=c.first_video_pts, last_video_pts=c.last_video_pts,
            elapsed_s=self._clock() - self._opened_at, restarts=list(c.restarts), strays=c.strays,
            expected_peer_host=self._expected_peer_host, refused_packets=c.refused_packets,
            refused_sources=list(c.refused_sources),
            video_run_span_s=None if c.pts_run_base is None else c.pts_longest / PTS_HZ,
            video_pts_restarts=c.pts_restarts, bytes_written=self._bytes_written,
            write_refused=self._write_refused, write_refused_free_bytes=self._write_refused_free,
        )


async def open_receiver(
    transport: MediaTransport | str,
    *,
    bind_host: str,
    port_range: tuple[int, int],
    ssrc: int | None,
    raw_path: Path | None,
    idle_timeout_s: float,
    max_bytes: int,
    expected_peer_host: str | None = None,
    max_media_span_s: float | None = None,
    time_limit_s: float | None = None,
    progress_window_s: float | None = None,
    min_progress_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    reorder_window: int = DEFAULT_REORDER_WINDOW,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    sink: Callable[[bytes], None] | None = None,
    min_free_bytes: int = 0,
    kept_free: Callable[[], SpaceTaken] | None = None,
    space: ReceiverSpace | None = None,
) -> MediaReceiver:
    """Bind a media endpoint for one session and start receiving (see the module docstring).
    `transport` may be given as its string ("udp", "tcp-passive", "tcp-active"). `raw_path` must not
    exist; its directory must. None: no file (then a `sink` takes the bytes). Raises MediaError."""
    try:
        transport = MediaTransport(transport)
    except ValueError:
        raise MediaError(f"media transport {transport!r} is not one of "
                         f"{', '.join(t.value for t in MediaTransport)}") from None
    if idle_timeout_s <= 0 or max_bytes <= 0:
        raise MediaError("idle_timeout_s and max_bytes must be positive")
    if (max_media_span_s is not None and max_media_span_s <= 0) or (time_limit_s is not None
                                                                   and time_limit_s <= 0):
        raise MediaError("max_media_span_s and time_limit_s must be positive when given")
    if (progress_window_s is None) != (min_progress_s is None) or (
            progress_window_s is not None and (progress_window_s <= 0 or min_progress_s is None
                                               or min_progress_s < 0)):
        raise MediaError("progress_window_s (positive) and min_progress_s (not negative) go together")
    if min_free_bytes < 0:
        raise MediaError("min_free_bytes must not be negative")
    if max_buffered_bytes < 2 * FLUSH_BYTES:
        raise MediaError(f"max_buffered_bytes must be at least {2 * FLUSH_BYTES}")
    if raw_path is None and sink is None:
        raise MediaError("a media receiver needs a raw file or a sink for its bytes")
    fd = None if raw_path is None else _create_raw(raw_path)
    try:
        sock = bind_media_socket(transport, bind_host, port_range)
    except BaseException:
        _discard_raw(fd, raw_path)
        raise
    receiver = MediaReceiver(
        transport, sock=sock, raw_path=raw_path, raw_fd=fd, ssrc=ssrc, idle_timeout_s=idle_timeout_s,
        max_bytes=max_bytes, expected_peer_host=expected_peer_host, max_media_span_s=max_media_span_s,
        time_limit_s=time_limit_s, progress_window_s=progress_window_s, min_progress_s=min_progress_s,
        clock=clock, reorder_window=reorder_window, max_buffered_bytes=max_buffered_bytes, sink=sink,
        min_free_bytes=min_free_bytes, kept_free=kept_free, space=space,
    )
    try:
        await receiver._start()
    except BaseException:
        sock.close()
        _discard_raw(fd, raw_path)
        raise
    return receiver


def receiver_keeping_free(min_free_bytes: int, kept_free: Callable[[], SpaceTaken] | None = None
                          ) -> Callable[..., Awaitable[MediaReceiver]]:
    """`open_receiver` with its free-space guard set (`min_free_bytes`: the station store's reserve, since
    the download spool is on the store's disk; `kept_free`: what the rooms recording hold beyond it and what
    other writers booked, read at each write), for the platform's `open_receiver` seam."""
    if min_free_bytes < 0:
        raise MediaError("min_free_bytes must not be negative")

    async def open_keeping_free(*args: Any, **kwargs: Any) -> MediaReceiver:
        return await open_receiver(*args, min_free_bytes=min_free_bytes, kept_free=kept_free, **kwargs)

    return open_keeping_free


def _discard_raw(fd: int | None, raw_path: Path | None) -> None:
    if fd is not None and raw_path is not None:
        os.close(fd)
        raw_path.unlink(missing_ok=True)
