"""The ingest pipeline: every source's items become sealed, verified, ledgered evidence the same way.

Per item the states are pending → copied → verified → sealed (or failed), each transition committed
together with its ledger entry (:mod:`edge.ingest.repository`), so a crash at any instant resumes
from the last committed state:

* pending: the source's bytes are copied to tmp/<item>.part while hashing (a stale .part from a crash
  is discarded first); `acquired` (saying how the read bypassed cached pages of the original, so that
  the hash is of bytes read from the device now), with a `duplicate` entry when the same bytes are
  already held;
* copied: media facts are read (:mod:`edge.ingest.facts`), the manifest is built and signed, and
  for ISO-BMFF files the sealed form is built in the .part (truncated back to the original size
  first, so a half-appended manifest box from a crash is dropped); then it is verified: the stored
  prefix re-read from disk (not the page cache) must give the acquisition hash and, only when
  `reread_original` is configured and the source can, a second read of the original must equal it
  byte for byte (that catches a device that returns different bytes on two reads, at the cost of
  reading every original twice); `verified`;
* verified: renamed into items/ (directory fsynced), the sidecar written; `sealed`; the upload queue
  is told.

What happens next to the original (USB: erased from the recorder per wipe policy, after reading it
from the recorder again: `IngestedItem.source_read_now` says whether this run already did, proven)
is the source's business. A second read of the original counts (`source_reread` on the ledger) only
when its reader proved it reached the device (`ItemReader.cache_bypass`). A sealed item whose stored
copy is later found damaged while the source still holds the original is rebuilt from it
(:meth:`IngestPipeline.reacquire`: `error` entry, stage `stored copy`, then `reacquired`). Copying
item N+1 overlaps verifying and sealing item N, so verification costs little wall time. Memory is
bounded: each item in flight holds a fixed number of read buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edge.config.station import OffloadSection, UplinkSection
from edge.custody.errors import CustodyError
from edge.custody.ledger import EntryType, station_time_now
from edge.custody.manifest import sign_manifest
from edge.custody.seal import append_evidence_box, inspect_evidence_box, sidecar_path, write_sidecar
from edge.durable.files import DirectorySync, free_bytes, make_dirs_durable, remove_stale_temporaries
from edge.durable.uncached import ReadMethod
from edge.ingest.commit import GroupCommit
from edge.ingest.copy import (
    AcquireError,
    CopyResult,
    ReRead,
    SourceReadError,
    StoreFullError,
    copy_and_hash,
    hash_reader,
    reread_and_compare,
)
from edge.ingest.facts import ISO_BMFF_EXTENSIONS, media_facts_and_seal
from edge.ingest.kept_space import (
    COPY_BOOKING,
    Booking,
    HandedOff,
    KeptFree,
    KeptSpace,
    SpaceKeptError,
    WorkAbandoned,
    said_bookings,
)
from edge.ingest.manifest import build_manifest
from edge.ingest.prefix_digests import PrefixDigests
from edge.ingest.repository import (
    REBUILD_FAILED,
    REBUILD_OPENED,
    Acquisition,
    AcquisitionState,
    IngestRepository,
    ItemRecord,
    forget_prefix_digests,
    open_rebuild,
    record_prefix_digests,
    release_held_upload,
)
from edge.ingest.source import ItemReader, OfferedItem, ReaderOpener, Source
from edge.ingest.store import StationStore, stored_extension
from edge.observe.sink import NULL_SINK, Duration, DurationKind, StatusSink

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FINISHING = 2


@dataclass(frozen=True)
class IngestSettings:
    chunk_bytes: int = 1 << 20
    verify_reread: bool = True  # re-read each stored copy from disk and match it with the acquisition hash
    # Also read each original a second time (where the source can) and compare it with the stored copy.
    reread_original: bool = False
    min_free_bytes: int = 1 << 30  # never fill the store's disk beyond this
    max_item_bytes: int = 256 << 30  # bound on an item whose size is not known up front (a stream)
    max_attempts: int = 3  # per item and run; a new run (docking) starts again
    # The verification re-read keeps the stored copy's SHA-256 at every multiple of this (the uplink's tus
    # chunk size, [uplink] chunk_mb) for the upload's sha256-prefix checksums (edge.ingest.prefix_digests);
    # None: none kept.
    prefix_step_bytes: int | None = UplinkSection.model_fields["chunk_mb"].default << 20

    @classmethod
    def from_config(cls, offload: OffloadSection, uplink: UplinkSection | None = None) -> IngestSettings:
        step = cls.prefix_step_bytes if uplink is None else uplink.chunk_mb << 20
        return cls(
            chunk_bytes=offload.chunk_bytes,
            verify_reread=offload.verify_reread,
            reread_original=offload.reread_original,
            min_free_bytes=offload.min_free_bytes,
            max_item_bytes=offload.max_file_bytes,
            prefix_step_bytes=step,
        )


class UploadQueue(Protocol):
    """The uplink, as the pipeline sees it: told of each sealed item at once, so uploading overlaps
    acquiring."""

    def item_sealed(self, item: str) -> None: ...


@dataclass
class IngestProgress:
    """Counts of one run, updated in place and passed to the progress callback."""

    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    verified: int = 0
    current: str = ""
    errors: list[str] = field(default_factory=list)
    # What the run does now, for status displays: "copying" while originals are still being copied,
    # "verifying" once only re-reads and seals remain (the source's own stages may follow).
    stage: str = ""


class IngestOutcome(StrEnum):
    DONE = "done"  # every item reached sealed or failed; failures are in `progress.errors`
    SOURCE_GONE = "source-gone"  # the device became unreachable; the rest resumes next time
    STORE_FULL = "store-full"  # the station disk is full; nothing more was taken from the source


@dataclass
class IngestedItem:
    """One offered item after a run."""

    offered: OfferedItem
    acquisition: Acquisition
    # The original was read AGAIN from its device during this run, by a read proven to reach the device
    # (not the copy's own read), and gave the acquisition hash, which the stored copy, re-read from disk,
    # gave too: then erasing it needs no further read of the original.
    source_read_now: bool = False
    # How this run's copy made sure it read the device, not cached pages (None: it could not prove it).
    copied_from_device: ReadMethod | None = None
    copied_bytes: int = 0
    # Copied and fsynced, `acquired` not yet committed: the copy loop moves on to the next item and
    # the item's finishing task records it (an interruption here only costs copying it again).
    unrecorded: tuple[CopyResult, str] | None = None

    @property
    def item(self) -> str:
        return self.acquisition.item

    @property
    def state(self) -> str:
        return self.acquisition.state


@dataclass
class IngestRun:
    outcome: IngestOutcome
    items: list[IngestedItem]
    sealed: list[str]  # items sealed in this run or before, in the order they were done
    # STORE_FULL because the copy would have taken the space writers that cannot wait hold (the rooms
    # recording: edge.ingest.kept_space): what they hold. Empty when the store itself was full.
    kept_for: tuple[KeptFree, ...] = ()


class SourceGoneError(Exception):
    """The source's device is no longer reachable."""


