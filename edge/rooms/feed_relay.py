"""The composite's feed from one source, relayed by the agent over pipes: no port, no path, no other reader.

A source the room composite shows writes a copy of its encoded streams (MPEG-TS) to a pipe whose write end
its ffmpeg inherits (:meth:`FeedRelay.source_end`); the agent reads the other end and writes the packets on
to a pipe whose read end the composite's ffmpeg inherits (:meth:`FeedRelay.composite_end`). A pipe has no
name anyone else can open: both ends are close-on-exec in the agent, handed only to the one ffmpeg that
uses them (``pass_fds``), and another user cannot reach a process's descriptors (``/proc/PID/fd`` needs
ptrace rights, and the shipped unit hides the agent's processes: ``ProtectProc=invisible``). So no local
process can take, read (watch the interview) or write (inject pictures into) the feed, as it could the
loopback UDP port this replaces (review 25).

Nothing the composite does may hold up a source (its sealed segments are the evidence; the composite is
derived from them):

* the source's ffmpeg writes the feed through the fifo muxer in its own thread, dropping packets when its
  queue is full (:func:`edge.rooms.argv.tee_output_args`), so even an agent that stopped reading never
  blocks the segments (after ten seconds of it the run gives its feed up: the composite loses that
  source until its next run); a pipe whose reader is gone fails only the feed (``onfail=ignore``);
* the agent reads the source's pipe whatever the composite does, and keeps for the composite's pipe
  (non-blocking) only the last `backlog_s` of the feed (about a second; at most `buffer_bytes`): a
  composite that is slow, stopped (SIGSTOP) or restarting gets the *oldest* whole TS packets dropped
  (188-byte aligned: its demuxer loses packets, never the framing), so once it reads again it renders what
  the source is recording now, not a backlog of old pictures under the clock it burns in at rendering
  (review 27). The composite's pipe is small for the same reason (COMPOSITE_PIPE_BYTES). A drop is counted
  (:meth:`FeedRelay.status`) and reported (:class:`FeedDrop`: the recording makes it a gap of the
  composite) once packets have gone through DROP_SETTLE_S without another, or, for a composite that
  reads but stays behind (it took packets within DROP_SETTLE_S), every DROP_SPLIT_SETTLES x
  DROP_SETTLE_S of lost feed while it goes on (each report one gap), and at the close or the composite
  run's end. In the first COMPOSITE_START_S of a composite run only the bytes bound holds (its ffmpeg
  probes its inputs one after the other: the feed it probes last waits). Packets that arrive while no
  composite runs are discarded and counted apart: the composite's own outage is its gap already.

Dropping is by whole packets, not up to a key frame: the composite's decoder conceals the pictures up to
the next key frame of the source (a second or two of a smeared picture, within the gap reported).

The relay's reading loop (:meth:`FeedRelay.run`) is a supervised task; its pipes live in the relay, so a
restarted loop goes on with the same source run.
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
from typing import Any

log = logging.getLogger(__name__)

TS_PACKET_BYTES = 188
TS_SYNC = 0x47
READ_BYTES = 64 * 1024
# Each pipe's kernel buffer (F_SETPIPE_SZ; the default pipe-max-size): about a second of a 1080p feed.
PIPE_BYTES = 1 << 20
# The composite's pipe (its kernel buffer): small, for what waits in it is as old as what the agent keeps.
COMPOSITE_PIPE_BYTES = 64 * 1024
# What the agent keeps for a composite that does not read (per source): the feed's last second (older
# packets are dropped first), and never more than a few seconds of a 1080p feed.
BACKLOG_S = 1.0
# ... except in the first seconds of a composite run, while its ffmpeg probes one input after the other.
COMPOSITE_START_S = 5.0
BUFFER_BYTES = 4 << 20
# Drops this close together are one loss of picture (one gap, not one per burst of a slow composite): a
# drop is reported once packets have gone through this long without another.
DROP_SETTLE_S = 2.0
# A drop that goes on while the composite reads (a composite always behind) is reported after this many
# DROP_SETTLE_S (10 s) of lost feed and a new one begins: the loss is on the ledger while the session runs.
DROP_SPLIT_SETTLES = 5


@dataclass(frozen=True)
class FeedDrop:
    """Packets of `source`'s feed the composite never got (it did not read), station times."""

    source: str
    from_ns: int
    to_ns: int
    packets: int


