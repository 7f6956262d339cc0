"""Offload one recorder volume: the USB source of the ingest pipeline, then erasure per wipe policy.

What is USB-specific lives here: listing the volume safely and putting every refused entry on the
record, choosing which files are evidence, telling when the recorder is gone, and erasing files from
the recorder. Everything between (copy+hash, verify, seal, publish, ledger) is the shared pipeline
(:mod:`edge.ingest.pipeline`); a file is an item of it through :mod:`edge.sources.usb.items`.

File identity: a file listed again under the key (path bytes, size, mtime) of a file this station
erased is a new recording; one listed again under the key of a sealed file not yet erased is hashed
again and is the same file only if it gives that item's hash (else the earlier item is `superseded` and
the file is acquired as a new item). A directory that lists a file twice gives one item
(:mod:`edge.sources.usb.enumerate`).

After the pipeline, per file: sealed → wiping → wiped, each committed with its ledger entry. A file is
erased only after its stored copy and the recorder's file were re-read and matched (in this docking,
or again just before erasing), the sealed artefact as stored verified once more just before erasing
(signature with the station's key, prefix hash, the manifest the ledger recorded); under after-witness
(the default) only once a head of our ledger signed by the central covers the item's `sealed` entry, and
under after-receipt only once the central's receipt verified. Waiting for the central gives the bay's
offload slot back, so a recorder that waits never keeps another bay from copying.

A stored copy found damaged while the recorder still holds the file (at docking, when the file is
proven the same by its hash, or by the check before erasing) is rebuilt from the recorder
(:meth:`IngestPipeline.reacquire`): an `error` entry (stage `stored copy`) and a `reacquired` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from edge.config.station import OffloadSection, StationConfig, WipePolicy
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.ledger import EntryType
from edge.custody.seal import SealedFileReport, verify_sealed_file
from edge.ingest.copy import AcquireError
from edge.ingest.pipeline import (
    IngestedItem,
    IngestOutcome,
    IngestPipeline,
    IngestProgress,
    IngestSettings,
    SourceGoneError,
    UploadQueue,
    hash_original,
)
from edge.ingest.repository import AcquisitionState, IngestRepository
from edge.ingest.store import StationStore, stored_extension
from edge.observe.sink import NULL_SINK, RefusalClass, Refused, StatusSink
from edge.runtime.slots import ConcurrencySlot
from edge.sources.usb.enumerate import Listing, VolumeFile, list_volume
from edge.sources.usb.holders import file_assignment, recorder_assignments
from edge.sources.usb.identity import SessionInfo
from edge.sources.usb.items import SOURCE_KIND, file_opener, volume_item
from edge.sources.usb.mounted import VolumeRoot
from edge.sources.usb.volumes import display_name

log = logging.getLogger(__name__)

WIPING = "wiping"
WIPED = "wiped"
# Erased from the recorder: a file listed under the same path, size and mtime later is another
# recording (a recorder whose clock was reset), acquired as a new item linked to the earlier one
# (`earlier_item` in its `acquired` entry; a `duplicate` entry too if its bytes are the same).
GONE = frozenset({WIPED})


class OffloadOutcome(StrEnum):
    DONE = "done"  # every file sealed (and wiped where policy says so)
    PARTIAL = "partial"  # some files could not be acquired; the rest are safe
    DEVICE_GONE = "device-gone"  # recorder pulled or its volume vanished; resume on re-dock
    STORE_FULL = "store-full"  # station disk full; recorder left untouched
    FAILED = "failed"  # an unexpected error stopped the offload; it is in the ledger and the log
    # Every file safe at the station; some stay on the recorder until the central's receipt verifies
    # (wipe policy after-receipt): they are erased at a later docking.
    AWAITING_RECEIPT = "awaiting-receipt"
    # Every file safe at the station; some stay on the recorder until the central has witnessed their
    # acquisition (wipe policy after-witness; the central is down or unreachable): erased at a later docking.
    AWAITING_WITNESS = "awaiting-witness"


_FROM_INGEST = {
    IngestOutcome.DONE: OffloadOutcome.DONE,
    IngestOutcome.SOURCE_GONE: OffloadOutcome.DEVICE_GONE,
    IngestOutcome.STORE_FULL: OffloadOutcome.STORE_FULL,
}


class ReceiptGate(UploadQueue, Protocol):
    """The uplink, as the offload sees it: told of each sealed item at once (so uploading overlaps
    copying), and asked which items have a verified central receipt, or how far the central has
    witnessed the ledger, before anything is erased."""

    async def wait_receipts(self, items: Sequence[str], timeout_s: float) -> set[str]: ...

    async def wait_witnessed(self, seq: int, timeout_s: float) -> int: ...


@dataclass
class BayProgress(IngestProgress):
    """What the bay shows the officer; updated in place, passed to the progress callback."""

    wiped: int = 0


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
    awaiting_witness: int = 0
    # Evidence files listed but not sealed (unreadable: they stay on the recorder, never wiped), shown as
    # `display_path`, never raw.
    unread: list[str] = field(default_factory=list)
    # STORE_FULL because the rest of the disk is kept for the rooms recording (edge.ingest.kept_space): them.
    kept_for_rooms: list[str] = field(default_factory=list)


def list_recorder_volume(root_fd: int, offload: OffloadSection) -> Listing:
    """The volume's files as the configuration bounds the listing (files, depth, entries)."""
    return list_volume(
        root_fd,
        max_files=offload.max_files,
        max_depth=offload.max_depth,
        max_dir_entries=offload.max_dir_entries,
        max_entries=offload.max_entries,
    )