class _VerificationMismatch(AcquireError):
    pass


class IngestPipeline:
    """Turns what sources offer into sealed evidence in one station store; shared by all sources."""

    def __init__(
        self,
        store: StationStore,
        settings: IngestSettings,
        *,
        executor: Executor | None = None,
        uploads: UploadQueue | None = None,
        status: StatusSink = NULL_SINK,
    ) -> None:
        self.store = store
        self.status = status  # copy and verify times, for the station's metrics
        self.repository = IngestRepository(store)
        self.settings = settings
        self.executor = executor
        self.uploads = uploads
        # Shared by every run of this store: transitions of all bays batch into one transaction,
        # and renames into one day directory share its fsync.
        self.commits = GroupCommit(store)
        self.directories = DirectorySync()
        # What the rooms recording hold beyond the store's reserve (they register while they record): a copy
        # that can wait keeps it free too (edge.ingest.kept_space).
        self.kept_space = KeptSpace()

    async def commit(self, work: Callable[[], T]) -> T:
        """Run repository transitions in the next group transaction; resume once it committed."""
        return await self.commits.run(work)

    async def stored_copy_damage(self, item: str, what: str) -> str | None:
        """Why the stored copy of sealed `item` no longer holds its recorded bytes (its first `size`
        bytes, read from the disk, not the page cache, must give the acquisition hash), or None. A
        purged item (its content at the central) has no local copy to check."""
        record = self.repository.item(item)
        if record is None or record.path is None or self.repository.purged(item):
            return None
        damage: str | None = await _in_thread(self.executor, self._damage, record, what)
        return damage

    def _damage(self, record: ItemRecord, what: str) -> str | None:
        """In a worker thread: the read behind `stored_copy_damage`."""
        assert record.path is not None
        try:
            found = reread_and_compare(
                self.store.layout.root / record.path,
                None,
                size=record.size,
                chunk_bytes=self.settings.chunk_bytes,
                what=what,
            )
        except OSError as exc:
            return f"the stored copy cannot be read: {exc.strerror or exc}"
        if (found.stored_sha256, found.stored_size) != (record.sha256, record.size):
            return (
                f"the stored copy read from disk gives {found.stored_sha256} ({found.stored_size} bytes), "
                f"its recorded hash is {record.sha256} ({record.size} bytes)"
            )
        return None

    async def reacquire(self, source: Source, work: IngestedItem, damage: str, *, found_by: str) -> bool:
        """The stored copy of a sealed item is damaged (`damage`, found by `found_by`) while its source
        may still hold the original: put the damage on the ledger (`error`, stage `stored copy`), then
        copy the original again, hashing it, and only if it gives the recorded hash rebuild the same
        sealed artefact (same signed manifest, in the same evidence box or sidecar), re-read it from
        disk (and the original again), replace the damaged copy and record `reacquired`. Returns
        whether the item is whole again; a failure is an `error` entry and leaves everything as it was.
        """
        display = work.offered.display
        where = {"device_serial": source.device, "original": display}
        detected = {
            **where,
            "stage": REBUILD_OPENED,
            "reason": f"{display}: item {work.item}: {damage}",
            "found_by": found_by,
            "action": f"re-acquire from the {source.kind} device",
            # Named before it exists: a crash leaves it accounted for (discard_interrupted_rebuilds).
            "temp_copy": self._temp_copy_name(work.item),
        }
        log.error("%s %s: %s", source.kind, source.device, detected["reason"])
        await self.commit(lambda: self.repository.entry(EntryType.ERROR, work.item, detected))
        record = self.repository.item(work.item)
        embedded = self.repository.sealed_in_file(work.item)
        try:
            rebuilt = await _in_thread(self.executor, self._rebuild, work, record, embedded)
        except (AcquireError, CustodyError, OSError) as exc:
            rebuilt = f"{display}: cannot re-acquire item {work.item}: {exc}"
        if isinstance(rebuilt, str):
            log.error("%s %s: %s", source.kind, source.device, rebuilt)
            data = {**where, "stage": REBUILD_FAILED, "reason": rebuilt}
            await self.commit(lambda: self.repository.entry(EntryType.ERROR, work.item, data))
            return False
        done, digests = rebuilt
        reacquired = {**where, **done, "found_by": found_by}

        def record_reacquired() -> None:
            self.repository.entry(EntryType.REACQUIRED, work.item, reacquired)
            # A copy the uplink found changed and held is replaced: it goes again (held state in state.db).
            release_held_upload(self.repository.conn, work.item)
            # The new copy's digests, as its re-read found them, or none: never the damaged copy's.
            if digests is not None:
                record_prefix_digests(self.repository.conn, work.item, digests)
            else:
                forget_prefix_digests(self.repository.conn, work.item)

        await self.commit(record_reacquired)
        work.source_read_now = done["source_reread"]
        if self.uploads is not None:
            self.uploads.item_sealed(work.item)  # held back while its copy was damaged: send it now
        return True

    def _temp_copy_name(self, item: str) -> str:
        layout = self.store.layout
        return str(layout.tmp_copy(item).relative_to(layout.root))

    def discard_interrupted_rebuilds(self) -> list[str]:
        """At start: remove the temp copies of re-acquisitions the station was stopped in the middle of
        (kill -9, power cut), each closed on the ledger (`error`, stage `reacquire`); the stored copy
        stays damaged and is re-acquired at the item's next docking. Only a temp copy that the ledger
        says this station was writing is removed: anything else in tmp/ stays for `edge verify` to
        report. Returns the items."""
        layout = self.store.layout
        discarded: list[str] = []
        if not layout.tmp.is_dir():
            return discarded
        for part in sorted(layout.tmp.glob("*.part")):
            item = part.name.removesuffix(".part")
            name = self._temp_copy_name(item)
            if part.is_symlink() or not part.is_file() or part != layout.tmp_copy(item):
                continue
            started = open_rebuild(self.store.conn, item, name)
            if started is None:
                continue
            # Removed before it is recorded: a crash in between leaves no file and an open entry,
            # which the next re-acquisition of the item supersedes.
            part.unlink(missing_ok=True)
            self.directories.sync(layout.tmp)
            reason = (f"interrupted: the station stopped during the re-acquisition opened at ledger seq "
                      f"{started}; its temp copy {name} was discarded; the stored copy is still damaged "
                      "and is re-acquired at the item's next docking")
            log.warning("item %s: %s", item, reason)
            self.store.record(EntryType.ERROR, item, {"stage": REBUILD_FAILED, "reason": reason,
                                                      "temp_copy": name, "opened_seq": started})
            discarded.append(item)
        return discarded

    def _rebuild(
        self, work: IngestedItem, record: ItemRecord | None, embedded: bool
    ) -> tuple[dict[str, Any], PrefixDigests | None] | str:
        """In a worker thread: the sealed artefact rebuilt from the original and put in place of the
        damaged one; what was done (and the new copy's prefix digests), or why not."""
        display = work.offered.display
        if record is None or record.path is None or record.manifest is None:
            return f"{display}: item {work.item} has no sealed record to rebuild"
        manifest, size = record.manifest, record.size
        part = self.store.layout.tmp_copy(work.item)
        part.unlink(missing_ok=True)
        try:
            reader = work.offered.open()
            try:
                copied = copy_and_hash(
                    reader, part, expected_size=size, max_bytes=size, chunk_bytes=self.settings.chunk_bytes,
                    what=f"{work.offered.origin.device}:{display}",
                )
            finally:
                reader.close()
            if (copied.sha256, copied.size) != (record.sha256, size):
                return (
                    f"{display}: the source's file gives {copied.sha256} ({copied.size} bytes), not the "
                    f"recorded {record.sha256}: the source no longer holds item {work.item}'s original"
                )
            if embedded:
                append_evidence_box(part, manifest)
            chunk = self.settings.chunk_bytes
            reread = reread_stored_and_source(part, work.offered.reopen, size, chunk, display,
                                              prefix_step_bytes=self.settings.prefix_step_bytes)
            if (reread.stored_sha256, reread.stored_size) != (record.sha256, size):
                return f"{display}: the new copy re-read from disk gives {reread.stored_sha256}: not replaced"
            if reread.source_differs_at is not None:
                return f"{display}: inconsistent reads of the source at byte {reread.source_differs_at}"
            final = self.store.layout.root / record.path
            os.replace(part, final)
            write_sidecar(final, manifest, sync_dir=False)
            self.directories.sync(final.parent)
        finally:
            part.unlink(missing_ok=True)
        return {
            "sha256": record.sha256,
            "size": size,
            "path": record.path,
            "embedded": embedded,
            "stored_reread": True,
            "stored_read": reread.stored_read,
            "source_reread": reread.source_read is not None,  # proven to reach the device
            "source_read": None if reread.source_read is None else str(reread.source_read),
            "replaced_damaged_copy": True,
        }, reread.prefix_digests

    async def ingest(
        self,
        source: Source,
        offered: Sequence[OfferedItem],
        *,
        progress: IngestProgress | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        gone: Collection[str] = (),
        prove_by_hash: bool = False,
        can_wait: bool = True,
    ) -> IngestRun:
        """Acquire, verify, seal and publish every offered item not already sealed; resume any that
        an earlier run left half way.

        `gone`: the source's states in which an original is known to be no longer at the source (USB:
        erased), so that one offered under the same key is a new original
        (:meth:`IngestRepository.admit`). `prove_by_hash`: a key is not proof (a file's name, size and
        mtime can be reused), so an original offered again whose item is already sealed and not gone
        is read again (when the source can) and must hash to that item; if it does, the match is on
        the ledger (`verified`) and counts as this run's re-read of the original; if not, the earlier
        item is `superseded` (an `error` entry says why) and the original is acquired as a new item.
        `can_wait`: the originals stay at the source and can be copied later (a recorder, a device's
        recording), so each copy keeps free, beyond the store's reserve, what `kept_space` holds now (the
        rooms recording) or the run ends STORE_FULL with `kept_for` saying for whom; False for the station's
        own recordings (room segments), which that space is held for.
        """
        keys = [o.key for o in offered]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{source.kind} {source.device}: an original was offered twice in one run")
        await _in_thread(self.executor, self.store.hold_reserve)  # given up by an earlier disk-full run
        gone = frozenset({*gone, AcquisitionState.SUPERSEDED})
        run = _Run(self, source, progress or IngestProgress(), on_progress, gone=gone, prove=prove_by_hash,
                   can_wait=can_wait)
        admitted = self.repository.admit(keys, gone=gone)
        work = [IngestedItem(o, a) for o, a in zip(offered, admitted, strict=True)]
        return await run.acquire_all(work)


