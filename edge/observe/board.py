"""The status board: one in-process model of the station, fed by events, read as JSON snapshots and a
stream of changes (see the package docstring for the JSON).

Fed by :class:`~edge.observe.sink.StatusEvent` (``publish``, from any thread), by the offload's live
progress counters (``progress``), by the ledger (``ledger_entry``, a ledger listener: error entries by
stage, sealing and receipt times) and by station facts it reads itself every few seconds (the store,
the disk, the clock) or that the composition root hands it (tasks, central). Subscribers get a bounded
queue each: one that does not keep up loses its queued changes and is handed one fresh snapshot
instead; publishing never waits for a subscriber, so a slow dock screen never slows an offload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from edge.custody.ledger import EntryType, LedgerEntry
from edge.custody.text import printable
from edge.observe.facts import StoreFacts
from edge.observe.metrics import StationMetrics
from edge.observe.sink import (
    REFUSAL_CLASSES,
    BayBouncing,
    BayChanged,
    BayPhase,
    BayUsbSerialClaim,
    BayVacated,
    CentralContact,
    Device,
    Duration,
    DurationKind,
    ErrorClass,
    Officer,
    Refused,
    StatusEvent,
    TaskChanged,
)
from edge.runtime.supervise import wait_event

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SUBSCRIBERS = 64  # event streams at once (dock screens, edge status --watch): each holds a queue
SUBSCRIBER_QUEUE = 256  # changes held for one subscriber before it is handed a fresh snapshot instead
MAX_UNPLACED = 32  # tiles of recorders in no known bay kept; the oldest finished one goes first
MAX_CLASSES = 64  # distinct error stages counted by name; more are counted as "other"
MAX_SEALED_TIMES = 10_000  # sealing times kept to time receipts (older items are not timed)
SPEED_HALF_LIFE_S = 3.0
ACTIVE = frozenset({BayPhase.AUTHENTICATING, BayPhase.COPYING, BayPhase.VERIFYING})
STAGE_PHASES = {
    "copying": BayPhase.COPYING,
    "verifying": BayPhase.VERIFYING,
    "awaiting_receipt": BayPhase.AWAITING_RECEIPT,
}


def utc_text(ts: float | None = None) -> str:
    """ISO 8601 UTC, seconds, with Z: the status model's time format."""
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressCounters(Protocol):
    """The offload's live counters (:class:`edge.sources.usb.offload.BayProgress`), read in place."""

    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    stage: str


@dataclass
class TaskFacts:
    name: str
    state: str  # running, restarting, failed, stopped
    restarts: int
    last_event_age_s: float | None
    last_error: str | None = None


@dataclass
class CentralFacts:
    configured: bool
    breaker: str | None = None  # closed, open, half_open


@dataclass
class ClockFacts:
    trusted: bool
    source: str
    detail: str


@dataclass
class _Bay:
    key: str
    bay: int | None
    device_serial: str | None = None
    phase: BayPhase = BayPhase.EMPTY
    error_class: ErrorClass | None = None
    officer: Officer | None = None
    device: Device | None = None
    counters: ProgressCounters | None = None
    shown: tuple[int, int, int, int] = (0, 0, 0, 0)
    since: str = field(default_factory=utc_text)
    updated_at: str = field(default_factory=utc_text)
    speed_bps: float | None = None
    sample: tuple[float, int] | None = None
    bouncing: bool = False  # the bay board reports its presence changing too often to act on
    # What is wrong with the USB serial its recorder claims: {"problem": "shared", "bays": [..]} or None.
    usb_serial_warning: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        files_done, files_total, bytes_done, bytes_total = self.shown
        speed = None if self.speed_bps is None else round(self.speed_bps)
        eta = None
        if speed and self.phase is BayPhase.COPYING and bytes_total > bytes_done:
            eta = round((bytes_total - bytes_done) / speed, 1)
        return {
            "bay": self.key,
            "state": self.phase.value,
            "error_class": None if self.error_class is None else self.error_class.value,
            "officer": None
            if self.officer is None
            else {"name": printable(self.officer.name), "badge": printable(self.officer.badge)},
            "device": None
            if self.device is None
            else {
                "serial": printable(self.device.serial),
                "model": printable(self.device.model),
                "battery_pct": self.device.battery_pct,
            },
            "files_done": files_done,
            "files_total": files_total,
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
            "speed_bps": speed,
            "eta_s": eta,
            "bouncing": self.bouncing,
            "usb_serial_warning": self.usb_serial_warning,
            "since": self.since,
            "updated_at": self.updated_at,
        }