def _pipe(size_bytes: int) -> tuple[int, int]:
    """A pipe (both ends close-on-exec: only a run that is handed an end by pass_fds gets it)."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # the size is a margin (or a bound on the composite's lag), not a need
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, size_bytes)
    return read_end, write_end


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class FeedRelay:
    """One source's feed to the composite (see the module docstring)."""

    def __init__(self, source_id: str, *, buffer_bytes: int | None = None, backlog_s: float | None = None,
                 on_drop: Callable[[FeedDrop], None] = lambda drop: None) -> None:
        buffer_bytes = BUFFER_BYTES if buffer_bytes is None else buffer_bytes
        backlog_s = BACKLOG_S if backlog_s is None else backlog_s
        if buffer_bytes < TS_PACKET_BYTES:
            raise ValueError(f"buffer_bytes must hold a TS packet ({TS_PACKET_BYTES}), got {buffer_bytes}")
        if not backlog_s > 0:
            raise ValueError(f"backlog_s must be above 0, got {backlog_s}")
        self.source_id = source_id
        self.buffer_bytes = buffer_bytes
        self.backlog_ns = int(backlog_s * 1e9)
        self.on_drop = on_drop
        self._inputs: deque[int] = deque()  # read ends of source runs, oldest first
        self._input_ready = asyncio.Event()
        self._input: int | None = None
        self._partial = b""  # the start of a TS packet the next read completes
        self._output: int | None = None  # write end of the composite run's pipe (non-blocking)
        self._writing = False  # a writer callback is registered for _output
        # Whole packets for the composite, each read's with the station time it came (oldest first).
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._head_begun = False  # the head is partly written: the rest of its packet must follow
        self._buffered = 0
        self._drop_from_ns: int | None = None  # the drop going on (or settling): its first packets came
        self._drop_to_ns = 0  # its last dropped packets came
        self._drop_last_ns = 0  # the station time packets were last dropped
        self._drop_packets = 0
        self._written_ns = 0  # packets last went into the composite's pipe (it reads, maybe behind)
        self._attached_ns = 0  # the composite's run got its pipe
        self.closed = False
        # Counters (status)
        self.bytes_relayed = 0
        self.packets_dropped = 0
        self.drops = 0
        self.packets_without_composite = 0
        self.bytes_out_of_sync = 0
        self.source_runs = 0
        self.composite_runs = 0

    def __repr__(self) -> str:
        return f"FeedRelay({self.source_id})"

    # -- the ends handed to the runs -----------------------------------------------------------------

    def source_end(self) -> int:
        """A new pipe for a run of the source: its write end (for that ffmpeg's pass_fds; the caller closes
        the agent's copy once the run is started); the relay reads the other end after the ends of the
        earlier runs."""
        read_end, write_end = _pipe(PIPE_BYTES)
        os.set_blocking(read_end, False)
        # Non-blocking for the source's ffmpeg too: its feed's thread gives a pipe nobody empties up after
        # its rw_timeout (edge.rooms.argv.tee_output_args) rather than wait on it for ever.
        os.set_blocking(write_end, False)
        self._inputs.append(read_end)
        self._input_ready.set()
        self.source_runs += 1
        return write_end

    def composite_end(self) -> int:
        """A new pipe for a run of the composite: its read end (for that ffmpeg's pass_fds; the caller
        closes the agent's copy once the run is started). The previous run's pipe is closed, and the new
        run gets packets from the next one read (what waited for the previous run is dropped)."""
        self._detach_output()
        read_end, write_end = _pipe(min(PIPE_BYTES, COMPOSITE_PIPE_BYTES))
        os.set_blocking(write_end, False)
        # Non-blocking for the composite's ffmpeg too: waiting for the feed, it polls and so still answers
        # SIGTERM (blocked in read(), an input thread of it would hold up its exit until SIGKILL).
        os.set_blocking(read_end, False)
        self._output = write_end
        self._attached_ns = time.time_ns()
        self.composite_runs += 1
        return read_end

    def close(self) -> None:
        """Close every pipe end the relay holds (the session's recording is over)."""
        self.closed = True
        self._detach_output()
        _close(self._input)
        self._input = None
        while self._inputs:
            _close(self._inputs.popleft())

    # -- the supervised loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the source's runs, one after the other, and pass their packets on (never returns)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._input is None:
                while not self._inputs:
                    self._input_ready.clear()
                    await self._input_ready.wait()
                self._input, self._partial = self._inputs.popleft(), b""
            data = await _read(loop, self._input)
            if data:
                self._take(data)
            else:  # the run's ffmpeg ended (and the agent closed its copy of the write end)
                last, self._partial = self._partial, b""
                if len(last) == TS_PACKET_BYTES and last[0] == TS_SYNC:  # its last packet, whole
                    self._offer(last)
                _close(self._input)
                self._input = None

    def status(self) -> dict[str, Any]:
        return {
            "source": self.source_id,
            "composite_attached": self._output is not None,
            "bytes_relayed": self.bytes_relayed,
            "buffered_bytes": self._buffered,
            "packets_dropped": self.packets_dropped,
            "drops": self.drops,
            "dropping": self._drop_from_ns is not None,
            "packets_without_composite": self.packets_without_composite,
            "bytes_out_of_sync": self.bytes_out_of_sync,
        }

    # -- packets -------------------------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        packets = self._packets(self._partial + data)
        if packets:
            self._offer(packets)

    def _offer(self, packets: bytes) -> None:
        """Whole packets for the composite: buffered and written; the oldest buffered dropped (see the
        module docstring)."""
        count = len(packets) // TS_PACKET_BYTES
        if self._output is None:
            self.packets_without_composite += count
            return
        now = time.time_ns()
        self._chunks.append((now, packets))
        self._buffered += len(packets)
        self._trim(now)
        if self._drop_from_ns is not None and now - self._drop_last_ns >= DROP_SETTLE_S * 1e9:
            self.end_drop()  # packets have gone through for DROP_SETTLE_S: that loss is over
        self._flush()

    def _trim(self, now: int) -> None:
        """Drop the oldest whole reads waiting (never the rest of a packet begun) while the oldest came
        more than the backlog ago or the bytes waiting exceed the bound."""
        while True:
            oldest = 1 if self._head_begun else 0
            if len(self._chunks) <= oldest + 1:  # the newest read is always kept
                return
            came, packets = self._chunks[oldest]
            # While the composite starts (it probes its inputs one after the other) its first pictures
            # wait, bounded by bytes only: the clock it burns in is behind for a moment at its start.
            starting = now - self._attached_ns < COMPOSITE_START_S * 1e9
            if (starting or now - came <= self.backlog_ns) and self._buffered <= self.buffer_bytes:
                return
            del self._chunks[oldest]
            self._buffered -= len(packets)
            self._dropped(came, len(packets) // TS_PACKET_BYTES, now)

    def _dropped(self, came: int, count: int, now: int) -> None:
        split_ns = DROP_SPLIT_SETTLES * DROP_SETTLE_S * 1e9
        reading = now - self._written_ns < DROP_SETTLE_S * 1e9
        if self._drop_from_ns is not None and reading and came - self._drop_from_ns >= split_ns:
            # A composite that reads but stays behind never lets a drop settle: its loss is reported in
            # pieces (this one ends here, the next begins). One that reads nothing (stopped) has its loss
            # reported as one once it reads again, or when its run ends (liveness bounds that).
            self.end_drop()
        if self._drop_from_ns is None:
            self._drop_from_ns, self._drop_packets = came, 0
            self.drops += 1
            log.warning("feed of %s: the composite does not keep up; dropping its oldest packets",
                        self.source_id)
        self._drop_to_ns, self._drop_last_ns = max(self._drop_to_ns, came), now
        self._drop_packets += count
        self.packets_dropped += count

    def _packets(self, data: bytes) -> bytes:
        """The TS packets at the front of `data` that are whole and in step: each begins with the sync
        byte and so does the next one (the last is held until the next read shows its successor). The
        rest is kept for the next read. Bytes out of step (not the station's ffmpeg's TS: damaged or
        hostile) are skipped, with the packet before them, up to the next place two packets in a row
        begin; counted, never passed on."""
        out: list[bytes] = []
        at = 0
        while (count := (len(data) - at) // TS_PACKET_BYTES) > 0:
            starts = data[at:at + count * TS_PACKET_BYTES + 1:TS_PACKET_BYTES]  # with the next one's, if read
            bad = next((i for i, byte in enumerate(starts) if byte != TS_SYNC), None)
            if bad is None:
                confirmed = count if len(starts) > count else count - 1
                out.append(data[at:at + confirmed * TS_PACKET_BYTES])
                at += confirmed * TS_PACKET_BYTES
                break
            good = max(0, bad - 1)  # the packet before a bad start is not trusted either
            out.append(data[at:at + good * TS_PACKET_BYTES])
            at += good * TS_PACKET_BYTES
            resync = _resync(data, at + 1)
            skipped_to = len(data) if resync is None else resync
            self.bytes_out_of_sync += skipped_to - at
            at = skipped_to
        self._partial = data[at:]
        return b"".join(out)

    def _flush(self) -> None:
        """Write what waits to the composite's pipe, as far as it takes it now (never blocks)."""
        output = self._output
        while self._chunks and output is not None:
            came, head = self._chunks[0]
            try:
                written = os.write(output, head)
            except BlockingIOError:
                if not self._writing:
                    asyncio.get_running_loop().add_writer(output, self._flush)
                    self._writing = True
                return
            except OSError as exc:  # the composite's ffmpeg is gone (EPIPE): its next run gets a new pipe
                log.info("feed of %s: the composite's pipe closed (%s)", self.source_id, exc.strerror or exc)
                self._detach_output()
                return
            self.bytes_relayed += written
            self._buffered -= written
            if written > 0:
                self._written_ns = time.time_ns()
            if written < len(head):
                self._chunks[0] = (came, head[written:])  # the rest of a packet begun goes first, always
                self._head_begun = True
            else:
                self._chunks.popleft()
                self._head_begun = False
        if self._writing and output is not None:
            asyncio.get_running_loop().remove_writer(output)
            self._writing = False

    def end_drop(self) -> None:
        """Report the drop going on (or settling), if any, now: the composite's run ended (its own gap
        follows, and must not take the drop in: review 28). Packets dropped after it are a new drop."""
        if self._drop_from_ns is None:
            return
        drop = FeedDrop(self.source_id, self._drop_from_ns, max(self._drop_to_ns, self._drop_from_ns),
                        self._drop_packets)
        self._drop_from_ns, self._drop_to_ns, self._drop_packets = None, 0, 0
        log.warning("feed of %s: %d packets dropped (%.1f s): the composite lost picture", self.source_id,
                    drop.packets, (drop.to_ns - drop.from_ns) / 1e9)
        try:
            self.on_drop(drop)
        except Exception:  # the record of a drop must not end the relay
            log.exception("feed of %s: reporting a drop failed", self.source_id)

    def _detach_output(self) -> None:
        self.end_drop()
        output, self._output = self._output, None
        if output is not None and self._writing:
            with contextlib.suppress(RuntimeError):  # no running loop (closed at the end)
                asyncio.get_running_loop().remove_writer(output)
        self._writing = False
        _close(output)
        self._chunks.clear()
        self._head_begun = False
        self._buffered = 0


def _resync(data: bytes, start: int) -> int | None:
    """The first offset from `start` where a TS packet begins and, if the data goes on, the next one too."""
    at = data.find(bytes([TS_SYNC]), start)
    while at >= 0:
        following = at + TS_PACKET_BYTES
        if following >= len(data) or data[following] == TS_SYNC:
            return at
        at = data.find(bytes([TS_SYNC]), at + 1)
    return None


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _read(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """The next bytes of a non-blocking pipe (b"" at its end), waiting until it is readable."""
    while True:
        try:
            return os.read(fd, READ_BYTES)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