async def _in_thread(executor: Executor | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))


class _Run:
    """One `ingest` call: one source's offered items, its progress and its errors."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        source: Source,
        progress: IngestProgress,
        on_progress: Callable[[IngestProgress], None] | None,
        *,
        gone: frozenset[str] = frozenset(),
        prove: bool = False,
        can_wait: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.gone = gone
        self.prove = prove
        self.can_wait = can_wait
        self.kept_for: tuple[KeptFree, ...] = ()
        self.repository = pipeline.repository
        self.layout = pipeline.store.layout
        self.settings = pipeline.settings
        self.source = source
        self.progress = progress
        self.on_progress = on_progress
        self.sealed: list[str] = []

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await _in_thread(self.pipeline.executor, fn, *args, **kwargs)

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _where(self, work: IngestedItem | None) -> dict[str, Any]:
        data: dict[str, Any] = {"device_serial": self.source.device}
        if work is not None:
            data["original"] = work.offered.display
        return data

    async def error(self, work: IngestedItem | None, stage: str, reason: str, **more: Any) -> None:
        log.warning("%s %s: %s: %s", self.source.kind, self.source.device, stage, reason)
        self.progress.errors.append(reason)
        data = {**self._where(work), "stage": stage, "reason": reason, **more}
        item = None if work is None else work.item
        await self.pipeline.commit(lambda: self.repository.entry(EntryType.ERROR, item, data))
        self._report()

    # -- the run ----------------------------------------------------------------------------------

    async def acquire_all(self, work: list[IngestedItem]) -> IngestRun:
        self.progress.files_total = len(work)
        self.progress.bytes_total = sum(w.offered.size or 0 for w in work)
        self.progress.stage = "copying"
        self._report()
        # Verifying and sealing (media facts, two re-reads) can take longer than copying a file from
        # the page cache; a few items finishing at once keep the copy loop busy. Memory stays
        # bounded: each finishing item holds one read buffer.
        finishing: set[asyncio.Task[None]] = set()
        outcome = IngestOutcome.DONE
        try:
            # Originals not yet sealed go first: a re-docked recorder's new recordings do not wait
            # behind the hashing that proves its old ones (stable order otherwise).
            ordered = sorted(work, key=lambda w: w.state not in AcquisitionState.IN_PROGRESS)
            for w in ordered:
                if self.prove and w.state not in AcquisitionState.IN_PROGRESS and w.state not in self.gone:
                    await self._prove_same(w)  # may make it a new item to acquire
                if w.state not in AcquisitionState.IN_PROGRESS:
                    self._count_done(w)
                    continue
                self.progress.current = w.offered.display
                self._report()
                if w.state in (AcquisitionState.COPIED, AcquisitionState.VERIFIED):
                    w.copied_bytes = w.offered.size or 0  # resumed after a crash: copied before
                    self.progress.bytes_done += w.copied_bytes
                if w.state == AcquisitionState.PENDING:
                    await self._copy_with_retries(w, record=False)
                while len(finishing) >= MAX_FINISHING:
                    done, finishing = await asyncio.wait(finishing, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a fatal error (source gone, disk full) stops the run
                copied = w.state in (AcquisitionState.COPIED, AcquisitionState.VERIFIED)
                if copied or w.unrecorded is not None:
                    finishing.add(asyncio.create_task(self._finish_with_retries(w)))
            self.progress.stage = "verifying"
            self._report()
            while finishing:
                done, finishing = await asyncio.wait(finishing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        except SourceGoneError as exc:
            await self.error(None, "device", str(exc))
            outcome = IngestOutcome.SOURCE_GONE
        except SpaceKeptError as exc:
            # Not full: the space is held by writers that cannot wait. The store keeps its ledger reserve.
            self.kept_for = exc.kept
            await self.error(None, "store", str(exc), kept_for=[k.to_json() for k in exc.kept])
            outcome = IngestOutcome.STORE_FULL
        except StoreFullError as exc:
            self.pipeline.store.release_reserve()  # room for the ledger to say so
            await self.error(None, "store", str(exc))
            outcome = IngestOutcome.STORE_FULL
        finally:
            # Let items in flight reach a committed state; their own errors are already recorded.
            for task in finishing:
                with contextlib.suppress(SourceGoneError, StoreFullError):
                    await task
        self.progress.current = ""
        self._report()
        return IngestRun(outcome, work, self.sealed, self.kept_for)

    def _count_done(self, w: IngestedItem) -> None:
        self.sealed.append(w.item)
        self.progress.files_done += 1
        self.progress.verified += 1
        self.progress.bytes_done += w.offered.size or 0

    async def raise_if_gone(self, exc: Exception) -> None:
        if not await self._thread(self.source.reachable):
            raise SourceGoneError(f"{self.source.kind} device {self.source.device} is gone ({exc})") from exc

    # -- identity -------------------------------------------------------------------------------

    async def _prove_same(self, w: IngestedItem) -> None:
        """An original offered again under the key of a sealed item: the same original only if its
        bytes hash to that item (hashing is the only truth; a name, size and mtime can be reused)."""
        reopen = w.offered.reopen
        record = self.repository.item(w.item)
        if reopen is None or record is None:
            return
        display = w.offered.display
        try:
            again, proof = await self._thread(hash_original, reopen, self.settings.chunk_bytes)
        except (SourceReadError, OSError) as exc:
            await self.raise_if_gone(exc)
            reason = f"{display}: cannot read it again to prove it is still item {w.item}: {exc}"
            await self.error(w, "identity", reason)
            return  # kept as it is: nothing is erased that does not hash to its item (wipe check)
        except AcquireError as exc:  # changed since listing
            await self.error(w, "identity", str(exc))
            return
        if (again.sha256, again.size) == (record.sha256, record.size):
            proven = {
                "sha256": record.sha256,
                "size": record.size,
                "stored_reread": False,
                # A read only counts as one from the device when it was proven not to come from pages
                # left in the page cache (then the check before erasing need not read it again).
                "source_reread": proof is not None,
                "source_read": None if proof is None else str(proof),
                "purpose": "offered again: the original is still the one this item was acquired from",
            }
            await self.pipeline.commit(lambda: self.repository.entry(EntryType.VERIFIED, w.item, proven))
            w.source_read_now = proof is not None
            # The source still holds the original: whatever damaged the stored copy since (found here,
            # or earlier by the uplink or `edge verify`) is repaired from it now.
            damage = await self.pipeline.stored_copy_damage(w.item, f"item {w.item}")
            if damage is not None:
                await self.pipeline.reacquire(self.source, w, damage, found_by="docking check")
            return
        data = {
            **self._where(w),
            "stage": "identity",
            "reason": (
                f"{display}: offered again under the same key, but its bytes hash to {again.sha256} "
                f"({again.size} bytes), not to item {w.item} ({record.sha256}): another original, "
                "acquired as a new item; this item's original is no longer at the source"
            ),
            "found_sha256": again.sha256,
        }
        log.warning("%s %s: identity: %s", self.source.kind, self.source.device, data["reason"])
        offered_key = w.offered.key
        w.acquisition = await self.pipeline.commit(
            lambda: self.repository.superseded(w.acquisition, offered_key, data, self.gone)
        )

    # -- copy -------------------------------------------------------------------------------------

    async def _copy_with_retries(self, w: IngestedItem, *, record: bool = True) -> None:
        """Copy until it worked (COPIED, or `unrecorded` without `record`) or failed for good."""
        display = w.offered.display
        while w.state == AcquisitionState.PENDING and w.unrecorded is None:
            if w.acquisition.attempts >= self.settings.max_attempts:
                await self._fail(w, "copy", f"{display}: gave up after {self.settings.max_attempts} attempts")
                return
            w.acquisition.attempts += 1
            try:
                await self._copy(w, record=record)
            except StoreFullError:
                raise  # the whole run stops; the source stays untouched
            except SourceReadError as exc:
                await self.raise_if_gone(exc)
                await self.error(w, "copy", str(exc))
            except AcquireError as exc:  # changed at the source, or the station failed to write
                await self.error(w, "copy", str(exc))
            except FileNotFoundError as exc:
                # A device that is gone can make every file look vanished (an unmounted volume leaves
                # its empty mount directory behind): that ends the run, it fails no file.
                await self.raise_if_gone(exc)
                gone = f"{display}: vanished from the {self.source.kind} device before copying"
                await self._fail(w, "copy", gone)
                return
            except OSError as exc:
                await self.raise_if_gone(exc)
                await self.error(w, "copy", f"{display}: cannot open: {exc.strerror or exc}")

    async def _fail(self, w: IngestedItem, stage: str, reason: str) -> None:
        data = {**self._where(w), "stage": stage, "reason": reason}
        attempts = w.acquisition.attempts
        await self.pipeline.commit(lambda: self.repository.failed(w.item, attempts, data))
        w.acquisition.state = AcquisitionState.FAILED
        self.progress.errors.append(reason)
        self._report()

    async def _copy(self, w: IngestedItem, *, record: bool) -> None:
        part = self.layout.tmp_copy(w.item)
        part.unlink(missing_ok=True)  # a stale copy from an interrupted attempt is never trusted
        kept_space = self.pipeline.kept_space
        needed = w.offered.size or 0
        what = f"{self.source.device}:{w.offered.display}"
        acquired_utc = station_time_now()
        started = time.monotonic()
        # A copy that can wait books its size before its check (edge.ingest.kept_space): copies at once, an
        # export, a room's start each count the others' bytes still to write. The booking is this
        # coroutine's, not the worker's: given up when both have ended, also when the docking is cancelled
        # while the work still waits in the executor's queue (review rev11f).
        with kept_space.handed_off(COPY_BOOKING, what, needed if self.can_wait else None) as shared:
            copied, from_device = await self._copy_in_worker(w, shared, part, what)
        w.copied_from_device = from_device
        self.pipeline.status.publish(Duration(DurationKind.COPY, time.monotonic() - started, copied.size))
        w.copied_bytes = copied.size
        w.unrecorded = (copied, acquired_utc)
        if record:
            await self._record_acquired(w)

    async def _copy_in_worker(self, w: IngestedItem, shared: HandedOff, part: Path,
                              what: str) -> tuple[CopyResult, ReadMethod | None]:
        """Check the space and copy `w` to `part` in a worker thread, under `shared`'s booking."""
        reserve = self.settings.min_free_bytes
        kept_space = self.pipeline.kept_space
        booking = shared.booking
        needed = w.offered.size or 0
        device = f"{self.source.kind} device"
        counted = 0

        def recheck(booking: Booking) -> None:
            """While it writes: a room that started since (or whose recording ate into what it holds)
            ends the copy as the store being full, the original left on its device (review rev11e)."""
            kept = [k for k in kept_space.now() if k.bytes]
            if not kept:
                return
            # As at its start: the bookings before its own and its own bytes still to write; a later
            # writer's booking (which counted this one at its check, or was refused) never ends it.
            booked = kept_space.booked_up_to(booking)
            available = free_bytes(self.layout.tmp)
            kept_bytes = sum(k.bytes for k in kept)
            if available - KeptSpace.total(booked) < reserve + kept_bytes:
                raise SpaceKeptError(
                    f"{w.offered.display}: the station disk has {available} free with "
                    f"{said_bookings(booked)}; it keeps {reserve} in reserve and {kept_bytes} for "
                    f"{'; '.join(k.what for k in kept)}, who started recording while it copied: the copy "
                    f"ends, the original stays on the {device} and is copied later, once they stop",
                    kept,
                )

        def progress(count: int) -> None:
            nonlocal counted
            if shared.abandoned:  # the docking was cancelled: the rest is not written
                raise WorkAbandoned(f"{what}: the copy was cancelled")
            counted += count
            self.progress.bytes_done += count
            if booking is not None:
                kept_space.wrote(booking, count)
                recheck(booking)

        def work() -> tuple[CopyResult, ReadMethod | None]:
            with shared.in_worker():
                try:
                    return check_and_copy()
                finally:
                    if shared.abandoned:  # the coroutine is gone: nobody else discards what it wrote
                        part.unlink(missing_ok=True)

        def check_and_copy() -> tuple[CopyResult, ReadMethod | None]:
            # Booked first, then the others' bookings and what the rooms hold, then the free space: see
            # edge.ingest.kept_space. From this worker thread: the holders come and go on the loop.
            others = [] if booking is None else kept_space.booked_before(booking)
            kept = [k for k in kept_space.now() if k.bytes] if self.can_wait else []
            kept_bytes = sum(k.bytes for k in kept)
            available = free_bytes(self.layout.tmp)
            if available - needed < reserve:
                raise StoreFullError(
                    f"{w.offered.display}: needs {needed} bytes, station disk has {available} free "
                    f"(keeping {reserve} in reserve)"
                )
            if available - KeptSpace.total(others) - needed < reserve + kept_bytes:
                holders = "; ".join(k.what for k in kept)
                held = f" and {kept_bytes} for {holders}" if kept else ""
                copying = f", of which {said_bookings(others)} will take" if others else ""
                waits = "once they stop" if kept else "once the copies before it are done"
                raise SpaceKeptError(
                    f"{w.offered.display}: needs {needed} bytes, station disk has {available} free"
                    f"{copying}, keeping {reserve} in reserve{held}: it stays on the {device} and is "
                    f"copied later, {waits}",
                    kept,
                )
            if booking is not None:  # passed: a download's receiver keeps its bytes free from now on
                kept_space.admit(booking)
            reader = w.offered.open()
            try:
                copied = copy_and_hash(
                    reader,
                    part,
                    expected_size=w.offered.size,
                    max_bytes=self.settings.max_item_bytes,
                    chunk_bytes=self.settings.chunk_bytes,
                    what=what,
                    progress=progress,
                )
                return copied, reader.cache_bypass
            finally:
                reader.close()

        try:
            result: tuple[CopyResult, ReadMethod | None] = await self._thread(work)
        except BaseException:
            self.progress.bytes_done -= counted
            part.unlink(missing_ok=True)
            raise
        return result

    async def _record_acquired(self, w: IngestedItem) -> None:
        """pending → copied, once the copy is durable (copy_and_hash fsynced it)."""
        assert w.unrecorded is not None
        copied, acquired_utc = w.unrecorded
        origin = w.offered.origin
        facts = {"device_serial": origin.device, **origin.facts, "original": w.offered.display}
        # Invariant 1: how the hashed read reached the device rather than cached pages of the original
        # (null: not proven, and then the original is read again before anything erases it).
        facts["source_read"] = None if w.copied_from_device is None else str(w.copied_from_device)
        if w.acquisition.earlier is not None:
            # Another original under the key of one that is gone from the source: linked, not merged.
            facts["earlier_item"] = w.acquisition.earlier
        attempt = w.acquisition.attempts
        try:
            entry = await self.pipeline.commit(
                lambda: self.repository.acquired(
                    w.item,
                    origin,
                    sha256=copied.sha256,
                    size=copied.size,
                    acquired_utc=acquired_utc,
                    attempt=attempt,
                    facts=facts,
                )
            )
        except Exception:
            # Not recorded (the disk filled up under the commit, an I/O error): the temp copy belongs to
            # no item, so it goes; the original stays on the source and is copied at its next docking.
            if self.repository.item(w.item) is None:
                self.layout.tmp_copy(w.item).unlink(missing_ok=True)
            raise
        log.debug("%s %s: acquired %s as item %s (seq %d)", self.source.kind, self.source.device,
                  w.offered.display, w.item, entry.seq)
        w.unrecorded = None
        w.acquisition.state = AcquisitionState.COPIED

    # -- verify and seal --------------------------------------------------------------------------

    async def _finish_with_retries(self, w: IngestedItem) -> None:
        display = w.offered.display
        if w.unrecorded is not None:
            await self._record_acquired(w)
        while w.state in (AcquisitionState.COPIED, AcquisitionState.VERIFIED):
            try:
                await self._finish(w)
            except StoreFullError:
                raise
            except (SourceReadError, OSError) as exc:
                await self.raise_if_gone(exc)
                await self._retry_copy(w, f"{display}: {exc}")
            except AcquireError as exc:  # the re-read did not match, or the original changed
                await self._retry_copy(w, str(exc))
            except CustodyError as exc:  # the manifest could not be signed or sealed
                await self._retry_copy(w, f"{display}: {exc}")
            if w.state == AcquisitionState.PENDING:
                await self._copy_with_retries(w)

    async def _retry_copy(self, w: IngestedItem, reason: str) -> None:
        self.layout.tmp_copy(w.item).unlink(missing_ok=True)
        data = {**self._where(w), "stage": "verify", "reason": reason, "action": "copy again"}
        await self.pipeline.commit(lambda: self.repository.copy_again(w.item, data))
        self.progress.errors.append(reason)
        self.progress.bytes_done -= w.copied_bytes
        w.copied_bytes = 0
        w.acquisition.state = AcquisitionState.PENDING

    async def _finish(self, w: IngestedItem) -> None:
        if w.state == AcquisitionState.COPIED:
            await self._seal_and_verify(w)
        await self._publish(w)

    async def _seal_and_verify(self, w: IngestedItem) -> None:
        started = time.monotonic()
        display = w.offered.display
        record = self.repository.item(w.item)
        if record is None:
            raise _VerificationMismatch(f"{display}: item {w.item} has no index row")
        sha256, size = record.sha256, record.size
        part = self.layout.tmp_copy(w.item)
        if not part.exists():
            raise _VerificationMismatch(f"{display}: the copy in progress was lost")
        ext = stored_extension(w.offered.name)

        def read_facts() -> tuple[dict[str, Any], str | None]:
            # Drop whatever a crash may have left appended to the copy: only the original bytes remain.
            os.truncate(part, size)
            return media_facts_and_seal(part, size, ext)

        # One hand-over to a worker thread per step, not one per call: with eight bays of short clips
        # the hand-overs themselves cost measurable CPU time.
        media, fallback = await self._thread(read_facts)
        media = self.pipeline.store.scrub_error_text(media)  # ffprobe names the .part it read
        acquired_entry = self.repository.latest_entry(w.item, EntryType.ACQUIRED)
        if acquired_entry is None:
            raise _VerificationMismatch(f"item {w.item}: no {EntryType.ACQUIRED} ledger entry")
        manifest = sign_manifest(
            build_manifest(
                item=w.item,
                sha256=sha256,
                size=size,
                origin=w.offered.origin,
                media=media,
                acquired_utc=record.acquired,
                chain_seq=acquired_entry[0],
                chain_hash=acquired_entry[1],
                sidecar_reason=fallback,
            ),
            self.pipeline.store.key,
        )
        embedded = fallback is None
        sealing: dict[str, Any] = {"embedded": embedded}
        station = self.pipeline.store.key
        inspect = not embedded and ext in ISO_BMFF_EXTENSIONS
        if not embedded:
            log.info("item %s: manifest kept in the sidecar only: %s", w.item, fallback)
            sealing["sidecar_reason"] = fallback
        verify = self.settings.verify_reread
        # The acquisition hash is already of the device's bytes (invariant 1); a second read of the
        # original costs a full read of the device and is made only when configured.
        reopen = w.offered.reopen if verify and self.settings.reread_original else None
        source_reread = reopen is not None
        checks: dict[str, Any] = {"stored_reread": verify, "source_reread": False}

        def seal_and_reread() -> tuple[dict[str, Any] | None, ReRead | None]:
            found = None
            if embedded:
                append_evidence_box(part, manifest)
            elif inspect:
                found = inspect_evidence_box(part, size, {station.key_id: station.public_key()})
            if not verify:
                return found, None
            return found, reread_stored_and_source(part, reopen, size, self.settings.chunk_bytes, display,
                                                   prefix_step_bytes=self.settings.prefix_step_bytes)

        found, reread = await self._thread(seal_and_reread)
        if found is not None:  # a sealed file brought back, or a forged box: on the record
            sealing["evidence_box_in_original"] = found
        if reread is not None:
            checks["stored_read"] = reread.stored_read  # how the read bypassed the page cache
            if source_reread:
                # True only for a second read proven to come from the device: one answered by pages
                # pinned in the page cache (mapped by another process) proves nothing about the device.
                checks["source_reread"] = reread.source_read is not None
                checks["source_read"] = None if reread.source_read is None else str(reread.source_read)
            if reread.stored_sha256 != sha256 or reread.stored_size != size:
                raise _VerificationMismatch(
                    f"{display}: stored copy re-read from disk gives {reread.stored_sha256} "
                    f"({reread.stored_size} bytes), acquisition hash was {sha256} ({size} bytes)"
                )
            if reread.source_differs_at is not None:
                raise _VerificationMismatch(
                    f"{display}: second read from the {self.source.kind} device differs from the copy at "
                    f"byte {reread.source_differs_at} (inconsistent device reads)"
                )
        verified = {
            "sha256": sha256,
            "size": size,
            **checks,
            **sealing,
            "media_readable": "error" not in media,
        }
        digests = None if reread is None else reread.prefix_digests

        def record_verified() -> None:
            self.repository.verified(w.item, verified, manifest)
            if digests is not None:  # the upload's checksums, from the bytes this re-read verified
                record_prefix_digests(self.repository.conn, w.item, digests)

        await self.pipeline.commit(record_verified)
        w.acquisition.state = AcquisitionState.VERIFIED
        # Before erasing, the original is read from its device again and must give the acquisition
        # hash (USB wipe), unless this verification already did so with a proven device read: the one
        # read that was copied and hashed may itself have been a silent misread.
        w.source_read_now = bool(checks["source_reread"])
        self.pipeline.status.publish(Duration(DurationKind.VERIFY, time.monotonic() - started, size))
        self.progress.verified += 1
        self._report()

    async def _publish(self, w: IngestedItem) -> None:
        """verified → sealed: move the sealed copy into items/ and write the sidecar."""
        record = self.repository.item(w.item)
        if record is None or record.manifest is None:
            raise _VerificationMismatch(f"{w.offered.display}: item {w.item} has no signed manifest")
        manifest = record.manifest
        relpath = self.layout.item_relpath(w.item, record.acquired, stored_extension(w.offered.name))
        final = self.layout.root / relpath
        part = self.layout.tmp_copy(w.item)

        def work() -> bool:
            make_dirs_durable(final.parent)  # a new items/YYYY/MM/DD/ must survive power loss too
            if part.exists():
                os.replace(part, final)
            elif not final.exists():
                raise _VerificationMismatch(f"{w.offered.display}: sealed copy missing before publishing")
            else:
                # Published before a crash: a sidecar write it interrupted left its temporary behind.
                remove_stale_temporaries(sidecar_path(final))
            write_sidecar(final, manifest, sync_dir=False)
            # One fsync makes both renames durable, shared with the other items published meanwhile.
            self.pipeline.directories.sync(final.parent)
            return final.stat().st_size > int(manifest["size"])

        embedded = await self._thread(work)
        await self.pipeline.commit(lambda: self.repository.sealed(w.item, str(relpath), manifest, embedded))
        w.acquisition.state = AcquisitionState.SEALED
        self.sealed.append(w.item)
        if self.pipeline.uploads is not None:
            self.pipeline.uploads.item_sealed(w.item)
        self.progress.files_done += 1
        self._report()


def reread_stored_and_source(
    stored: Path, reopen: ReaderOpener | None, size: int, chunk_bytes: int, what: str, *,
    prefix_step_bytes: int | None = None,
) -> ReRead:
    """The verification read: the stored copy from disk and, when the source can, the original again
    (with the stored copy's prefix digests at `prefix_step_bytes`, when given)."""
    reader: ItemReader | None = None if reopen is None else reopen()
    try:
        found = reread_and_compare(stored, reader, size=size, chunk_bytes=chunk_bytes, what=what,
                                   prefix_step_bytes=prefix_step_bytes)
        if reader is None:
            return found
        return dataclasses.replace(found, source_read=reader.cache_bypass)
    finally:
        if reader is not None:
            reader.close()


def hash_original(reopen: ReaderOpener, chunk_bytes: int) -> tuple[CopyResult, ReadMethod | None]:
    """SHA-256 and size of the original as the source holds it now (no stored copy to compare), and
    how the read was proven to reach the device (the reader's `cache_bypass`; None: not proven, the
    bytes may have come from pages another process keeps in the page cache)."""
    reader = reopen()
    try:
        return hash_reader(reader, chunk_bytes=chunk_bytes), reader.cache_bypass
    finally:
        reader.close()