class TooManySubscribers(Exception):
    """MAX_SUBSCRIBERS event streams are open already."""


class Subscription:
    """One reader of the change stream: its first message is a snapshot, then changes; when it falls
    ``limit`` changes behind, they are dropped and it gets one fresh snapshot."""

    def __init__(self, board: StatusBoard, limit: int) -> None:
        self._board = board
        self._limit = limit
        self._queue: deque[tuple[str, Any]] = deque()
        self._resync = True
        self._ready = asyncio.Event()
        self._ready.set()
        self.dropped = 0

    def put(self, kind: str, data: Any) -> None:
        if self._resync:
            return  # a snapshot is due anyway
        if len(self._queue) >= self._limit:
            self.dropped += len(self._queue)
            self._queue.clear()
            self._resync = True
        else:
            self._queue.append((kind, data))
        self._ready.set()

    async def get(self) -> tuple[str, Any]:
        while True:
            if self._resync:
                self._resync = False
                self._queue.clear()
                return "snapshot", self._board.snapshot()
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._board._subscribers.discard(self)


class StatusBoard:
    """See the module docstring. ``identity``: the fixed part of the station JSON (id, unit, version,
    key id); ``read_store``: blocking read of the store's facts (run in a thread); ``read_clock``:
    blocking clock verdict; ``tasks`` and ``central``: the supervisor's and uplink's state, read on the
    loop."""

    def __init__(
        self,
        *,
        identity: Mapping[str, Any],
        bays: list[int],
        read_store: Callable[[], StoreFacts] | None = None,
        read_clock: Callable[[], ClockFacts] | None = None,
        tasks: Callable[[], list[TaskFacts]] | None = None,
        central: Callable[[], CentralFacts] | None = None,
        metrics: StationMetrics | None = None,
        tick_s: float = 0.5,
        facts_every_s: float = 2.0,
        clock_every_s: float = 60.0,
    ) -> None:
        self.identity = dict(identity)
        self.metrics = metrics or StationMetrics()
        self.started_at = utc_text()
        self._bays: dict[str, _Bay] = {str(b): _Bay(str(b), b) for b in sorted(bays)}
        self._read_store = read_store
        self._read_clock = read_clock
        self._tasks = tasks
        self._central = central
        self.tick_s = tick_s
        self.facts_every_s = facts_every_s
        self.clock_every_s = clock_every_s
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._store: StoreFacts | None = None
        self._clock = ClockFacts(False, "none", "not read yet")
        self._reachable: bool | None = None
        self._last_contact_at: str | None = None
        self._refusals: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._sealed_at: OrderedDict[str, float] = OrderedDict()
        self._station_json: dict[str, Any] | None = None
        self._changed = asyncio.Event()
        self._refresh_now = asyncio.Event()
        # Further parts of the snapshot by name, read on the loop when asked (the GB/T 28181 device
        # registry: "gb28181"); none by default, so the snapshot of a station without them is unchanged.
        self.sections: dict[str, Callable[[], Any]] = {}

    # -- intake -----------------------------------------------------------------------------------

    def publish(self, event: StatusEvent) -> None:
        """:class:`~edge.observe.sink.StatusSink`: from the loop's thread at once, else handed to it."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop closed: the station is stopping
                loop.call_soon_threadsafe(self._take, event)
            return
        self._take(event)

    def progress(self, device_serial: str, bay: int | None, counters: ProgressCounters) -> None:
        """The offload's live counters for a docking (called at file boundaries; bytes within a file
        are sampled every tick)."""
        slot = self._slot(bay, device_serial)
        slot.counters = counters
        phase = STAGE_PHASES.get(counters.stage)
        moving = slot.phase in ACTIVE or slot.phase is BayPhase.AWAITING_RECEIPT
        if phase is not None and moving and phase is not slot.phase:
            self._enter(slot, phase)
            if phase is not BayPhase.COPYING:
                slot.speed_bps = None
            self._sample(slot, time.monotonic())
            self._emit_bay(slot)
        elif self._sample(slot, time.monotonic()):
            self._emit_bay(slot)

    def ledger_entry(self, entry: LedgerEntry) -> None:
        """A ledger listener (any thread, possibly before the entry commits: only counts and times)."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._take_entry, entry)
            return
        self._take_entry(entry)

    def _take_entry(self, entry: LedgerEntry) -> None:
        if entry.type == EntryType.ERROR:
            stage = entry.data.get("stage")
            self._count(self._errors, stage if isinstance(stage, str) and stage else "unknown", "errors")
        elif entry.type == EntryType.SEALED and entry.item:
            self._sealed_at[entry.item] = time.monotonic()
            while len(self._sealed_at) > MAX_SEALED_TIMES:
                self._sealed_at.popitem(last=False)
        elif entry.type == EntryType.RECEIPT and entry.item:
            sealed = self._sealed_at.pop(entry.item, None)
            if sealed is not None:
                self.metrics.durations[DurationKind.RECEIPT].observe(time.monotonic() - sealed)
            self._refresh_now.set()

    def _count(self, counts: dict[str, int], name: str, which: str) -> None:
        name = printable(name)[:64]
        if name not in counts and len(counts) >= MAX_CLASSES:
            name = "other"
        counts[name] = counts.get(name, 0) + 1
        if which == "errors":
            self.metrics.errors.labels(name).inc()
        else:
            self.metrics.refusals.labels(name).inc()
        self._station_changed()

    def _take(self, event: StatusEvent) -> None:
        try:
            if isinstance(event, BayChanged):
                self._bay_changed(event)
            elif isinstance(event, BayVacated):
                self._bay_vacated(event)
            elif isinstance(event, BayBouncing):
                slot = self._slot(event.bay, None)
                if slot.bouncing is not event.bouncing:
                    slot.bouncing = event.bouncing
                    slot.updated_at = utc_text()
                    self._emit_bay(slot)
            elif isinstance(event, BayUsbSerialClaim):
                self._usb_serial_claim(event)
            elif isinstance(event, Refused):
                for _ in range(min(event.count, 1_000_000)):
                    self._count(self._refusals, event.refusal_class.value, "refusals")
            elif isinstance(event, Duration):
                self.metrics.durations[event.kind].observe(max(0.0, event.seconds))
                if event.kind is DurationKind.COPY and event.size_bytes:
                    self.metrics.copied_bytes.inc(event.size_bytes)
            elif isinstance(event, TaskChanged):
                self._station_changed()  # the station part goes out now, with the supervisor's facts
            elif isinstance(event, CentralContact):
                self._reachable = event.reachable
                if event.reachable:
                    self._last_contact_at = utc_text()
                self._station_changed()
        except Exception:  # the board must never fail the code that reports to it
            log.exception("status board: event %r not taken", event)

    # -- bays -------------------------------------------------------------------------------------

    def _slot(self, bay: int | None, device_serial: str | None) -> _Bay:
        """The bay's record; a docking whose bay is unknown gets a record keyed by its recorder."""
        if bay is not None:
            key = str(bay)
        else:
            found = next(
                (b for b in self._bays.values() if device_serial and b.device_serial == device_serial), None
            )
            if found is not None:
                return found
            key = f"device:{printable(device_serial or 'unknown')[:64]}"
        slot = self._bays.get(key)
        if slot is None:
            if bay is None:
                self._make_room()
            slot = self._bays[key] = _Bay(key, bay)
        if device_serial:
            # A bay's recorder named by the control protocol (or its volume) before: one record.
            stray = self._bays.get(f"device:{printable(device_serial)[:64]}")
            if stray is not None and stray is not slot:
                del self._bays[stray.key]
                self._emit("bay", {**stray.as_json(), "state": "removed"})
        return slot

    def _make_room(self) -> None:
        """Bounded memory whatever comes: beyond MAX_UNPLACED tiles of recorders in no known bay, the
        oldest that is not docking any more is retired."""
        unplaced = [b for b in self._bays.values() if b.bay is None]
        if len(unplaced) < MAX_UNPLACED:
            return
        idle = [b for b in unplaced if b.phase not in ACTIVE] or unplaced
        oldest = min(idle, key=lambda b: b.updated_at)
        del self._bays[oldest.key]
        self._emit("bay", {**oldest.as_json(), "state": "removed"})

    def _enter(self, slot: _Bay, phase: BayPhase, error_class: ErrorClass | None = None) -> None:
        if phase is not slot.phase or error_class is not slot.error_class:
            slot.since = utc_text()
        slot.phase = phase
        slot.error_class = error_class
        slot.updated_at = utc_text()

    def _bay_changed(self, event: BayChanged) -> None:
        if event.bay is None and not event.device_serial:
            # A volume in no known bay that did not even say which recorder it is: counted, not shown.
            if event.error_class in REFUSAL_CLASSES:
                self._count(self._refusals, event.error_class.value, "refusals")
            return
        slot = self._slot(event.bay, event.device_serial)
        starting = event.phase is BayPhase.AUTHENTICATING or (
            event.phase is BayPhase.COPYING and slot.phase not in ACTIVE
        )
        if starting and slot.phase not in ACTIVE:
            # A new docking at this bay: nothing of the last recorder's is shown with it.
            slot.officer = slot.device = None
            slot.counters = None
            slot.shown = (0, 0, 0, 0)
            slot.speed_bps = None
            slot.sample = None
        if event.device_serial:
            slot.device_serial = event.device_serial
        if event.officer is not None:
            slot.officer = event.officer
        if event.device is not None:
            battery = event.device.battery_pct
            if battery is None and slot.device is not None:
                battery = slot.device.battery_pct
            slot.device = Device(event.device.serial, event.device.model, battery)
        was = slot.phase
        self._enter(slot, event.phase, event.error_class)
        if event.phase not in ACTIVE and was in (*ACTIVE, BayPhase.AWAITING_RECEIPT):
            outcome = event.error_class.value if event.error_class is not None else event.phase.value
            if event.phase in (BayPhase.DONE, BayPhase.ERROR, BayPhase.AWAITING_RECEIPT):
                self.metrics.dockings.labels(outcome).inc()
        if event.error_class in REFUSAL_CLASSES:
            self._count(self._refusals, event.error_class.value, "refusals")
        if event.phase is not BayPhase.COPYING:
            slot.speed_bps = None
        self._sample(slot, time.monotonic())
        self._emit_bay(slot)

    def _usb_serial_claim(self, event: BayUsbSerialClaim) -> None:
        if event.bay is None:
            return  # a recorder in no known bay has no tile of its own to warn on
        warning: dict[str, Any] | None = None
        if event.problem is not None:
            warning = {"problem": event.problem.value}
            if event.shared_with is not None:
                warning["bays"] = sorted(b for b in event.shared_with if b is not None)
        slot = self._bays.get(str(event.bay))
        if slot is None and warning is None:
            return
        slot = slot or self._slot(event.bay, None)
        if slot.usb_serial_warning != warning:
            slot.usb_serial_warning = warning
            slot.updated_at = utc_text()
            self._emit_bay(slot)

    def _bay_vacated(self, event: BayVacated) -> None:
        if event.bay is None and not event.device_serial:
            return
        slot = self._slot(event.bay, event.device_serial)
        if slot.phase in ACTIVE:
            return  # its session ends on its own and says how (pulled early)
        if slot.phase is BayPhase.ERROR and slot.error_class is ErrorClass.PULLED_EARLY:
            return  # the officer must see it: dock it again
        if slot.phase is BayPhase.EMPTY:
            return
        self._enter(slot, BayPhase.EMPTY)
        slot.officer = slot.device = None
        slot.counters = None
        slot.device_serial = None
        slot.shown = (0, 0, 0, 0)
        slot.speed_bps = None
        if slot.bay is None:
            del self._bays[slot.key]
            self._emit("bay", {**slot.as_json(), "state": "removed"})
            self._update_bay_gauges()
            return
        self._emit_bay(slot)

    def _sample(self, slot: _Bay, now: float) -> bool:
        """Take the counters' current values; True when they moved. Speed is a decaying average."""
        counters = slot.counters
        if counters is None:
            return False
        shown = (counters.files_done, counters.files_total, counters.bytes_done, counters.bytes_total)
        if shown == slot.shown:
            return False
        done = shown[2]
        if slot.phase is BayPhase.COPYING and slot.sample is not None:
            then, before = slot.sample
            elapsed = now - then
            if elapsed > 0.05 and done >= before:
                instant = (done - before) / elapsed
                weight = 1 - 0.5 ** (elapsed / SPEED_HALF_LIFE_S)
                slot.speed_bps = instant if slot.speed_bps is None else (
                    slot.speed_bps + weight * (instant - slot.speed_bps)
                )
                slot.sample = (now, done)
        else:
            slot.sample = (now, done)
        slot.shown = shown
        slot.updated_at = utc_text()
        return True

    def _emit_bay(self, slot: _Bay) -> None:
        self._update_bay_gauges()
        self._emit("bay", slot.as_json())

    def _update_bay_gauges(self) -> None:
        counts = dict.fromkeys(BayPhase, 0)
        for slot in self._bays.values():
            counts[slot.phase] += 1
        for phase, n in counts.items():
            self.metrics.bays.labels(phase.value).set(n)

    # -- snapshots --------------------------------------------------------------------------------

    def bays(self) -> list[dict[str, Any]]:
        return [slot.as_json() for slot in sorted(self._bays.values(), key=_bay_order)]

    def bay(self, key: str) -> dict[str, Any] | None:
        slot = self._bays.get(key)
        return None if slot is None else slot.as_json()

    def station(self) -> dict[str, Any]:
        store = self._store
        central = self._central() if self._central is not None else CentralFacts(False)
        tasks = self._tasks() if self._tasks is not None else []
        ledger = store.ledger if store is not None else None
        return {
            **self.identity,
            "started_at": self.started_at,
            "clock": {
                "trusted": self._clock.trusted, "source": self._clock.source, "detail": self._clock.detail
            },
            "disk": {
                "free_bytes": store.free_bytes if store else None,
                "total_bytes": store.total_bytes if store else None,
            },
            "ledger": {
                "head_seq": ledger.head_seq if ledger else None,
                "head_hash": ledger.head_hash if ledger else None,
                "witnessed_seq": ledger.witnessed_seq if ledger else None,
                "witnessed_at": ledger.witnessed_at if ledger else None,
                "unwitnessed_entries": ledger.unwitnessed_entries if ledger else None,
            },
            "central": {
                "configured": central.configured,
                "reachable": self._reachable if central.configured else None,
                "breaker": central.breaker if central.configured else None,
                "last_contact_at": self._last_contact_at,
                "last_receipt_at": store.last_receipt_at if store else None,
            },
            "spool": {
                "items": store.spool.items if store else None,
                "bytes": store.spool.bytes if store else None,
                "oldest_at": store.spool.oldest_at if store else None,
                "held": store.spool.held if store else None,
            },
            "tasks": [
                {
                    "name": t.name,
                    "state": t.state,
                    "restarts": t.restarts,
                    "last_event": None if t.last_error is None else printable(t.last_error)[:300],
                    "last_event_at": None
                    if t.last_event_age_s is None
                    else utc_text(time.time() - t.last_event_age_s),
                }
                for t in tasks
            ],
            "counts": {"refusals": dict(self._refusals), "errors": dict(self._errors)},
        }

    def snapshot(self) -> dict[str, Any]:
        extra = {name: read() for name, read in self.sections.items()}
        return {"station": self.station(), "bays": self.bays(), **extra}

    @property
    def clock_trusted(self) -> bool:
        """The last clock verdict read (False until one is)."""
        return self._clock.trusted

    # -- the change stream ------------------------------------------------------------------------

    def subscribe(self, limit: int = SUBSCRIBER_QUEUE) -> Subscription:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise TooManySubscribers(f"{MAX_SUBSCRIBERS} event streams are open already")
        subscription = Subscription(self, limit)
        self._subscribers.add(subscription)
        return subscription

    def _emit(self, kind: str, data: Any) -> None:
        for subscription in list(self._subscribers):
            subscription.put(kind, data)

    def _station_changed(self) -> None:
        self._changed.set()

    # -- the loop ---------------------------------------------------------------------------------

    def attach(self) -> None:
        """Take events from other threads through the running loop (call on the loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    async def run(self) -> None:
        """Sample progress every tick, read the station facts every few seconds, stream what changed.
        Runs until cancelled (a supervised task of the agent)."""
        self.attach()
        loop = asyncio.get_running_loop()
        next_facts = 0.0
        next_clock = 0.0
        self._changed.set()  # the station part goes out once at start, whatever feeds it
        while True:
            now = time.monotonic()
            for slot in list(self._bays.values()):
                if slot.phase in ACTIVE and self._sample(slot, now):
                    self._emit_bay(slot)
            if now >= next_clock and self._read_clock is not None:
                next_clock = now + self.clock_every_s
                self._clock = await _in_thread(loop, self._read_clock, self._clock)
            if (now >= next_facts or self._refresh_now.is_set()) and self._read_store is not None:
                self._refresh_now.clear()
                next_facts = now + self.facts_every_s
                self._store = await _in_thread(loop, self._read_store, self._store)
                self._changed.set()
            if self._changed.is_set():
                self._changed.clear()
                station = self.station()
                if station != self._station_json:
                    self._station_json = station
                    self._update_station_gauges(station)
                    self._emit("station", station)
            # Not asyncio.wait_for: on Python 3.11 a cancel that arrives as the change does is taken for
            # the change and lost, and the board then outlives the station's stop by its stop timeout.
            await wait_event(self._changed, self.tick_s)

    def _update_station_gauges(self, station: dict[str, Any]) -> None:
        m = self.metrics
        store = self._store
        if store is not None:
            m.spool_items.set(store.spool.items)
            m.spool_bytes.set(store.spool.bytes)
            m.disk_free.set(store.free_bytes)
            m.ledger_head.set(store.ledger.head_seq)
            m.ledger_witnessed.set(store.ledger.witnessed_seq)
            m.ledger_unwitnessed.set(store.ledger.unwitnessed_entries)
        m.clock_trusted.set(1 if self._clock.trusted else 0)
        central = station["central"]
        m.central_reachable.set(1 if central["reachable"] else 0)
        for state in ("closed", "open", "half_open"):
            m.breaker.labels(state).set(1 if central["breaker"] == state else 0)
        for task in station["tasks"]:
            m.task_up.labels(task["name"]).set(1 if task["state"] == "running" else 0)
            m.task_restarts.labels(task["name"]).set(task["restarts"])


async def _in_thread(loop: asyncio.AbstractEventLoop, read: Callable[[], T], keep: T) -> T:
    """``read()`` in a worker thread; on failure the last value is kept (a status read that fails must
    never stop the board) and the failure logged."""
    try:
        future: Awaitable[T] = loop.run_in_executor(None, read)
        return await future
    except Exception as exc:
        log.warning("status board: %s failed: %s", getattr(read, "__name__", "a read"), exc)
        return keep


def _bay_order(slot: _Bay) -> tuple[int, int, str]:
    return (0, slot.bay, "") if slot.bay is not None else (1, 0, slot.key)
