"""The uplink: drains the spool to the central receiver while offloads go on, and checks receipts.

This is the uplink's core; the wire is a :class:`~edge.uplink.transport.Transport` chosen by
``[uplink] transport`` (:mod:`edge.uplink.transports`: tus over HTTPS, or MQTT). The core never sees a
status code or an offset: each transport call ends in one of the same outcomes (delivered, accepted with
a receipt, retry later, refused), and every decision below is taken on those.

Per item: upload of the original bytes (resumed where the central holds it after any failure) →
registration of the signed manifest together with the station's ledger entries the central has not yet
accepted → the receipt, verified here (tree-head signature by the central key pinned at enrollment,
inclusion proof of the item's leaf) → `receipt` ledger entry and a receipt sidecar. Only then may the
recorder's file be erased (wipe policy after-receipt) and, after the retention period, the local copy
purged.

Failures never lose anything: transient ones (central down, timeouts, 5xx) back off exponentially with
jitter per item and trip a circuit breaker that pauses all traffic; a ``Retry-After`` from the central
(or anyone answering for it) holds that item and the breaker's next probe until then, bounded by
``retry_after_max_s``. Evidence is never rejected by accident: a refusal is final for an item only when
its code is on the published list (``edge.custody.refusal.FINAL_ITEM_CODES``: mismatch, signature,
chain, conflict, too large) *and* the answer carries that refusal signed by the central key pinned at
enrollment, for this item (and this upload). A proxy's 400/413/502, an HTML page, a truncated or forged
JSON refusal is retried with backoff; a refusal that claims finality without a valid signature is also
put on the ledger once. A final refusal goes into the item's `error` ledger entry, signature included;
`edge uplink retry` requeues the item later (`edge.uplink.requeue`). An item's stored copy must still
give its recorded hash before the central holds all of it: a damaged copy is never sent whole (the
central would refuse it for good while its recorder may still hold the file); it is on the ledger once
and held, in state.db (`edge.uplink.spool.hold_stored_copy`: never retried, across restarts), until a
docking re-acquires it (`edge.ingest.pipeline.IngestPipeline.reacquire`), then sent at once, or an
operator releases it (`edge uplink retry ITEM`). A transport that checks the copy as it sends it (tus:
``Link.checks_content_on_send``) checks it on that pass, before the central holds it whole, and abandons
the upload (tus hashes each chunk, or sends the prefix digests recorded when the copy was verified, at
offload or by a re-acquisition's re-read, which the central checks against the bytes it receives); for
any other, the copy is read and hashed before its first byte is sent.

Witnessing (`edge.uplink.witness`): beside the items, the ledger tail goes to the central a few seconds
after new entries (erasures at once) and at shutdown, so the part of the ledger the central has not
witnessed stays short; every answer's witnessed head is checked and kept; every tree head the central
shows us (receipts, ledger answers, a periodic fetch) must be a consistent extension of the newest one
we hold, checked before a receipt is accepted. A failed check is an alarm that stops the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from edge.config.station import StationConfig
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import key_id_of, load_public_key
from edge.custody.ledger import EntryType, LedgerEntry, station_time_now
from edge.custody.problems import Problem
from edge.custody.receipt import verify_receipt
from edge.custody.refusal import FINAL_ITEM_CODES, LEDGER_FORK, verify_refusal
from edge.custody.seal import hash_prefix
from edge.durable.files import write_atomic
from edge.equipment.fleet import Fleet
from edge.equipment.fleet_report import fleet_report, fleet_report_v2
from edge.equipment.officer_sync import OfficerListSync
from edge.ingest.store import StationStore
from edge.observe.sink import NULL_SINK, CentralContact, Duration, DurationKind, StatusSink
from edge.runtime.clock import ClockTrust, station_clock_trust
from edge.runtime.retrylog import RetrySummary
from edge.runtime.supervise import wait_event
from edge.uplink.errors import UplinkFatal
from edge.uplink.policy import Backoff, BreakerState, CircuitBreaker, RateLimiter, UploadWindows
from edge.uplink.retention import PurgeBudget, RetentionClock, boot_clock
from edge.uplink.spool import Spool, SpoolEntry, UploadState, hold_stored_copy
from edge.uplink.transport import (
    UPLOAD_LOST,
    Accepted,
    ContentUnreadable,
    Delivered,
    LedgerAnswer,
    LedgerSegment,
    Link,
    NotDone,
    Parcel,
    Refused,
    RegisterOutcome,
    RetryLater,
    StoredCopyMismatch,
    Transport,
    UploadOutcome,
)
from edge.uplink.transports import transport_for
from edge.uplink.witness import BadWitnessDocument, CentralWitness

__all__ = ["UplinkFatal", "UplinkService", "UplinkStats", "receipt_path"]

log = logging.getLogger(__name__)

# Ledger entries per request (each with its checkpoint, ~260 bytes): bounds the request body whatever the
# backlog after a long outage, far below the central's max_json_body_mb.
LEDGER_BATCH = 2000
PURGE_INTERVAL_S = 60.0
# A fleet change is reported this long after the view that shows it (a docking's views make one report).
FLEET_REPORT_SETTLE_S = 1.0
# How long the reporter waits for the agent's first fleet view at the uplink's start.
FIRST_FLEET_WAIT_S = 30.0
IDLE_POLL_S = 5.0
# Codes after which registering again (after refreshing the central's view of our ledger) can work.
_RETRY_CODES = {"ledger_gap", "chain_unknown", "bad_checkpoint", "bad_chain"}
# Codes about the station itself, not the item: wait for an administrator (enroll, re-enroll) and retry.
_STATION_CODES = {"unknown_station", "station_revoked", "wrong_station", "unauthenticated", "forbidden"}
_REUPLOAD_CODES = {"upload_not_found", "upload_expired", "http_410", UPLOAD_LOST}
# Entries that go to the central at once rather than after the push delay: erasures above all.
_URGENT_ENTRIES = {EntryType.WIPED, EntryType.PURGED}
# Without any new entry the ledger is still compared with the central's this often.
LEDGER_PUSH_BACKSTOP_S = 60.0


@dataclass
class UplinkStats:
    uploaded: int = 0
    receipts: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    resumed: int = 0


def receipt_path(stored: Path) -> Path:
    return stored.with_name(stored.name + ".receipt.json")


class UplinkService:
    def __init__(
        self,
        config: StationConfig,
        store: StationStore,
        *,
        clock: Callable[[], float] = time.time,
        boot: Callable[[], float] = boot_clock,
        rng: random.Random | None = None,
        transport: Transport | None = None,
        status: StatusSink = NULL_SINK,
    ) -> None:
        """``transport`` overrides the one ``[uplink] transport`` names (tests, a composition root).
        ``clock`` is the wall clock and ``boot`` the time since boot (CLOCK_BOOTTIME): the retention
        purge believes the first only as far as the second and the ledger explain it. ``status`` hears
        of contact with the central and of upload times (the station's status board)."""
        self.status = status
        if not config.uplink.enabled:
            raise ValueError("the uplink needs [uplink] central_url")
        self.config = config
        self.uplink = config.uplink
        self.store = store
        self.spool = Spool(store)
        self.clock = clock
        self.stats = UplinkStats()
        key_path = self.uplink.pinned_key_path
        assert key_path is not None  # config validation guarantees it
        self.central_key = load_public_key(key_path)
        self._rng = rng or random.Random()
        self.backoff = Backoff(self.uplink.backoff_base_s, self.uplink.backoff_max_s, rng=self._rng)
        self.breaker = CircuitBreaker(self.uplink.breaker_failures, self.uplink.breaker_open_s, clock=clock)
        self.windows = UploadWindows.parse(self.uplink.windows)
        rate = self.uplink.bandwidth_mbit_s * 1_000_000 / 8
        self.limiter = RateLimiter(rate, clock=time.monotonic) if rate > 0 else None
        self._wake = asyncio.Event()
        # Retries are summarised in the log (a warning when failures begin, a summary at most every few
        # minutes, a line when they end), not one warning per attempt.
        self._upload_retries = RetrySummary(log, "uploads to the central")
        self._ledger_retries = RetrySummary(log, "ledger pushes to the central")
        self._receipt_event = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._register_lock = asyncio.Lock()
        self._central_head: tuple[int, str] | None = None
        self.boot = boot
        self._last_purge: float | None = None  # boot clock of the last purge pass
        self.retention_clock = RetentionClock(
            wall=clock,
            boot=boot,
            history_newest=self.spool.newest_entry_time_before_start(),
            max_downtime_s=self.uplink.purge_max_downtime_h * 3600,
        )
        self.purge_budget = PurgeBudget(self.uplink.purge_max_per_hour, boot=boot)
        # Why the purge stands refused now ("untrusted", "ahead"), so that it is on the ledger once.
        self._purge_refusal: str | None = None
        self._fatal: UplinkFatal | None = None
        self._bad_receipts: set[str] = set()
        self._unverified_refusals: set[tuple[str | None, str]] = set()
        self._bad_answers: set[str] = set()
        self._link: Link | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.witness = CentralWitness(store, config.station.id, self.central_key)
        self.officer_sync = OfficerListSync(store, self.central_key)
        self._officers_now = asyncio.Event()
        # The agent's fleet view, when it feeds the reports (follow_fleet, fleet_changed): version 2.
        self._fleet_followed = False
        self._fleet: Fleet | None = None
        self._fleet_changed = asyncio.Event()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._ledger_dirty = asyncio.Event()
        self._ledger_urgent = asyncio.Event()
        self.transport = transport or transport_for(config, self.limiter)
        # Set after every ledger push attempt and every verified receipt: the central may have witnessed
        # more of our ledger (after-witness waits on it). Attempts are numbered so that a waiter can tell
        # a push that started after it asked from one already under way.
        self._witness_event = asyncio.Event()
        self._push_started = 0
        self._push_finished: tuple[int, bool] = (0, True)

    def reconfigure(self, config: StationConfig) -> None:
        """A reloaded configuration whose ``[uplink]`` differs only in policy settings (the upload
        windows, concurrency, backoff, breaker thresholds, Retry-After bound, retention and the ledger
        push and tree-head timing; `edge.config.reload.UPLINK_LIVE_FIELDS`): they apply from the next
        decision, uploads in flight go on. The connection (central, identity, transport, chunk size,
        bandwidth, timeout) is fixed for the life of the service: the reload refuses a change to it."""
        uplink = config.uplink
        self.backoff = Backoff(uplink.backoff_base_s, uplink.backoff_max_s, rng=self._rng)
        self.breaker.failure_threshold = uplink.breaker_failures
        self.breaker.open_s = uplink.breaker_open_s
        self.windows = UploadWindows.parse(uplink.windows)
        self.config = config
        self.uplink = uplink
        self._wake.set()

    def __repr__(self) -> str:
        return (f"UplinkService(central={self.uplink.central_url!r}, station={self.config.station.id!r}, "
                f"transport={self.transport.name!r})")

    # -- what the offloads see (edge.sources.usb.offload.ReceiptGate) ---------------------------------

    def item_sealed(self, item: str) -> None:
        # Also told of a re-acquired item: the transaction that recorded it released its hold (spool).
        self._wake.set()

    async def wait_receipts(self, items: Sequence[str], timeout_s: float) -> set[str]:
        wanted = set(items)
        deadline = asyncio.get_running_loop().time() + timeout_s
        self._wake.set()
        while True:
            self._receipt_event.clear()
            done = self.spool.receipted(wanted)
            remaining = deadline - asyncio.get_running_loop().time()
            if done == wanted or remaining <= 0 or self._cannot_send_within(remaining):
                return done
            await wait_event(self._receipt_event, min(remaining, IDLE_POLL_S))

    async def wait_witnessed(self, seq: int, timeout_s: float) -> int:
        """Push the ledger now and wait until the central has witnessed it up to ``seq`` (wipe policy
        after-witness); returns the newest witnessed seq that verifies, which may be less. Gives up
        early when a push started after this call fails (the central is down: the recorder keeps its
        files until a later docking) or the uplink stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        begun = self._push_started
        self._ledger_dirty.set()
        self._ledger_urgent.set()
        while True:
            self._witness_event.clear()
            witnessed = self.witness.verified_witnessed_seq()
            remaining = deadline - loop.time()
            attempt, pushed = self._push_finished
            push_failed = attempt > begun and not pushed
            if witnessed >= seq or remaining <= 0 or self._fatal is not None or push_failed:
                return witnessed
            await wait_event(self._witness_event, min(remaining, IDLE_POLL_S))

    def _cannot_send_within(self, seconds: float) -> bool:
        """Waiting is pointless: the uplink stopped, or nothing may be sent before `seconds` pass
        (upload window closed, circuit open), so the bay is released at once."""
        if self._fatal is not None:
            return True
        now = datetime.now().astimezone()
        if not self.windows.is_open(now) and (self.windows.next_open(now) - now).total_seconds() > seconds:
            return True
        held = self.breaker.held_until
        if held is not None and held - self.clock() > seconds:
            return True  # the central asked for quiet longer than that (Retry-After)
        retry_at = self.breaker.retry_at
        return (
            self.breaker.state is BreakerState.OPEN
            and retry_at is not None
            and retry_at - self.clock() > seconds
        )

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until every sealed item is receipted or refused (the demo, tests); False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.spool.pending_count():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._receipt_event.clear()
            self._wake.set()
            await wait_event(self._receipt_event, min(remaining, 0.5))
        return True

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (a supervised task). Raises :class:`UplinkFatal` at once while a witness
        alarm stands: it is on the ledger, so a restart does not forget it."""
        if self.witness.alarm is not None:
            self._stop(UplinkFatal(f"witness alarm: {self.witness.alarm}"))
        self._event_loop = asyncio.get_running_loop()
        self.store.ledger.add_listener(self._ledger_appended)
        self._ledger_dirty.set()  # compare with the central at start: a previous run may not have
        try:
            async with self.transport.connect() as link:
                self._link = link
                try:
                    await _first_failure(
                        self._loop(link), self._ledger_pusher(link), self._tree_head_poller(link),
                        self._officer_list_poller(link), self._fleet_reporter(link),
                    )
                except UplinkFatal as exc:
                    self._stop(exc)
                finally:
                    tasks = list(self._in_flight.values())
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    self._link = None
        finally:
            self.store.ledger.remove_listener(self._ledger_appended)
            self._event_loop = None

    def _stop(self, exc: UplinkFatal) -> NoReturn:
        """Stop for good: docked recorders stop waiting for receipts at once, and `exc` is raised."""
        self._fatal = exc
        self._receipt_event.set()
        self._witness_event.set()
        raise exc

    async def _loop(self, link: Link) -> None:
        while True:
            if self._fatal is not None:
                raise self._fatal
            self._wake.clear()
            self.spool.enqueue_sealed()
            await self._purge_if_due()
            delay = self._pause_s()
            if delay is None:
                free = self.uplink.concurrency - len(self._in_flight)
                if self.breaker.state is not BreakerState.CLOSED:
                    free = min(free, 1)  # one probe while the central may still be down
                if free > 0:
                    for entry in self.spool.due(self.clock(), self._in_flight, free):
                        task = asyncio.create_task(self._send(link, entry), name=f"upload-{entry.item}")
                        self._in_flight[entry.item] = task
                        task.add_done_callback(functools.partial(self._done, entry.item))
                next_due = self.spool.next_due_s(exclude=self._in_flight)
                if next_due is None or len(self._in_flight) >= self.uplink.concurrency:
                    delay = IDLE_POLL_S  # a finishing upload wakes the loop (`_done`)
                else:
                    delay = max(0.05, min(IDLE_POLL_S, next_due - self.clock()))
            await wait_event(self._wake, delay)

    def _done(self, item: str, _task: asyncio.Task[None]) -> None:
        task = self._in_flight.pop(item, None)
        self._wake.set()
        if task is not None and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("upload of %s stopped: %s", item, exc)
            # A fork stops the uplink: the loop raises it, and the supervisor reports it.
            self._fatal = exc if isinstance(exc, UplinkFatal) else self._fatal

    def _pause_s(self) -> float | None:
        """Seconds to wait before sending anything, or None when uploads may run now."""
        now = datetime.now().astimezone()
        if not self.windows.is_open(now):
            return max(1.0, min(60.0, (self.windows.next_open(now) - now).total_seconds()))
        if not self.breaker.allow():
            return max(0.05, (self.breaker.retry_at or self.clock()) - self.clock())
        return None

    # -- one item ---------------------------------------------------------------------------------

    async def _send(self, link: Link, entry: SpoolEntry) -> None:
        upload = entry.upload_url
        try:
            if entry.state is UploadState.QUEUED:
                if not link.checks_content_on_send:
                    await self._check_stored_copy(entry)
                # A re-acquisition recorded after this replaced the copy being sent (hold_stored_copy).
                sending_after = self.store.ledger.head()[0]
                try:
                    sent = await self._upload(link, entry)
                except StoredCopyMismatch as exc:
                    # The transport abandoned that upload: the next attempt starts a new one. It says how it
                    # found the copy changed: hashing as it sent, or from the central's refusal of a chunk.
                    self.spool.set_upload_url(entry.item, None)
                    how = {} if exc.refused_at is None else {"refused_chunk_at": exc.refused_at}
                    self._stored_copy_damaged(entry, exc.found, exc.found_by, checked_after=sending_after,
                                              **how)
                if not isinstance(sent, Delivered):
                    self._upload_failed(entry, sent)
                    return
                upload = sent.upload
            assert upload is not None
            try:
                outcome = await self._register(link, entry, upload)
            except NotDone as exc:  # the ledger segment that goes first did not get through
                outcome = exc.outcome
            if isinstance(outcome, Accepted):
                if await self._receipt_holds(link, entry, outcome.receipt):
                    self._accept_receipt(entry, outcome.receipt)
                self.breaker.record_success()
                self.status.publish(CentralContact(reachable=True))
            else:
                self._registration_failed(entry, outcome, upload=upload)
        except NotDone as exc:  # while checking the receipt's tree head against the newest we hold
            self._transient(entry, str(exc), retry_after_s=exc.retry_after_s)
        except (ContentUnreadable, OSError) as exc:
            # The stored copy cannot be read (or the receipt not written): the local store needs a
            # human. Nothing is final about that: retry slowly, and keep it in the log. (A transport
            # turns every failure of its wire into an outcome: an OSError here is local.)
            log.error("item %s: local store problem: %s", entry.item, exc)
            self._transient(entry, f"local store: {exc}", count_for_breaker=False, at_least_s=60.0)
        except UplinkFatal:
            raise
        except BadWitnessDocument as exc:
            self._transient(entry, f"the central's answer does not verify: {exc}")
        except Exception as exc:  # never let one item spin the loop or kill the uplink
            log.exception("item %s: unexpected %s", entry.item, type(exc).__name__)
            self._transient(entry, f"unexpected {type(exc).__name__}: {exc}", at_least_s=60.0)

    async def _check_stored_copy(self, entry: SpoolEntry) -> None:
        """Before the first byte is sent, the stored copy must still give the recorded hash: a damaged
        copy would be refused by the central for good, while its recorder may still hold the file. A
        damaged copy is on the ledger once (`error`, stage `stored copy`) and held: not sent again until
        the next docking of a recorder that still holds the file re-acquires it
        (:meth:`edge.ingest.pipeline.IngestPipeline.reacquire`), which sends it again at once, or an
        operator releases it (`edge uplink retry ITEM`)."""
        checked_after = self.store.ledger.head()[0]
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, _prefix_sha256, entry.path, entry.size)
        if found != entry.sha256:
            self._stored_copy_damaged(entry, found, "uplink before sending", checked_after=checked_after)

    def _stored_copy_damaged(
        self, entry: SpoolEntry, found: str, found_by: str, *, checked_after: int = 0, **facts: Any
    ) -> NoReturn:
        """On the ledger once (`error`, stage `stored copy`, with ``facts`` of how it was found) and held
        in state.db in the same transaction (edge.uplink.spool.hold_stored_copy): not sent again until
        re-acquired or released by an operator, across restarts. ``checked_after``: the ledger head when
        the copy began to be read (a re-acquisition recorded after it replaced that copy: not held).
        Raises :class:`ContentUnreadable`."""
        reason = (
            f"item {entry.item}: the stored copy gives {found}, its recorded hash is {entry.sha256}: not sent"
        )
        data = {
            "stage": "stored copy",
            "reason": reason,
            "found_by": found_by,
            "action": "held until re-acquired from its recorder",
            **facts,
        }
        if hold_stored_copy(self.store, entry.item, data, checked_after=checked_after) is not None:
            log.error("%s; held until re-acquired or released (edge uplink retry)", reason)
        raise ContentUnreadable(reason)

    async def _upload(self, link: Link, entry: SpoolEntry) -> UploadOutcome:
        parcel = Parcel(
            item=entry.item,
            sha256=entry.sha256,
            size=entry.size,
            path=entry.path,
            original_name=entry.original_name,
            resume=entry.upload_url,
            # The checksums the verification re-read recorded: the copy is not hashed again to send it.
            prefix_digests=self.spool.prefix_digests(entry),
            forget_prefix_digests=functools.partial(self.spool.forget_prefix_digests, entry.item),
        )
        # The resume reference is made durable as soon as the transport has one: after a crash or a
        # restart the upload resumes where the central holds it, never from zero.
        started = time.monotonic()
        outcome = await link.upload(parcel, lambda upload: self.spool.set_upload_url(entry.item, upload))
        if isinstance(outcome, Delivered):
            self.status.publish(Duration(DurationKind.UPLOAD, time.monotonic() - started, outcome.bytes_sent))
            self.spool.mark_uploaded(entry.item, outcome.upload, outcome.bytes_sent, outcome.resumed_from)
            self.stats.uploaded += 1
            self.stats.bytes_sent += outcome.bytes_sent
            if outcome.resumed_from:
                self.stats.resumed += 1
        return outcome

    def _upload_failed(self, entry: SpoolEntry, outcome: RetryLater | Refused) -> None:
        """The content did not get through: retry, start again, or (signed) reject."""
        if isinstance(outcome, RetryLater):
            self._transient(entry, outcome.reason, retry_after_s=outcome.retry_after_s)
            return
        if outcome.code in _REUPLOAD_CODES:
            # e.g. a stored upload reference the configured central cannot continue: start afresh.
            log.warning("item %s: %s; starting the upload again", entry.item, outcome)
            retry_at = self.clock() + self.backoff.next_delay(entry.attempts + 1)
            self.spool.requeue(entry.item, str(outcome), retry_at)
            self._wake.set()
            return
        # Only the central's signed too_large (the item is beyond its maximum upload size) is final
        # here: a proxy's 413 or 400, whatever its body, is retried.
        refusal = self._verified_refusal(entry, outcome.code, outcome.refusal, upload=outcome.upload,
                                         stage="upload")
        if refusal is not None:
            self._reject(entry, "upload", outcome.code, outcome.detail, refusal, upload_url=None)
        else:
            # One item's refusal says nothing about the central's health: not counted by the breaker.
            self._transient(entry, f"refused: {outcome}", count_for_breaker=False)

    async def _register(self, link: Link, entry: SpoolEntry, upload: str) -> RegisterOutcome:
        """Register delivered content; raises :class:`NotDone` when the ledger segment that must go first
        does not get through."""
        async with self._register_lock:
            for attempt in range(3):
                head = self._central_head or await self._central_state(link)
                self._check_no_fork(head)
                head = await self._send_segments(link, head, keep=LEDGER_BATCH)
                segment = self._segment_after(head[0], LEDGER_BATCH)
                outcome = await link.register(upload, entry.manifest, segment)
                if isinstance(outcome, Refused) and outcome.code in ("ledger_gap", "ledger_fork",
                                                                     "chain_unknown") and attempt < 2:
                    self._central_head = None  # our view of the central's head was stale
                    continue
                if isinstance(outcome, Accepted) and segment is not None:
                    last = segment.entries[-1]
                    self._central_head = (last.seq, last.hash)
                return outcome
        return RetryLater("registration did not settle after refreshing the ledger head")

    def _check_no_fork(self, head: tuple[int, str]) -> None:
        seq, hash_hex = head
        if seq == 0:
            return
        row = self.store.conn.execute("SELECT hash FROM ledger WHERE seq=?", (seq,)).fetchone()
        if row is None or row[0] != hash_hex:
            found = "nothing" if row is None else row[0]
            raise UplinkFatal(
                f"the central holds ledger seq {seq} with hash {hash_hex}, this station has {found}: "
                "the ledgers forked; uploads stop until an administrator investigates"
            )

    async def _send_segments(self, link: Link, head: tuple[int, str], *, keep: int) -> tuple[int, str]:
        """Bring the central's copy of our ledger to within ``keep`` entries of our head (0: all of it).
        Raises :class:`NotDone` when a segment does not get through."""
        while self.store.ledger.head()[0] - head[0] > keep:
            segment = self._segment_after(head[0], LEDGER_BATCH)
            assert segment is not None
            last = segment.entries[-1]
            try:
                answer = await link.push_ledger(segment)
            except NotDone as exc:
                refused = exc.outcome
                if isinstance(refused, Refused):
                    if refused.code == LEDGER_FORK and self._fork_is_signed(refused):
                        raise UplinkFatal(f"the central reports a ledger fork: {refused.detail}") from None
                    if refused.code in ("ledger_gap", "chain_unknown"):
                        self._central_head = None  # our view of the central's head was stale
                raise
            if answer.head != (last.seq, last.hash):
                raise NotDone(RetryLater(
                    f"the central answered ledger head {answer.head} to a segment ending at seq {last.seq}"
                ))
            head = answer.head
            self._central_head = head
            await self._take_answer(link, answer, "ledger_push")
        return head

    async def _central_state(self, link: Link) -> tuple[int, str]:
        """The central's accepted head of our ledger, with its witnessed head and tree head checked."""
        answer = await link.ledger_state()
        await self._take_answer(link, answer, "ledger_head")
        return answer.head

    async def _take_answer(self, link: Link, answer: LedgerAnswer, source: str) -> None:
        """Check what came with an answer about our ledger; raises UplinkFatal on a witness alarm.

        A signed document that does not verify is put on the record (once) and otherwise ignored: the
        head only tells what to send next, the central checks continuity, and nothing is erased on
        anything but a receipt that verifies.
        """
        self.witness.check_accepted_head(answer.seq, answer.hash)
        try:
            if answer.witnessed_head is not None:
                self.witness.accept_witnessed_head(answer.witnessed_head, source)
            if answer.tree_head is not None:
                await self._observe_tree_head(link, answer.tree_head, source)
        except BadWitnessDocument as exc:
            reason = f"the central's answer ({source}) does not verify: {exc}"
            log.error("%s", reason)
            if reason not in self._bad_answers:
                self._bad_answers.add(reason)
                self.store.record("error", None, {"stage": "witness", "code": "bad_witness",
                                                  "reason": reason[:1000]})

    async def _observe_tree_head(self, link: Link, doc: object, source: str) -> None:
        await self.witness.observe_tree_head(doc, source, link.consistency, link.tree_head)

    # -- witnessing: the ledger tail and the central's tree heads ---------------------------------

    def _ledger_appended(self, entry: LedgerEntry) -> None:
        """A ledger listener: may run in a worker thread, inside the appender's transaction."""
        loop = self._event_loop
        if loop is None or loop.is_closed():
            return
        urgent = entry.type in _URGENT_ENTRIES

        def mark() -> None:
            if urgent:
                self._ledger_urgent.set()
            self._ledger_dirty.set()

        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(mark)

    async def _ledger_pusher(self, link: Link) -> None:
        """Push the ledger tail a few seconds after new entries (erasures at once), independent of items."""
        failures = 0
        while True:
            await wait_event(self._ledger_dirty, LEDGER_PUSH_BACKSTOP_S)
            if not self._ledger_urgent.is_set():
                await wait_event(self._ledger_urgent, self.uplink.ledger_push_delay_s)
            self._ledger_dirty.clear()
            self._ledger_urgent.clear()
            self._push_started += 1
            attempt = self._push_started
            try:
                await self.push_ledger(link)
                failures = 0
                self._pushed(attempt, True)
                self._ledger_retries.succeeded(station=self.config.station.id)
            except (NotDone, BadWitnessDocument) as exc:
                self._pushed(attempt, False)
                failures += 1
                asked = self._honour_retry_after(getattr(exc, "retry_after_s", None))
                delay = max(asked, self.backoff.next_delay(failures))
                self._ledger_retries.failed(f"{exc}; again in {delay:.1f} s", station=self.config.station.id)
                self._ledger_dirty.set()
                await wait_event(self._ledger_urgent, delay)

    def _pushed(self, attempt: int, ok: bool) -> None:
        self._push_finished = (attempt, ok)
        self.status.publish(CentralContact(reachable=ok))
        self._witness_event.set()

    async def push_ledger(self, link: Link) -> tuple[int, str]:
        """Send every ledger entry the central does not hold yet; returns its accepted head."""
        async with self._register_lock:
            head = self._central_head or await self._central_state(link)
            self._check_no_fork(head)
            return await self._send_segments(link, head, keep=0)

    async def flush_ledger(self, timeout_s: float | None = None) -> bool:
        """At shutdown (after the uplink stopped): one last push, bounded in time; False when it failed."""
        if self.witness.alarm is not None or not self.uplink.enabled:
            return False
        limit = self.uplink.ledger_push_shutdown_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit), self.transport.connect() as link:
                head = await self.push_ledger(link)
        except (UplinkFatal, NotDone, BadWitnessDocument, TimeoutError, OSError) as exc:
            log.warning("the last ledger push at shutdown failed: %s", exc)
            return False
        log.info("ledger pushed at shutdown: the central holds seq %d", head[0])
        return True

    async def _tree_head_poller(self, link: Link) -> None:
        """Fetch the central's tree head now and then and check the log only grew."""
        while True:
            try:
                await self._observe_tree_head(link, await link.tree_head(), "tree_head")
            except (NotDone, BadWitnessDocument) as exc:
                log.warning("central tree head not checked: %s", exc)
            await asyncio.sleep(self.uplink.tree_head_interval_s)

    def fetch_officer_list_now(self) -> dict[str, Any]:
        """The central's `officers-sync` command: fetch at once rather than at the next poll. The version
        in force now (the fetch's outcome is the `officers_synced` or `refused` entry that follows)."""
        self._officers_now.set()
        return {"officers_version": self.officer_sync.current_version(),
                "fetch": "requested" if self._link is not None else "at the next connection to the central"}

    async def _officer_list_poller(self, link: Link) -> None:
        """Ask the central for a newer officer list now (a station back after days catches up at once) and
        then every ``officers_interval_s`` or when the central asks (`officers-sync`); apply it
        (edge.equipment.officer_sync: verified, never older)."""
        while True:
            self._officers_now.clear()
            try:
                answer = await link.officers(self.officer_sync.current_version())
                if answer.get("list") is not None:
                    source = f"central {self.uplink.central_url or self.transport.name}"[:200]
                    self.officer_sync.offer(answer["list"], source=source)
            except NotDone as exc:
                log.warning("officer list not fetched from the central: %s", exc)
            await wait_event(self._officers_now, self.uplink.officers_interval_s)

    def follow_fleet(self) -> None:
        """The agent's fleet view feeds the fleet reports (version 2, edge.equipment.fleet_report): the
        reporter waits for the first view (`fleet_changed`) rather than send one from the assignments."""
        self._fleet_followed = True

    def fleet_changed(self, fleet: Fleet) -> None:
        """Each fresh fleet view (on the event loop): reported soon when it differs from the last one sent."""
        self._fleet = fleet
        self._fleet_changed.set()

    def fleet_report_now(self, *, version_1: bool = False) -> dict[str, Any]:
        """The report as it would go now: from the fleet view when the agent has one, else (the uplink
        without the agent, or before its first view, or ``version_1``) from the assignments table."""
        version = self.officer_sync.current_version()
        if self._fleet is not None and not version_1:
            return fleet_report_v2(self._fleet, station=self.config.station.id, officers_version=version)
        return fleet_report(self.store.conn, station=self.config.station.id, at=station_time_now(),
                            officers_version=version)

    async def _fleet_reporter(self, link: Link) -> None:
        """Report the station's recorders to the central at start, `FLEET_REPORT_SETTLE_S` after a fleet
        view that differs from the one last sent (a check-out, a return, a docking, a recorder falling
        overdue), and every ``fleet_report_interval_s`` in any case (the central sees the station alive)."""
        loop = asyncio.get_running_loop()
        if self._fleet_followed and self._fleet is None:
            # The agent's first view comes moments after its start: report that, not the assignments.
            first_wait_s = min(self.uplink.fleet_report_interval_s, FIRST_FLEET_WAIT_S)
            await wait_event(self._fleet_changed, first_wait_s)
        sent: dict[str, Any] | None = None
        attempted: float | None = None
        version_1 = False  # the central refused version 2 (one not upgraded yet): for this connection
        while True:
            self._fleet_changed.clear()
            report = self.fleet_report_now(version_1=version_1)
            content = {key: value for key, value in report.items() if key != "at"}
            interval = self.uplink.fleet_report_interval_s
            if attempted is None or loop.time() - attempted >= interval or content != sent:
                attempted = loop.time()
                try:
                    await link.fleet_report(report)
                    sent = content
                except NotDone as exc:
                    refused = exc.outcome
                    if report.get("version") == 2 and isinstance(refused, Refused) \
                            and refused.code == "bad_request":
                        log.warning("the central refused fleet report version 2 (%s): sending version 1, "
                                    "from the assignments, until the uplink reconnects", exc)
                        version_1 = True
                        attempted = None
                        continue
                    log.warning("fleet report not sent to the central: %s", exc)
            await wait_event(self._fleet_changed, max(0.0, interval - (loop.time() - attempted)))
            if self._fleet_changed.is_set():
                # A docking's burst of views makes one report, and a failing central one attempt a moment.
                await asyncio.sleep(FLEET_REPORT_SETTLE_S)

    def _segment_after(self, seq: int, limit: int) -> LedgerSegment | None:
        """Up to ``limit`` entries after ``seq`` with a checkpoint at the last of them; None when none."""
        entries: list[LedgerEntry] = []
        for entry in self.store.ledger.entries(seq + 1):
            entries.append(entry)
            if len(entries) >= limit:
                break
        if not entries:
            return None
        with self.store.transaction():
            checkpoint = self.store.ledger.checkpoint(at_seq=entries[-1].seq)
            signed = self.store.ledger.checkpoints(entries[0].seq, entries[-1].seq)
        assert checkpoint is not None  # the ledger holds entries[-1]
        return LedgerSegment(entries, checkpoint, signed)

    async def _receipt_holds(self, link: Link, entry: SpoolEntry, receipt: dict[str, Any]) -> bool:
        """Verify a receipt before anything relies on it: its signatures and proof, its manifest, and
        (witnessing) its tree head against the newest we hold and its witnessed head against our ledger.
        False (and the item deferred) when it does not verify; a witness alarm raises UplinkFatal."""
        problems = verify_receipt(
            receipt,
            self.central_key,
            expected_item=entry.item,
            expected_sha256=entry.sha256,
            expected_station=self.config.station.id,
        )
        leaf = receipt.get("leaf")
        manifest_sha256 = sha256_hex(canonical_json(entry.manifest))
        if not problems and isinstance(leaf, dict) and leaf.get("manifest_sha256") != manifest_sha256:
            problems = [
                Problem(
                    "receipt leaf",
                    f"names manifest {str(leaf.get('manifest_sha256'))[:64]!r}, ours is {manifest_sha256}",
                )
            ]
        if problems:
            # Never erase or purge on a receipt that does not verify; ask again later (a replay returns
            # a fresh proof), and keep the reason in the ledger.
            reason = "; ".join(str(p) for p in problems[:3])
            log.error("item %s: the central's receipt does not verify: %s", entry.item, reason)
            if entry.item not in self._bad_receipts:  # on the record once, not at every retry
                self._bad_receipts.add(entry.item)
                self.store.record(
                    "error", entry.item, {"stage": "receipt", "code": "bad_receipt", "reason": reason[:1000]}
                )
            self._transient(entry, f"receipt does not verify: {reason}")
            return False
        await self._observe_tree_head(link, receipt["tree_head"], "receipt")
        if "witnessed_head" in receipt:
            self.witness.accept_witnessed_head(receipt["witnessed_head"], "receipt")
        return True

    def _accept_receipt(self, entry: SpoolEntry, receipt: dict[str, Any]) -> None:
        tree_head = receipt["tree_head"]
        write_atomic(receipt_path(entry.path), canonical_json(receipt) + b"\n")
        self.spool.mark_receipted(
            entry.item,
            receipt,
            {
                "central": tree_head["origin"],
                "central_key_id": key_id_of(self.central_key),
                "leaf_index": receipt["leaf_index"],
                "tree_size": receipt["tree_size"],
                "root_hash": tree_head["root_hash"],
                "tree_head_time": tree_head["time"],
                "sha256": entry.sha256,
                "verified": True,
                **({"witnessed_seq": receipt["witnessed_head"]["seq"]} if "witnessed_head" in receipt
                   else {}),
            },
        )
        self.stats.receipts += 1
        self._upload_retries.succeeded(item=entry.item, station=self.config.station.id)
        self._receipt_event.set()
        self._witness_event.set()
        log.info(
            "item %s: receipt verified (leaf %s of %s)",
            entry.item,
            receipt["leaf_index"],
            receipt["tree_size"],
        )

    def _transient(
        self,
        entry: SpoolEntry,
        reason: str,
        *,
        count_for_breaker: bool = True,
        at_least_s: float = 0.0,
        retry_after_s: float | None = None,
    ) -> None:
        if count_for_breaker:
            self.breaker.record_failure()
            self.status.publish(CentralContact(reachable=False))
        asked = self._honour_retry_after(retry_after_s)
        delay = max(at_least_s, asked, self.backoff.next_delay(entry.attempts + 1))
        self._upload_retries.failed(f"item {entry.item}: {reason}; retrying in {delay:.1f} s",
                                    item=entry.item, station=self.config.station.id)
        self.spool.defer(entry.item, reason, self.clock() + delay)

    def _honour_retry_after(self, retry_after_s: float | None) -> float:
        """Seconds the central (or whoever answered for it) asked for, bounded by ``retry_after_max_s``;
        the breaker lets nothing through before then, not even its probe. 0.0 when nothing was asked."""
        if retry_after_s is None:
            return 0.0
        wait = min(max(0.0, retry_after_s), self.uplink.retry_after_max_s)
        if wait > 0:
            self.breaker.hold_until(self.clock() + wait)
        return wait

    def _verified_refusal(
        self, entry: SpoolEntry, code: str, refusal: dict[str, Any] | None, *, upload: str | None, stage: str
    ) -> dict[str, Any] | None:
        """The refusal, when ``code`` is final for an item and the central signed exactly that (this
        station, this item, this upload, this code) with the pinned key; None otherwise. A claim of
        finality that does not verify is logged, and put on the ledger once per item and code."""
        if code not in FINAL_ITEM_CODES:
            return None
        if refusal is None:
            reason = "the answer carries no signed refusal"
        else:
            problems = verify_refusal(
                refusal, self.central_key, station=self.config.station.id, item=entry.item, code=code,
                upload=upload,
            )
            if not problems:
                return refusal
            reason = "; ".join(str(problem) for problem in problems[:3])
        self._unverified(entry.item, stage, code, reason)
        return None

    def _fork_is_signed(self, refused: Refused) -> bool:
        """A ledger fork stops the uplink only when the central signed it: anyone else's word is retried."""
        if refused.refusal is None:
            reason = "the answer carries no signed refusal"
        else:
            problems = verify_refusal(
                refused.refusal, self.central_key, station=self.config.station.id, item=None,
                code=LEDGER_FORK, upload=None,
            )
            if not problems:
                return True
            reason = "; ".join(str(problem) for problem in problems[:3])
        self._unverified(None, "ledger", LEDGER_FORK, reason)
        return False

    def _unverified(self, item: str | None, stage: str, code: str, reason: str) -> None:
        log.error("%s: a %s refusal that the central did not sign (%s); it is retried, not taken as final",
                  f"item {item}" if item else "ledger", code, reason)
        if (item, code) not in self._unverified_refusals:  # on the record once, not at every retry
            self._unverified_refusals.add((item, code))
            self.store.record("error", item, {"stage": stage, "code": "unverified_refusal", "refused": code,
                                              "reason": reason[:1000]})

    def _reject(
        self,
        entry: SpoolEntry,
        stage: str,
        code: str,
        detail: str,
        refusal: dict[str, Any],
        *,
        upload_url: str | None,
    ) -> None:
        log.error("item %s: the central refused it (signed): %s: %s", entry.item, code, detail)
        self.spool.mark_rejected(entry.item, stage, code, detail, refusal=refusal)
        self.stats.rejected += 1
        self._abandon_upload(upload_url)

    def _registration_failed(
        self, entry: SpoolEntry, outcome: RetryLater | Refused, *, upload: str | None = None
    ) -> None:
        """Registration (or the ledger segment before it) did not end in a receipt: decide what the
        outcome means for the item. ``upload`` is the delivered content's resume reference."""
        upload = upload if upload is not None else entry.upload_url
        if isinstance(outcome, RetryLater):
            self._transient(entry, outcome.reason, retry_after_s=outcome.retry_after_s)
            return
        retry_at = self.clock() + self.backoff.next_delay(entry.attempts + 1)
        if outcome.code == LEDGER_FORK:
            # About the station, not the item: the item stays queued for when the fork is resolved.
            self._transient(entry, str(outcome), count_for_breaker=False)
            if self._fork_is_signed(outcome):
                raise UplinkFatal(f"the central reports a ledger fork: {outcome.detail}")
        elif outcome.code == "upload_incomplete":
            # The central holds less than we thought: resume the same upload from its offset.
            self.spool.resume_upload(entry.item, str(outcome), retry_at)
        elif outcome.code in _REUPLOAD_CODES:
            self.spool.requeue(entry.item, str(outcome), retry_at)
            self._wake.set()
        elif outcome.code in _RETRY_CODES:
            self._transient(entry, str(outcome), count_for_breaker=False)
        elif outcome.code in _STATION_CODES or outcome.station_level:
            # Station-level refusals (enrollment, revocation, a wrong path or a proxy) say nothing
            # about this item: wait for an administrator and try again.
            log.error("the central refuses this station's request: %s", outcome)
            self._transient(entry, str(outcome))
        else:
            refusal = self._verified_refusal(entry, outcome.code, outcome.refusal, upload=outcome.upload,
                                             stage="register")
            if refusal is not None:
                self._reject(entry, "register", outcome.code, outcome.detail, refusal, upload_url=upload)
            else:
                # A code that is not final, or a final one nobody signed: a proxy's answer (400, 413, an
                # HTML page), a garbled body, or a forgery. Never held against the evidence.
                self._transient(entry, str(outcome), count_for_breaker=False)

    def _abandon_upload(self, upload: str | None) -> None:
        """Best effort: tell the central to drop the content of a refused item."""
        if upload and self._link is not None:
            task = asyncio.create_task(self._link.abandon(upload))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- retention --------------------------------------------------------------------------------

    async def _purge_if_due(self) -> None:
        if self._last_purge is not None and self.boot() - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = self.boot()
        await self.purge_pass()

    async def purge_pass(self) -> list[str]:
        """One pass of the retention purge (every PURGE_INTERVAL_S from the loop). When the wall clock
        says copies are due: nothing while the station clock is not trusted; receipts count as elapsed
        only up to what the boot clock and the ledger make plausible (:mod:`edge.uplink.retention`); at
        most the hourly budget. A refusal is logged and on the ledger once, not per item nor per pass."""
        retention_days = self.uplink.retention_days
        if retention_days is None:
            return []
        retention_s = retention_days * 86400
        if not self.spool.purge_due(retention_s, datetime.fromtimestamp(self.clock(), UTC)):
            return []  # nothing due even by the wall clock: nothing to trust it for
        trust: ClockTrust = await asyncio.to_thread(
            station_clock_trust, self.config.station.clock, self.config.time_sync
        )
        if not trust.trusted:
            self._refuse_purge("untrusted", f"station clock not trusted ({trust.source}: {trust.reason}): "
                               "no local copy is purged", {"station_clock": trust.as_dict()})
            return []
        when = self.retention_clock.purge_time()
        if when.refusal is not None:
            self._refuse_purge("ahead", when.refusal, {"purge_until": when.until})
        elif self._purge_refusal is not None:
            log.info("retention purge: the station clock is trusted and plausible again")
            self._purge_refusal = None
        budget = self.purge_budget.available()
        purged = self.purge(retention_s, now=when.until, limit=budget)
        self.purge_budget.spend(len(purged))
        return purged

    def _refuse_purge(self, kind: str, reason: str, facts: dict[str, Any]) -> None:
        if self._purge_refusal == kind:
            return
        self._purge_refusal = kind
        log.error("retention purge refused: %s", reason)
        self.store.record(EntryType.ERROR, None, {"stage": "retention", "reason": reason, **facts})

    def purge(self, retention_s: float, *, now: float | None = None, limit: int | None = None) -> list[str]:
        """Delete local copies whose receipt verified at least `retention_s` before `now` (epoch s, by
        default the wall clock), at most `limit` of them; the manifest sidecar, the receipt and every
        ledger entry stay, so the item remains provable against the central."""
        purged: list[str] = []
        moment = datetime.fromtimestamp(self.clock() if now is None else now, UTC)
        due = self.spool.purge_due(retention_s, moment)
        for item, stored in due if limit is None else due[: max(limit, 0)]:
            if not self.spool.receipted([item]):
                continue  # belt and braces: never purge what the central has not receipted
            relative = str(stored.relative_to(self.store.layout.root))
            try:
                stored.unlink()
                already_absent = False
            except FileNotFoundError:
                already_absent = True  # removed before a crash, before its ledger entry
            except OSError as exc:
                log.error("item %s: cannot purge the local copy %s: %s", item, relative, exc)
                continue
            self.spool.mark_purged(item, [relative], already_absent=already_absent)
            purged.append(item)
        return purged



async def _first_failure(*coroutines: Any) -> None:
    """Run coroutines together until the first one fails (its exception is raised, the rest cancelled).

    Not a TaskGroup: the supervisor must see the exception itself, not an ExceptionGroup around it.
    """
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _prefix_sha256(path: Path, size: int) -> str:
    """SHA-256 of the stored file's first `size` bytes (the original), as what would be sent."""
    try:
        with path.open("rb") as f:
            sha, read = hash_prefix(f, size)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return sha if read == size else f"{sha} over only {read} bytes"
