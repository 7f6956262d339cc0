"""Offload one recorder volume into the store: copy+hash, verify, seal, then erase per policy.

Per file the states are pending → copied → verified → sealed → wiping → wiped (or failed), each
transition committed together with its ledger entry, so a crash at any instant resumes from the last
committed state:

* pending: copy to tmp/<item>.part while hashing (a stale .part from a crash is discarded first);
* copied: the sealed form is built in the .part (truncated back to the original size first, so a
  half-appended manifest box from a crash is dropped), then verified: the stored prefix re-read from
  disk and the source re-read from the device must both give the acquisition hash;
* verified: rename into items/, write the sidecar; sealed;
* wiping: the recorder file is unlinked; wiped.

Copying file N+1 overlaps verifying and sealing file N, so the verification costs little wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from edge.config.station import StationConfig, WipePolicy
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.errors import CustodyError
from edge.custody.isobmff import evidence_box, seal_decision
from edge.custody.ledger import EntryType, station_time_now
from edge.custody.manifest import sign_manifest
from edge.custody.seal import append_evidence_box, write_sidecar
from edge.durable.files import free_bytes, fsync_dir
from edge.ingest.copy import (
    AcquireError,
    ReRead,
    SourceChangedError,
    SourceReadError,
    StoreFullError,
    copy_and_hash,
    reread_and_compare,
)
from edge.ingest.manifest import build_manifest
from edge.ingest.mediainfo import media_facts
from edge.ingest.store import StationStore, stored_extension
from edge.sources.usb.enumerate import VolumeFile, list_volume, open_volume_file, unlink_volume_file
from edge.sources.usb.identity import SessionInfo

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
INT64_LIMIT = (1 << 63) - 1
MAX_FINISHING = 2
PLACEHOLDER_MANIFEST = b'{"format":"evidence-edge/placeholder"}'
ISO_BMFF_EXTENSIONS = {"mp4", "mov", "m4a", "m4v", "3gp"}


class OffloadOutcome(StrEnum):
    DONE = "done"  # every file sealed (and wiped where policy says so)
    PARTIAL = "partial"  # some files could not be acquired; the rest are safe
    DEVICE_GONE = "device-gone"  # recorder pulled or its volume vanished; resume on re-dock
    STORE_FULL = "store-full"  # station disk full; recorder left untouched
    FAILED = "failed"  # an unexpected error stopped the offload; it is in the ledger and the log
    # Every file safe at the station; some stay on the recorder until the central's receipt verifies
    # (wipe policy after-receipt): they are erased at a later docking.
    AWAITING_RECEIPT = "awaiting-receipt"


class ReceiptGate(Protocol):
    """The uplink, as the offload sees it: told of each sealed item at once (so uploading overlaps
    copying), and asked which items have a verified central receipt before anything is erased."""

    def item_sealed(self, item: str) -> None: ...

    async def wait_receipts(self, items: Sequence[str], timeout_s: float) -> set[str]: ...


@dataclass
class BayProgress:
    """What the bay shows the officer; updated in place, passed to the progress callback."""

    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    verified: int = 0
    wiped: int = 0
    current: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OffloadResult:
    outcome: OffloadOutcome
    items: list[str]
    verified: int
    wiped: int
    bytes: int
    errors: list[str]
    not_evidence: list[str] = field(default_factory=list)
    awaiting_receipt: int = 0


class DeviceGoneError(Exception):
    """The recorder volume is no longer reachable."""


@dataclass
class _FileRow:
    file: VolumeFile
    item: str
    state: str
    attempts: int
    reread_now: bool = False  # copy and source re-read and matched during this docking


class VolumeOffload:
    def __init__(
        self,
        store: StationStore,
        config: StationConfig,
        session: SessionInfo,
        root: Path,
        *,
        executor: Executor | None = None,
        on_progress: Callable[[BayProgress], None] | None = None,
        receipts: ReceiptGate | None = None,
    ) -> None:
        self.store = store
        self.receipts = receipts
        self.awaiting_receipt = 0
        self.config = config
        self.session = session
        self.root = root
        self.executor = executor
        self.on_progress = on_progress
        self.progress = BayProgress()
        self.items: list[str] = []
        self.not_evidence: list[str] = []
        self.device = session.identity.device_serial
        self.chunk = config.offload.chunk_bytes

    # -- plumbing ---------------------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _error(self, item: str | None, stage: str, reason: str, file: VolumeFile | None) -> None:
        log.warning("recorder %s: %s: %s", self.device, stage, reason)
        self.progress.errors.append(reason)
        data: dict[str, Any] = {"device_serial": self.device, "stage": stage, "reason": reason}
        if file is not None:
            data["original"] = file.display_path
        self.store.record(EntryType.ERROR, item, data)
        self._report()

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> OffloadResult:
        await self._thread(self.store.hold_reserve)  # given up by an earlier disk-full offload
        try:
            listing = await self._thread(
                list_volume,
                self.root,
                max_files=self.config.offload.max_files,
                max_depth=self.config.offload.max_depth,
            )
        except OSError as exc:
            self._error(None, "list", f"cannot list the volume: {exc.strerror or exc}", None)
            return self._result(OffloadOutcome.DEVICE_GONE)
        wanted = set(self.config.offload.extensions)
        limit = self.config.offload.max_file_bytes
        refusals = [(r.path, r.reason) for r in listing.rejected]
        refusals += [
            (f.display_path, f"{f.size} bytes is more than the {limit} a recorder file can plausibly be")
            for f in listing.files
            if f.size > limit
        ]
        self._record_refusals(refusals, listing.rejected_not_listed)
        evidence = [f for f in listing.files if stored_extension(f.name) in wanted and f.size <= limit]
        self.not_evidence = [f.display_path for f in listing.files if stored_extension(f.name) not in wanted]
        with self.store.transaction():  # one commit for all files, however many the volume holds
            rows = [self._row(f) for f in evidence]
        self._finish_interrupted_wipes({f.key for f in evidence})
        self.progress.files_total = len(rows)
        self.progress.bytes_total = sum(r.file.size for r in rows)
        self._report()
        outcome = await self._acquire_all(rows)
        if outcome is OffloadOutcome.DONE:
            outcome = await self._wipe_all(rows)
        if self.progress.errors and outcome is OffloadOutcome.DONE:
            outcome = OffloadOutcome.PARTIAL
        return self._result(outcome)

    def _record_refusals(self, refusals: list[tuple[str, str]], not_listed: int) -> None:
        """Every refused entry on the record, in one transaction (a hostile volume can hold many)."""
        if not refusals and not not_listed:
            return
        with self.store.transaction():
            for path, reason in refusals:
                self.store.ledger.append(
                    EntryType.REFUSED,
                    None,
                    {"device_serial": self.device, "original": path, "reason": reason},
                )
            if not_listed:
                self.store.ledger.append(
                    EntryType.REFUSED,
                    None,
                    {"device_serial": self.device, "reason": f"{not_listed} more refused entries not listed"},
                )
        self.progress.errors.extend(f"{path}: {reason}" for path, reason in refusals)
        if not_listed:
            self.progress.errors.append(f"{not_listed} more refused entries")

    def _result(self, outcome: OffloadOutcome) -> OffloadResult:
        return OffloadResult(
            outcome,
            list(self.items),
            self.progress.verified,
            self.progress.wiped,
            self.progress.bytes_done,
            list(self.progress.errors),
            list(self.not_evidence),
            self.awaiting_receipt,
        )

    def _row(self, file: VolumeFile) -> _FileRow:
        key = self._key(file)
        found = self.store.conn.execute(
            "SELECT item, state, attempts FROM recorder_files WHERE device_serial=? AND original_path=? "
            "AND device_size=? AND device_mtime_ns=?",
            key,
        ).fetchone()
        if found is None:
            item = str(uuid.uuid4())
            self.store.conn.execute(
                "INSERT INTO recorder_files(device_serial, original_path, device_size, device_mtime_ns,"
                " state, item) VALUES (?, ?, ?, ?, 'pending', ?)",
                (*key, item),
            )
            return _FileRow(file, item, "pending", 0)
        state = found["state"]
        if state == "failed":  # a new docking gives failed files a fresh set of attempts
            state = "pending"
            self._set_state(file, "pending", attempts=0)
        return _FileRow(file, found["item"], state, 0 if found["state"] == "failed" else found["attempts"])

    def _key(self, file: VolumeFile) -> tuple[str, str, int, int]:
        # A corrupt FAT entry can claim a time past 2262, beyond SQLite's 64-bit integers: clamp the
        # key (the exact value is still compared against fstat and recorded in the manifest).
        return (self.device, file.key, file.size, max(-INT64_LIMIT, min(INT64_LIMIT, file.mtime_ns)))

    def _set_state(
        self, file: VolumeFile, state: str, *, attempts: int | None = None, error: str | None = None
    ) -> None:
        self.store.conn.execute(
            "UPDATE recorder_files SET state=?, attempts=COALESCE(?, attempts), last_error=? "
            "WHERE device_serial=? AND original_path=? AND device_size=? AND device_mtime_ns=?",
            (state, attempts, error, *self._key(file)),
        )

    async def _acquire_all(self, rows: list[_FileRow]) -> OffloadOutcome:
        # Verifying and sealing (two ffprobe runs, two re-reads) can take longer than copying a file
        # from the page cache; a few files finishing at once keep the copy loop busy. Memory stays
        # bounded: each finishing file holds one read buffer.
        finishing: set[asyncio.Task[None]] = set()
        outcome = OffloadOutcome.DONE
        try:
            for row in rows:
                if row.state in ("sealed", "wiping", "wiped"):
                    self._count_done(row)
                    continue
                self.progress.current = row.file.display_path
                self._report()
                if row.state in ("copied", "verified"):  # resumed after a crash: copied before
                    self.progress.bytes_done += row.file.size
                if row.state == "pending":
                    await self._copy_with_retries(row)
                while len(finishing) >= MAX_FINISHING:
                    done, finishing = await asyncio.wait(finishing, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a fatal error (device gone, disk full) stops the offload
                if row.state in ("copied", "verified"):
                    finishing.add(asyncio.create_task(self._finish_with_retries(row)))
            while finishing:
                done, finishing = await asyncio.wait(finishing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        except DeviceGoneError as exc:
            self._error(None, "device", str(exc), None)
            outcome = OffloadOutcome.DEVICE_GONE
        except StoreFullError as exc:
            self.store.release_reserve()  # room for the ledger to say so
            self._error(None, "store", str(exc), None)
            outcome = OffloadOutcome.STORE_FULL
        finally:
            # Let files in flight reach a committed state; their own errors are already recorded.
            for task in finishing:
                with contextlib.suppress(DeviceGoneError, StoreFullError):
                    await task
        self.progress.current = ""
        self._report()
        return outcome

    def _count_done(self, row: _FileRow) -> None:
        self.items.append(row.item)
        self.progress.files_done += 1
        self.progress.verified += 1
        self.progress.bytes_done += row.file.size
        if row.state == "wiped":
            self.progress.wiped += 1

    # -- copy -------------------------------------------------------------------------------------

    async def _copy_with_retries(self, row: _FileRow) -> None:
        while row.state == "pending":
            if row.attempts >= MAX_ATTEMPTS:
                self._fail(row, "copy", f"{row.file.display_path}: gave up after {MAX_ATTEMPTS} attempts")
                return
            row.attempts += 1
            try:
                await self._copy(row)
            except StoreFullError:
                raise  # the whole offload stops; the recorder stays untouched
            except SourceReadError as exc:
                await self._raise_if_gone(exc)
                self._error(row.item, "copy", str(exc), row.file)
            except AcquireError as exc:  # changed on the device, or the station failed to write
                self._error(row.item, "copy", str(exc), row.file)
            except FileNotFoundError:
                self._fail(row, "copy", f"{row.file.display_path}: vanished from the recorder before copying")
                return
            except OSError as exc:
                await self._raise_if_gone(exc)
                self._error(
                    row.item, "copy", f"{row.file.display_path}: cannot open: {exc.strerror}", row.file
                )

    async def _raise_if_gone(self, exc: Exception) -> None:
        if not await self._thread(self._volume_reachable):
            raise DeviceGoneError(f"recorder volume {self.root} is gone ({exc})") from exc

    def _volume_reachable(self) -> bool:
        try:
            return os.path.ismount(self.root) or bool(os.listdir(self.root))
        except OSError:
            return False

    def _fail(self, row: _FileRow, stage: str, reason: str) -> None:
        row.state = "failed"
        with self.store.transaction():
            self._set_state(row.file, "failed", attempts=row.attempts, error=reason)
            self.store.ledger.append(
                EntryType.ERROR,
                row.item,
                {
                    "device_serial": self.device,
                    "stage": stage,
                    "reason": reason,
                    "final": True,
                    "original": row.file.display_path,
                },
            )
        self.progress.errors.append(reason)
        self._report()

    async def _copy(self, row: _FileRow) -> None:
        layout = self.store.layout
        part = layout.tmp_copy(row.item)
        part.unlink(missing_ok=True)  # a stale copy from an interrupted attempt is never trusted
        reserve = self.config.offload.min_free_bytes
        available = await self._thread(free_bytes, layout.tmp)
        if available - row.file.size < reserve:
            raise StoreFullError(
                f"{row.file.display_path}: needs {row.file.size} bytes, station disk has {available} free "
                f"(keeping {reserve} in reserve)"
            )
        what = f"{self.device}:{row.file.display_path}"
        acquired_utc = station_time_now()

        def progress(count: int) -> None:
            self.progress.bytes_done += count

        def work() -> tuple[str, int]:
            fd = open_volume_file(self.root, row.file)
            try:
                result = copy_and_hash(
                    fd,
                    part,
                    expected_size=row.file.size,
                    expected_mtime_ns=row.file.mtime_ns,
                    chunk_bytes=self.chunk,
                    what=what,
                    progress=progress,
                )
            finally:
                os.close(fd)
            return result.sha256, result.size

        counted_before = self.progress.bytes_done
        try:
            sha256, size = await self._thread(work)
        except BaseException:
            self.progress.bytes_done = counted_before
            part.unlink(missing_ok=True)
            raise
        with self.store.transaction() as conn:
            entry = self.store.ledger.append(
                EntryType.ACQUIRED,
                row.item,
                {
                    "device_serial": self.device,
                    "session": self.session.session,
                    "bay": self.session.bay,
                    "original": row.file.display_path,
                    "size": size,
                    "sha256": sha256,
                    "attempt": row.attempts,
                },
            )
            conn.execute(
                "INSERT INTO items(item, sha256, size, device_serial, officer_no, acquired) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(item) DO UPDATE SET sha256=excluded.sha256, "
                "size=excluded.size, acquired=excluded.acquired, manifest=NULL",
                (row.item, sha256, size, self.device, self.session.identity.officer_no, acquired_utc),
            )
            self._set_state(row.file, "copied", attempts=row.attempts)
            # Same bytes already held (a renamed or re-touched file, or another recorder's copy):
            # both stay evidence with their own origin, and the ledger links them.
            same = [
                r[0]
                for r in conn.execute(
                    "SELECT item FROM items WHERE sha256=? AND item!=? ORDER BY acquired LIMIT 10",
                    (sha256, row.item),
                )
            ]
            if same:
                self.store.ledger.append(EntryType.DUPLICATE, row.item, {"sha256": sha256, "same_as": same})
        log.debug("recorder %s: acquired %s as item %s (seq %d)", self.device, what, row.item, entry.seq)
        row.state = "copied"

    # -- verify and seal --------------------------------------------------------------------------

    async def _finish_with_retries(self, row: _FileRow) -> None:
        while row.state in ("copied", "verified"):
            try:
                await self._finish(row)
            except StoreFullError:
                raise
            except (SourceReadError, OSError) as exc:
                await self._raise_if_gone(exc)
                self._retry_copy(row, f"{row.file.display_path}: {exc}")
            except AcquireError as exc:  # the re-read did not match, or the file changed
                self._retry_copy(row, str(exc))
            except CustodyError as exc:  # the manifest could not be signed or sealed
                self._retry_copy(row, f"{row.file.display_path}: {exc}")
            if row.state == "pending":
                await self._copy_with_retries(row)

    def _retry_copy(self, row: _FileRow, reason: str) -> None:
        self.store.layout.tmp_copy(row.item).unlink(missing_ok=True)
        with self.store.transaction():
            self.store.ledger.append(
                EntryType.ERROR,
                row.item,
                {
                    "device_serial": self.device,
                    "stage": "verify",
                    "reason": reason,
                    "original": row.file.display_path,
                    "action": "copy again",
                },
            )
            self._set_state(row.file, "pending", error=reason)
        self.progress.errors.append(reason)
        self.progress.bytes_done -= row.file.size
        row.state = "pending"

    async def _finish(self, row: _FileRow) -> None:
        item_row = self.store.conn.execute(
            "SELECT sha256, size, acquired, manifest FROM items WHERE item=?", (row.item,)
        ).fetchone()
        if row.state == "copied":
            await self._seal_and_verify(row, item_row["sha256"], item_row["size"], item_row["acquired"])
        await self._publish(row)

    async def _seal_and_verify(self, row: _FileRow, sha256: str, size: int, acquired_utc: str) -> None:
        layout = self.store.layout
        part = layout.tmp_copy(row.item)
        if not part.exists():
            raise _VerificationMismatch(f"{row.file.display_path}: the copy in progress was lost")
        # Drop whatever a crash may have left appended to the copy: only the original bytes remain.
        await self._thread(os.truncate, part, size)
        ext = stored_extension(row.file.name)
        media, fallback = await self._thread(self._probe, part, size, ext)
        acquired_entry = self._latest_entry(row.item, EntryType.ACQUIRED)
        manifest = sign_manifest(
            build_manifest(
                item=row.item,
                sha256=sha256,
                size=size,
                file=row.file,
                session=self.session,
                media=media,
                acquired_utc=acquired_utc,
                case_defaults=self.config.case_defaults_for(self.session.identity.officer_no),
                chain_seq=acquired_entry[0],
                chain_hash=acquired_entry[1],
            ),
            self.store.key,
        )
        embedded = fallback is None
        if embedded:
            await self._thread(append_evidence_box, part, manifest)
        else:
            log.info("item %s: manifest kept in the sidecar only: %s", row.item, fallback)
        verify = self.config.offload.verify_reread
        checks: dict[str, Any] = {"stored_reread": verify, "source_reread": verify}
        if verify:
            reread = await self._thread(self._reread, part, row.file, size)
            if reread.stored_sha256 != sha256 or reread.stored_size != size:
                raise _VerificationMismatch(
                    f"{row.file.display_path}: stored copy re-read from disk gives {reread.stored_sha256} "
                    f"({reread.stored_size} bytes), acquisition hash was {sha256} ({size} bytes)"
                )
            if reread.source_differs_at is not None:
                raise _VerificationMismatch(
                    f"{row.file.display_path}: second read from the recorder differs from the copy at byte "
                    f"{reread.source_differs_at} (inconsistent device reads)"
                )
        with self.store.transaction() as conn:
            self.store.ledger.append(
                EntryType.VERIFIED,
                row.item,
                {
                    "sha256": sha256,
                    "size": size,
                    **checks,
                    "embedded": embedded,
                    "media_readable": "error" not in media,
                },
            )
            conn.execute(
                "UPDATE items SET manifest=? WHERE item=?", (canonical_json(manifest).decode(), row.item)
            )
            self._set_state(row.file, "verified")
        row.state = "verified"
        row.reread_now = verify
        self.progress.verified += 1
        self._report()

    def _probe(self, part: Path, size: int, ext: str) -> tuple[dict[str, Any], str | None]:
        """Media facts, and why the manifest cannot be embedded (None when it can).

        ffprobe costs more than copying a file from a fast disk, so it runs once per file: an
        ISO-BMFF copy is probed with a placeholder evidence box already appended, which both reads
        the media facts and shows that players accept a trailing box on this very file. The real box
        differs only in its payload, which no player reads.
        """
        if ext not in ISO_BMFF_EXTENSIONS:
            return media_facts(part), f"not an ISO-BMFF file (.{ext})"
        with part.open("rb") as f:
            sealable, reason = seal_decision(f, size)
        if not sealable:
            return media_facts(part), reason
        with part.open("ab") as f:
            f.write(evidence_box(PLACEHOLDER_MANIFEST))
        try:
            media = media_facts(part)
        finally:
            os.truncate(part, size)
        if "error" not in media:
            return media, None
        original = media_facts(part)
        if "error" in original:
            return original, "ffprobe cannot read the file"
        return original, "ffprobe reads the file only without a trailing box; manifest kept in the sidecar"

    def _reread(self, part: Path, file: VolumeFile, size: int) -> ReRead:
        fd = open_volume_file(self.root, file)
        try:
            info = os.fstat(fd)
            if info.st_size != file.size or info.st_mtime_ns != file.mtime_ns:
                raise SourceChangedError(f"{file.display_path}: changed on the recorder after copying")
            return reread_and_compare(part, fd, size=size, chunk_bytes=self.chunk, what=file.display_path)
        finally:
            os.close(fd)

    def _latest_entry(self, item: str, type_: str) -> tuple[int, str]:
        found = self.store.conn.execute(
            "SELECT seq, hash FROM ledger WHERE item=? AND type=? ORDER BY seq DESC LIMIT 1", (item, type_)
        ).fetchone()
        if found is None:
            raise _VerificationMismatch(f"item {item}: no {type_} ledger entry")
        return int(found[0]), str(found[1])

    async def _publish(self, row: _FileRow) -> None:
        """verified → sealed: move the sealed copy into items/ and write the sidecar."""
        item_row = self.store.conn.execute(
            "SELECT manifest, acquired FROM items WHERE item=?", (row.item,)
        ).fetchone()
        manifest = json.loads(item_row["manifest"])
        layout = self.store.layout
        relpath = layout.item_relpath(row.item, item_row["acquired"], stored_extension(row.file.name))
        final = layout.root / relpath
        part = layout.tmp_copy(row.item)

        def work() -> bool:
            final.parent.mkdir(parents=True, exist_ok=True)
            if part.exists():
                os.replace(part, final)
                fsync_dir(final.parent)
            elif not final.exists():
                raise _VerificationMismatch(f"{row.file.display_path}: sealed copy missing before publishing")
            write_sidecar(final, manifest)
            return final.stat().st_size > int(manifest["size"])

        embedded = await self._thread(work)
        with self.store.transaction() as conn:
            self.store.ledger.append(
                EntryType.SEALED,
                row.item,
                {
                    "path": str(relpath),
                    "manifest_sha256": sha256_hex(canonical_json(manifest)),
                    "embedded": embedded,
                },
            )
            conn.execute(
                "UPDATE items SET path=?, sealed_in_file=? WHERE item=?",
                (str(relpath), int(embedded), row.item),
            )
            self._set_state(row.file, "sealed")
        row.state = "sealed"
        self.items.append(row.item)
        if self.receipts is not None:
            self.receipts.item_sealed(row.item)
        self.progress.files_done += 1
        self._report()

    # -- wipe -------------------------------------------------------------------------------------

    def _finish_interrupted_wipes(self, listed: set[str]) -> None:
        """A crash between erasing a recorder file and committing `wiped` leaves the row in `wiping`
        with the file gone: record the erasure now, saying it was completed before the interruption."""
        pending = self.store.conn.execute(
            "SELECT original_path, device_size, device_mtime_ns, item FROM recorder_files "
            "WHERE device_serial=? AND state='wiping'",
            (self.device,),
        ).fetchall()
        for row in pending:
            if row["original_path"] in listed:
                continue  # still on the recorder: the normal wipe pass erases it
            with self.store.transaction() as conn:
                self.store.ledger.append(
                    EntryType.WIPED,
                    row["item"],
                    {"device_serial": self.device, "original": row["original_path"], "already_absent": True},
                )
                conn.execute(
                    "UPDATE recorder_files SET state='wiped' WHERE device_serial=? AND original_path=? "
                    "AND device_size=? AND device_mtime_ns=?",
                    (self.device, row["original_path"], row["device_size"], row["device_mtime_ns"]),
                )

    async def _wipe_all(self, rows: list[_FileRow]) -> OffloadOutcome:
        policy = self.config.wipe.policy
        if policy is WipePolicy.NEVER:
            return OffloadOutcome.DONE
        if not self.config.offload.verify_reread:
            # Invariant 2: nothing is erased whose copy was not re-read and matched.
            self.store.record(
                EntryType.ERROR,
                None,
                {
                    "device_serial": self.device,
                    "stage": "wipe",
                    "reason": "wipe skipped: re-read verification is disabled",
                },
            )
            return OffloadOutcome.DONE
        if policy is WipePolicy.AFTER_RECEIPT:
            rows = await self._only_receipted(rows)
        for row in rows:
            if row.state not in ("sealed", "wiping"):
                continue
            try:
                if row.state == "sealed" and not row.reread_now and not await self._reverify_sealed(row):
                    continue
                await self._wipe(row)
            except OSError as exc:
                await self._raise_if_gone(exc)
                self._error(
                    row.item, "wipe", f"{row.file.display_path}: cannot erase: {exc.strerror}", row.file
                )
        return OffloadOutcome.AWAITING_RECEIPT if self.awaiting_receipt else OffloadOutcome.DONE

    async def _only_receipted(self, rows: list[_FileRow]) -> list[_FileRow]:
        """The rows that may be erased under after-receipt: those whose central receipt verified
        (waiting up to `wipe.receipt_wait_s` while the uplink works). The rest stay on the recorder,
        each with a ledger entry saying why."""
        waiting = [r for r in rows if r.state == "sealed"]
        receipted: set[str] = set()
        if waiting and self.receipts is not None:
            receipted = await self.receipts.wait_receipts(
                [r.item for r in waiting], self.config.wipe.receipt_wait_s
            )
        deferred = [r for r in waiting if r.item not in receipted]
        if deferred:
            with self.store.transaction():
                for row in deferred:
                    self.store.ledger.append(
                        EntryType.WIPE_DEFERRED,
                        row.item,
                        {
                            "device_serial": self.device,
                            "original": row.file.display_path,
                            "reason": "no verified central receipt yet (wipe policy after-receipt)",
                        },
                    )
        self.awaiting_receipt = len(deferred)
        # `wiping` rows were receipted before an interruption: finishing their erasure is safe.
        return [r for r in rows if r.state == "wiping" or r.item in receipted]

    async def _reverify_sealed(self, row: _FileRow) -> bool:
        """Invariant 2 for files sealed in an earlier docking (or before a crash, or with re-reading
        off): before erasing, the stored object and the recorder's file are read again and must
        match the acquisition hash now."""
        found = self.store.conn.execute(
            "SELECT path, sha256, size FROM items WHERE item=?", (row.item,)
        ).fetchone()
        stored = self.store.layout.root / found["path"]
        purged = self.store.conn.execute(
            "SELECT 1 FROM uploads WHERE item=? AND state='receipted' AND purged IS NOT NULL", (row.item,)
        ).fetchone()
        if purged is not None:
            return await self._reverify_source_only(row, found["sha256"], int(found["size"]))
        try:
            reread = await self._thread(self._reread, stored, row.file, int(found["size"]))
        except AcquireError as exc:
            self._error(
                row.item,
                "wipe",
                f"{row.file.display_path}: not erased, re-verification failed: {exc}",
                row.file,
            )
            return False
        if reread.stored_sha256 != found["sha256"] or reread.source_differs_at is not None:
            self._error(
                row.item,
                "wipe",
                f"{row.file.display_path}: not erased: the stored object or the recorder's file no longer "
                f"matches the acquisition hash {found['sha256']}",
                row.file,
            )
            return False
        self.store.record(
            EntryType.VERIFIED,
            row.item,
            {
                "sha256": found["sha256"],
                "size": found["size"],
                "stored_reread": True,
                "source_reread": True,
                "purpose": "before erasing",
            },
        )
        return True

    async def _reverify_source_only(self, row: _FileRow, sha256: str, size: int) -> bool:
        """The local copy was purged after the central's verified receipt (retention): the central
        holds the evidence, so the recorder's file is erased only if it still hashes to it."""

        def work() -> tuple[str, int]:
            fd = open_volume_file(self.root, row.file)
            try:
                digest, total = hashlib.sha256(), 0
                while chunk := os.read(fd, self.chunk):
                    digest.update(chunk)
                    total += len(chunk)
                return digest.hexdigest(), total
            finally:
                os.close(fd)

        found_sha256, found_size = await self._thread(work)
        if (found_sha256, found_size) != (sha256, size):
            self._error(
                row.item,
                "wipe",
                f"{row.file.display_path}: not erased: the recorder's file no longer matches the receipted "
                f"hash {sha256}",
                row.file,
            )
            return False
        self.store.record(
            EntryType.VERIFIED,
            row.item,
            {
                "sha256": sha256,
                "size": size,
                "stored_reread": False,
                "source_reread": True,
                "purpose": "before erasing; the local copy was purged after the central's receipt",
            },
        )
        return True

    async def _wipe(self, row: _FileRow) -> None:
        if row.state == "sealed":
            with self.store.transaction():
                self._set_state(row.file, "wiping")
            row.state = "wiping"

        def work() -> bool:
            try:
                fd = open_volume_file(self.root, row.file)
            except FileNotFoundError:
                return False
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)
            if info.st_size != row.file.size or info.st_mtime_ns != row.file.mtime_ns:
                raise OSError(errno.EBUSY, "file changed on the recorder since it was verified")
            unlink_volume_file(self.root, row.file)
            return True

        erased_now = await self._thread(work)
        with self.store.transaction():
            self.store.ledger.append(
                EntryType.WIPED,
                row.item,
                {
                    "device_serial": self.device,
                    "original": row.file.display_path,
                    "already_absent": not erased_now,
                },
            )
            self._set_state(row.file, "wiped")
        row.state = "wiped"
        self.progress.wiped += 1
        self._report()


class _VerificationMismatch(AcquireError):
    pass