class _VolumeSource:
    """The USB recorder as a `Source` of the ingest pipeline: reachable while the very mount this
    docking was bound to is still there (not merely some mount at its bay directory)."""

    kind = SOURCE_KIND

    def __init__(self, device: str, volume: VolumeRoot) -> None:
        self.device = device
        self.volume = volume

    def reachable(self) -> bool:
        return self.volume.reachable()


@dataclass
class _Wipe:
    """A file of this docking that the wipe phase looks at."""

    work: IngestedItem
    file: VolumeFile

    @property
    def item(self) -> str:
        return self.work.item

    @property
    def state(self) -> str:
        return self.work.acquisition.state


class VolumeOffload:
    def __init__(
        self,
        store: StationStore,
        config: StationConfig,
        session: SessionInfo,
        root: Path | VolumeRoot,
        *,
        executor: Executor | None = None,
        on_progress: Callable[[BayProgress], None] | None = None,
        receipts: ReceiptGate | None = None,
        pipeline: IngestPipeline | None = None,
        listing: Listing | None = None,
        slot: ConcurrencySlot | None = None,
        status: StatusSink = NULL_SINK,
    ) -> None:
        self.store = store
        self.status = status
        self.repository = IngestRepository(store)
        # The volume's listing, when the session already made it (a volume is listed once a docking).
        self.listing = listing
        self.receipts = receipts
        self.slot = slot
        self.awaiting_receipt = 0
        self.awaiting_witness = 0
        self.witnessed_seq = 0  # after-witness: how far the central had witnessed our ledger before erasing
        self.config = config
        self.session = session
        # A path is opened (and bound to whatever is mounted there) when the run starts; a bound
        # root (the station's sessions) belongs to the caller.
        self.volume: VolumeRoot | None = root if isinstance(root, VolumeRoot) else None
        self.root = root.path if isinstance(root, VolumeRoot) else root
        self.executor = executor
        self.on_progress = on_progress
        self.progress = BayProgress()
        self.items: list[str] = []
        self.not_evidence: list[str] = []
        self.unread: list[str] = []
        self.kept_for_rooms: list[str] = []
        self.device = session.identity.device_serial
        self.chunk = config.offload.chunk_bytes
        self.pipeline = pipeline or IngestPipeline(
            store, IngestSettings.from_config(config.offload, config.uplink), executor=executor,
            uploads=receipts,
        )

    # -- plumbing ---------------------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _stage(self, stage: str) -> None:
        """What the docking does now, for the bay's status (copying and verifying come from the pipeline)."""
        self.progress.stage = stage
        self._report()

    def _error(self, item: str | None, stage: str, reason: str, file: VolumeFile | None) -> None:
        log.warning("recorder %s: %s: %s", self.device, stage, reason)
        self.progress.errors.append(reason)
        data: dict[str, Any] = {"device_serial": self.device, "stage": stage, "reason": reason}
        if file is not None:
            data["original"] = file.display_path
        self.repository.record(EntryType.ERROR, item, data)
        self._report()

    async def _raise_if_gone(self, exc: Exception) -> None:
        if not await self._thread(self.source.reachable):
            raise SourceGoneError(f"recorder volume {display_name(self.root)} is gone ({exc})") from exc

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> OffloadResult:
        if self.volume is not None:
            return await self._run(self.volume)
        try:
            volume = await self._thread(VolumeRoot.open, self.root)
        except OSError as exc:
            self._error(None, "list", f"cannot open the volume: {exc.strerror or exc}", None)
            return self._result(OffloadOutcome.DEVICE_GONE)
        try:
            return await self._run(volume)
        finally:
            volume.close()

    async def _run(self, volume: VolumeRoot) -> OffloadResult:
        self.source = _VolumeSource(self.device, volume)
        try:
            listing = self.listing or await self._thread(list_recorder_volume, volume.fd, self.config.offload)
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
        self._finish_interrupted_wipes({f.key for f in evidence})
        case_defaults = self.config.case_defaults_for(self.session.identity.officer_no)
        equipment = self.config.equipment
        held = recorder_assignments(self.store, self.session) if equipment.enabled else None
        offered = [
            volume_item(volume, f, self.session, case_defaults, None if held is None else file_assignment(
                f, self.session, held, margin_s=equipment.clock_margin_s,
                mass_storage_tz_offset_min=self.config.usb.mass_storage_tz_offset_min))
            for f in evidence
        ]
        ingested = await self.pipeline.ingest(
            self.source,
            offered,
            progress=self.progress,
            on_progress=lambda _: self._report(),
            gone=GONE,
            prove_by_hash=True,  # a file sealed but not erased is hashed again: still the same file?
        )
        self.items = list(ingested.sealed)
        sealed = set(ingested.sealed)
        self.unread = [f.display_path for w, f in zip(ingested.items, evidence, strict=True)
                       if w.item not in sealed]
        self.progress.wiped += sum(1 for w in ingested.items if w.state == WIPED)
        self.kept_for_rooms = sorted({room for kept in ingested.kept_for for room in kept.members})
        outcome = _FROM_INGEST[ingested.outcome]
        if outcome is OffloadOutcome.DONE:
            rows = [_Wipe(w, f) for w, f in zip(ingested.items, evidence, strict=True)]
            try:
                outcome = await self._wipe_all(rows)
            except SourceGoneError as exc:
                self._error(None, "device", str(exc), None)
                outcome = OffloadOutcome.DEVICE_GONE
        if self.progress.errors and outcome is OffloadOutcome.DONE:
            outcome = OffloadOutcome.PARTIAL
        return self._result(outcome)

    def _record_refusals(self, refusals: list[tuple[str, str]], not_listed: int) -> None:
        """Every refused entry on the record, in one transaction (a hostile volume can hold many)."""
        entries: list[tuple[str, str | None, dict[str, Any]]] = [
            (EntryType.REFUSED, None, {"device_serial": self.device, "original": path, "reason": reason})
            for path, reason in refusals
        ]
        if not_listed:
            entries.append(
                (
                    EntryType.REFUSED,
                    None,
                    {"device_serial": self.device, "reason": f"{not_listed} more refused entries not listed"},
                )
            )
        self.repository.record_all(entries)
        if refusals or not_listed:
            self.status.publish(Refused(RefusalClass.FILE, len(refusals) + not_listed))
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
            self.awaiting_witness,
            list(self.unread),
            list(self.kept_for_rooms),
        )

    # -- wipe -------------------------------------------------------------------------------------

    def _finish_interrupted_wipes(self, listed: set[str]) -> None:
        """A crash between erasing a recorder file and committing `wiped` leaves the row in `wiping`
        with the file gone: record the erasure now, saying it was completed before the interruption."""
        for row in self.repository.acquisitions_in_state(SOURCE_KIND, self.device, WIPING):
            if row.key.original in listed:
                continue  # still on the recorder: the normal wipe pass erases it
            with self.repository.transaction():
                self.repository.moved_on(
                    row.item,
                    WIPED,
                    EntryType.WIPED,
                    {"device_serial": self.device, "original": row.key.original, "already_absent": True},
                )

    async def _wipe_all(self, rows: list[_Wipe]) -> OffloadOutcome:
        policy = self.config.wipe.policy
        if policy is WipePolicy.NEVER:
            return OffloadOutcome.DONE
        # The check before erasing re-reads every file: the bay shows it verifying (and waiting for
        # the central while it does).
        self._stage("verifying")
        if not self.config.offload.verify_reread:
            # Invariant 2: nothing is erased whose copy was not re-read and matched.
            self.repository.record(
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
        elif policy is WipePolicy.AFTER_WITNESS:
            rows = await self._only_witnessed(rows)
        for row in rows:
            if row.state not in (AcquisitionState.SEALED, WIPING):
                continue
            if not await self._thread(self.source.reachable):
                # Pulled out (or another recorder docked in its bay): erase nothing more.
                raise SourceGoneError(f"recorder volume {display_name(self.root)} is gone")
            try:
                checked = await self._verify_before_erasing(row)
                if checked is None:
                    continue
                if policy is WipePolicy.AFTER_WITNESS and row.state == AcquisitionState.SEALED:
                    checked["witnessed_seq"] = self.witnessed_seq  # the central's head that allowed it
                await self._wipe(row, checked)
            except OSError as exc:
                await self._raise_if_gone(exc)
                reason = f"{row.file.display_path}: cannot erase: {exc.strerror}"
                self._error(row.item, "wipe", reason, row.file)
        if self.awaiting_receipt:
            return OffloadOutcome.AWAITING_RECEIPT
        return OffloadOutcome.AWAITING_WITNESS if self.awaiting_witness else OffloadOutcome.DONE

    def _slot_released(self) -> AbstractAsyncContextManager[None]:
        """Waiting for the central uses no disk or USB: the bay's offload slot goes back meanwhile."""
        return self.slot.released() if self.slot is not None else contextlib.nullcontext()

    async def _only_witnessed(self, rows: list[_Wipe]) -> list[_Wipe]:
        """The rows that may be erased under after-witness: those whose `sealed` entry a head signed by
        the central covers (asking the uplink to push the ledger now and waiting up to
        `wipe.witness_wait_s`, without the offload slot). The `sealed` entry is the one to cover: it is
        the last entry about the item before erasure, and through the hash chain it covers the item's
        `acquired` and `verified` entries too, so the central holds the record of the acquisition, its
        hash and the manifest hash. The rest stay on the recorder, each with a ledger entry saying why."""
        waiting = [r for r in rows if r.state == AcquisitionState.SEALED]
        sealed_at = {r.item: self.repository.sealed_seq(r.item) for r in waiting}
        needed = max((seq for seq in sealed_at.values() if seq is not None), default=0)
        witnessed = 0
        if not waiting:
            reason = ""
        elif self.receipts is None:
            reason = "no central is configured to witness the acquisition (wipe policy after-witness)"
        else:
            self._stage("awaiting_receipt")
            async with self._slot_released():
                witnessed = await self.receipts.wait_witnessed(needed, self.config.wipe.witness_wait_s)
            self._stage("verifying")
            reason = (
                f"the central has not witnessed the ledger up to this item's sealed entry yet (witnessed "
                f"up to seq {witnessed}; wipe policy after-witness)"
            )
        self.witnessed_seq = witnessed
        covered = {item for item, seq in sealed_at.items() if seq is not None and seq <= witnessed}
        deferred = [r for r in waiting if r.item not in covered]
        self.repository.record_all(
            [
                (
                    EntryType.WIPE_DEFERRED,
                    row.item,
                    {
                        "device_serial": self.device,
                        "original": row.file.display_path,
                        "reason": reason,
                        "sealed_seq": sealed_at[row.item],
                        "witnessed_seq": witnessed,
                    },
                )
                for row in deferred
            ]
        )
        self.awaiting_witness = len(deferred)
        # `wiping` rows were covered before an interruption: finishing their erasure is safe.
        return [r for r in rows if r.state == WIPING or r.item in covered]

    async def _only_receipted(self, rows: list[_Wipe]) -> list[_Wipe]:
        """The rows that may be erased under after-receipt: those whose central receipt verified
        (waiting up to `wipe.receipt_wait_s` while the uplink works). The rest stay on the recorder,
        each with a ledger entry saying why."""
        waiting = [r for r in rows if r.state == AcquisitionState.SEALED]
        receipted: set[str] = set()
        if waiting and self.receipts is not None:
            self._stage("awaiting_receipt")
            async with self._slot_released():
                receipted = await self.receipts.wait_receipts(
                    [r.item for r in waiting], self.config.wipe.receipt_wait_s
                )
            self._stage("verifying")
        deferred = [r for r in waiting if r.item not in receipted]
        self.repository.record_all(
            [
                (
                    EntryType.WIPE_DEFERRED,
                    row.item,
                    {
                        "device_serial": self.device,
                        "original": row.file.display_path,
                        "reason": "no verified central receipt yet (wipe policy after-receipt)",
                    },
                )
                for row in deferred
            ]
        )
        self.awaiting_receipt = len(deferred)
        # `wiping` rows were receipted before an interruption: finishing their erasure is safe.
        return [r for r in rows if r.state == WIPING or r.item in receipted]

    async def _verify_before_erasing(self, row: _Wipe) -> dict[str, Any] | None:
        """Invariant 2, checked on the sealed artefact as stored, just before erasing the recorder's file.

        The stored copy is read from the disk (not the page cache) and must verify as sealed: the
        evidence box's (or sidecar's) manifest signed with the station's key as this process holds it
        (not the public key file beside the store, which whoever tampers could replace too), the
        prefix hashing to the manifest's hash and size, and the manifest the very one the ledger
        recorded at sealing. Then, always (whatever the wipe policy), the recorder's file is read
        again and must give the acquisition hash: the one read that was copied and hashed may have
        been a silent misread, and erasing is the step that cannot be undone. Only a second read
        already made in this docking by `[offload] reread_original` and proven to reach the device
        spares it. A read counts only when proven (its reader's `cache_bypass`): when the file's
        pages stay in the page cache (another process keeps it mapped) the erasure is deferred, a
        `wipe_deferred` entry says why and the file stays for the next docking. Returns what was
        checked, for the `wiped` entry, or None (nothing erased; an error or wipe_deferred entry
        names the item) when anything does not hold.
        """
        found = self.repository.item(row.item)
        what = row.file.display_path
        if found is None or found.path is None:
            self._error(row.item, "wipe", f"{what}: not erased: no stored item", row.file)
            return None
        if self.repository.purged(row.item):
            if not await self._reverify_source_only(row, found.sha256, found.size):
                return None
            return {"local_copy": "purged after the central's receipt", "source_reread": True}
        stored = self.store.layout.root / found.path
        report, problems = await self._sealed_copy_problems(row.item, stored)
        if problems:
            # The recorder still holds the file: a damaged stored copy is rebuilt from it (if it still
            # hashes to the item), then verified again like any other.
            damage = f"the sealed copy does not verify: {problems[0]}"
            if await self.pipeline.reacquire(self.source, row.work, damage, found_by="check before erasing"):
                report, problems = await self._sealed_copy_problems(row.item, stored)
        if problems or report.manifest is None:
            reason = problems[0] if problems else "no manifest"
            self._error(
                row.item, "wipe", f"{what}: not erased: the sealed copy of item {row.item} does not verify: "
                f"{reason}", row.file
            )
            return None
        checked: dict[str, Any] = {
            "stored": "embedded" if report.sealed else "sidecar",
            "stored_read": report.stored_read,
            "signature_key": report.manifest["signature"]["key_id"],  # it verified: the field is there
            "source_reread": row.work.source_read_now,
        }
        if row.state == AcquisitionState.SEALED and row.work.source_read_now:
            return checked  # the recorder's file was re-read and matched in this docking
        reopen = file_opener(self.source.volume, row.file, what=what)
        try:
            again, proof = await self._thread(hash_original, reopen, self.chunk)
        except AcquireError as exc:  # an OSError goes to the wipe loop: gone, or cannot erase
            self._error(row.item, "wipe", f"{what}: not erased, re-verification failed: {exc}", row.file)
            return None
        if (again.sha256, again.size) != (found.sha256, found.size):
            self._error(
                row.item,
                "wipe",
                f"{what}: not erased: the recorder's file read again gives {again.sha256} "
                f"({again.size} bytes), not the acquisition hash {found.sha256} ({found.size} bytes)",
                row.file,
            )
            return None
        if proof is None:
            self._defer_unproven(row)
            return None
        rechecked = {
            "sha256": found.sha256,
            "size": found.size,
            "stored_reread": True,
            "stored_read": report.stored_read,
            "source_reread": True,
            "source_read": str(proof),
            "purpose": "before erasing",
        }
        await self.pipeline.commit(lambda: self.repository.entry(EntryType.VERIFIED, row.item, rechecked))
        return {**checked, "source_reread": True}

    async def _sealed_copy_problems(self, item: str, stored: Path) -> tuple[SealedFileReport, list[str]]:
        """The sealed artefact as stored, read from the disk: what does not hold (see below)."""
        # Every key the ledger announced: an item sealed before `edge keys rotate` carries the old
        # key's signature, and the ledger's record of its sealed manifest (checked below) ties it down.
        report: SealedFileReport = await self._thread(
            verify_sealed_file,
            stored,
            self.repository.station_public_keys(),
            self.store.layout.sidecar(stored),
            from_disk=True,
        )
        problems = [p.what for p in report.problems]
        sealed_manifest = self.repository.sealed_manifest_sha256(item)
        if report.manifest is not None and (
            sealed_manifest is None or sha256_hex(canonical_json(report.manifest)) != sealed_manifest
        ):
            problems.append("its manifest is not the one the ledger recorded when it was sealed")
        if report.manifest is None and not problems:
            problems.append("no manifest")
        return report, problems

    async def _reverify_source_only(self, row: _Wipe, sha256: str, size: int) -> bool:
        """The local copy was purged after the central's verified receipt (retention): the central
        holds the evidence, so the recorder's file is erased only if it still hashes to it."""
        reopen = file_opener(self.source.volume, row.file, what=row.file.display_path)
        try:
            found, proof = await self._thread(hash_original, reopen, self.chunk)
        except AcquireError as exc:
            reason = f"{row.file.display_path}: not erased, re-verification failed: {exc}"
            self._error(row.item, "wipe", reason, row.file)
            return False
        if (found.sha256, found.size) != (sha256, size):
            self._error(
                row.item,
                "wipe",
                f"{row.file.display_path}: not erased: the recorder's file no longer matches the receipted "
                f"hash {sha256}",
                row.file,
            )
            return False
        if proof is None:
            self._defer_unproven(row)
            return False
        rechecked = {
            "sha256": sha256,
            "size": size,
            "stored_reread": False,
            "source_reread": True,
            "source_read": str(proof),
            "purpose": "before erasing; the local copy was purged after the central's receipt",
        }
        await self.pipeline.commit(lambda: self.repository.entry(EntryType.VERIFIED, row.item, rechecked))
        return True

    def _defer_unproven(self, row: _Wipe) -> None:
        """The read before erasing matched but was not proven to reach the device (pages of the file
        stayed in the page cache, mapped or locked by another process): not erased now, and not
        recorded as a device read. The file stays on the recorder; the next docking tries again."""
        reason = (
            "the read before erasing could not be proven to come from the recorder (pages of the file "
            "stayed in the station's page cache, kept by another process): not erased now, the next "
            "docking tries again"
        )
        log.warning("recorder %s: wipe: %s: %s", self.device, row.file.display_path, reason)
        data = {"device_serial": self.device, "original": row.file.display_path, "reason": reason}
        self.repository.record(EntryType.WIPE_DEFERRED, row.item, data)
        self._report()

    async def _wipe(self, row: _Wipe, checked: dict[str, Any]) -> None:
        if row.state == AcquisitionState.SEALED:
            await self.pipeline.commit(lambda: self.repository.change_state(row.item, WIPING))
            row.work.acquisition.state = WIPING

        # Only the very file hashed in this docking, on the very mount, is unlinked (see
        # `VolumeRoot.erase`); absent from that mount is absent, never "absent from the bay".
        erased_now = await self._thread(self.source.volume.erase, row.file)
        if not erased_now:
            # Absent because the volume is gone (its bay directory stays, empty) is not erased.
            absent = FileNotFoundError(errno.ENOENT, "not on the volume", row.file.display_path)
            await self._raise_if_gone(absent)
        wiped = {
            "device_serial": self.device,
            "original": row.file.display_path,
            "already_absent": not erased_now,
            "verified_before_erasing": checked,
        }
        await self.pipeline.commit(lambda: self.repository.moved_on(row.item, WIPED, EntryType.WIPED, wiped))
        row.work.acquisition.state = WIPED
        self.progress.wiped += 1
        self._report()
