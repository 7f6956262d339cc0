"""What a source of evidence gives the ingest pipeline: the `Source` protocol and the items it offers.

A source (USB recorder volumes today; GB/T 28181 downloads and room segments next) knows where bytes
come from and what they are; the pipeline (:mod:`edge.ingest.pipeline`) does everything else the same
way for all of them: temp file and one-pass hash, verification, media facts, sealing, publishing,
ledger and item transitions, enqueueing for upload. A source offers items, each with:

* a stable identity at the source (:class:`OriginalKey`), so a restart finds the same item again;
* an opener for its bytes (:class:`ItemReader`), read once, in order, hashed as they are stored; a
  reader says how it made sure those bytes came from the device and not from pages an earlier read
  left in the page cache (:attr:`ItemReader.cache_bypass`);
* optionally a way to read the original again: a file on a recorder or on the station's disk can be
  re-read, bytes that arrived from an RTP stream cannot. The pipeline uses it only when configured to
  compare a second read of every original (``[offload] reread_original``); the USB source uses it
  before erasing any original (unless such a second read, proven by its reader's `cache_bypass`, was
  made in the same docking), and defers the erasure when that read is not proven;
* the facts the manifest's ``original``, ``source``, ``time`` and ``case`` blocks carry
  (:class:`Origin`); a source that knows the case up front (a room session) fills it in, others give
  their configured defaults.

Readers are used from a worker thread; they must not touch the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.durable.files import drop_page_cache
from edge.durable.uncached import ReadMethod, memory_file_system, resident_pages
from edge.ingest.copy import SourceChangedError, read_error


class ItemReader(Protocol):
    """The bytes of one original, read once from start to end (in a worker thread)."""

    def readinto(self, buffer: memoryview) -> int:
        """Fill the start of `buffer`; return the byte count, 0 at the end. Raises SourceReadError."""
        ...

    def check_unchanged(self) -> None:
        """After the last byte: raise SourceChangedError if the original changed while it was read."""
        ...

    @property
    def cache_bypass(self) -> ReadMethod | None:
        """How this reader made sure that its bytes come from the device, not from pages of the
        original an earlier read left in the page cache; None when it cannot say (some pages stayed
        cached, or the source is not a file)."""
        ...

    def close(self) -> None: ...


ReaderOpener = Callable[[], ItemReader]


@dataclass(frozen=True)
class OriginalKey:
    """Identity of an original at its source, stable across restarts.

    `source` is the source kind; `device` the recorder, platform device or room; `original` the
    source's name for the original on that device (a path, a recording id); `version` what tells two
    originals with the same name apart (for a file: its size and modification time).
    """

    source: str
    device: str
    original: str
    version: str = ""


@dataclass(frozen=True)
class Origin:
    """Where an item came from, as its manifest and the item index record it.

    `original`, `source` and `case` become the manifest blocks of those names as given; `time` becomes
    the manifest's `time` block with the station's `acquired_utc` added by the pipeline. `facts` are
    added to the item's `acquired` ledger entry (for example the session and bay).
    """

    device: str
    officer_no: str
    original: Mapping[str, Any]
    source: Mapping[str, Any]
    time: Mapping[str, Any]
    case: Mapping[str, Any]
    facts: Mapping[str, Any] = field(default_factory=dict)
    # Who held the device when the original was recorded, by the station's records (edge.equipment), beside
    # what the device claimed; the manifest's `assignment` block. None: the source keeps no such record.
    assignment: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class OfferedItem:
    """One original a source offers to the pipeline."""

    key: OriginalKey
    name: str  # the original's own name (gives the stored extension); never used as a path
    display: str  # printable, for log lines, errors and ledger entries
    size: int | None  # exact size when the source knows it up front; None for a stream
    origin: Origin
    open: ReaderOpener
    # A second, independent read of the original for verification; None when the original cannot be
    # read again (a stream), in which case only the stored copy is re-read.
    reopen: ReaderOpener | None = None


class Source(Protocol):
    """A source of evidence, as the ingest pipeline sees it."""

    @property
    def kind(self) -> str:
        """`usb`, `gb28181`, `room`, `local`: the manifest's `source.kind`."""
        ...

    @property
    def device(self) -> str:
        """The device the items come from (named in error entries)."""
        ...

    def reachable(self) -> bool:
        """Whether the device can still be read (called in a worker thread after a read failure).

        False stops the run: its items stay where they are and resume when the device is back.
        """
        ...


class FileReader:
    """An `ItemReader` over an open regular file, checked against the size and mtime it was listed with.

    Takes ownership of `fd`. The first check happens here: a file whose size or mtime changed since it
    was listed is refused before a byte is read.

    With `drop_cache` the file's clean cached pages are dropped before the first read and mincore(2)
    then shows whether any stayed (mapped or locked by another process): when none did, every byte
    this reader returns is read from the device now (`cache_bypass` says so), which is what
    invariant 1 asks of the one pass that is hashed. Buffered reads, not O_DIRECT: the kernel's
    read-ahead is what keeps a USB device streaming.
    """

    def __init__(
        self, fd: int, *, size: int, mtime_ns: int, what: str, drop_cache: bool = False
    ) -> None:
        self.fd = fd
        self.size = size
        self.mtime_ns = mtime_ns
        self.what = what
        self._cache_bypass: ReadMethod | None = None
        try:
            self._check("changed since listing")
            if drop_cache:
                self._cache_bypass = _drop_and_check(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @property
    def cache_bypass(self) -> ReadMethod | None:
        return self._cache_bypass

    def _check(self, what_happened: str) -> None:
        info = os.fstat(self.fd)
        if info.st_size != self.size or info.st_mtime_ns != self.mtime_ns:
            raise SourceChangedError(
                f"{self.what}: {what_happened} (size {self.size} -> {info.st_size}, "
                f"mtime {self.mtime_ns} -> {info.st_mtime_ns})"
            )

    def readinto(self, buffer: memoryview) -> int:
        try:
            return os.readv(self.fd, [buffer])
        except OSError as exc:
            raise read_error(exc, self.what) from exc

    def check_unchanged(self) -> None:
        self._check("changed while being read")

    def close(self) -> None:
        os.close(self.fd)


def _drop_and_check(fd: int, size: int) -> ReadMethod | None:
    """Drop `fd`'s clean cached pages; how the reads that follow are known to reach the device, or
    None when some pages stayed cached or the check is not possible on this file system."""
    if memory_file_system(fd) is not None:
        return ReadMethod.MEMORY_FS  # its page cache is its storage: nothing to bypass
    drop_page_cache(fd)
    try:
        still = resident_pages(fd, size)
    except OSError:  # a file system that cannot map the file: its cache cannot be inspected
        return None
    return ReadMethod.DROPPED_AND_CHECKED if still == 0 else None
