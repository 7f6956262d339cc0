"""The station agent's fleet task: every `[equipment] overdue_check_s` it raises the overdue alerts that
fell due (:mod:`.overdue`), reads the fleet's records (:mod:`.fleet_records`, in a worker thread), builds
the view (:mod:`.fleet`) with what the agent sees in its bays, and hands it on (the status board's
``fleet`` part, the metrics). A ledger entry that changes where a recorder is or how it is (a docking
starting or ending, a check-out, a return, a removal) brings the next read forward, `SETTLE_S` later
(the entry's transaction commits meanwhile, and a docking's burst of entries makes one read), so the
fleet panel agrees with the bay tiles within seconds, not a minute. An entry told less than `SETTLE_S`
before a read began may not have committed when it was read: one more read follows it, so no change waits
for the periodic check. A supervised task
(edge.runtime.supervise): a failed read or write ends the run with its exception, for the supervisor to
restart it; the last fleet stays shown meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.config.station import StationConfig
from edge.custody.ledger import EntryType, LedgerEntry
from edge.equipment.fleet import Fleet, FleetPolicy, LiveBay, build_fleet, fleet_summary
from edge.equipment.fleet_records import FleetRecordsReader
from edge.equipment.overdue import raise_overdue_alerts
from edge.ingest.store import StationStore
from edge.runtime.supervise import wait_event

__all__ = ["CHANGES", "FleetMonitor", "fleet_policy"]

log = logging.getLogger(__name__)

# Ledger entries after which the fleet is read again at once (where a recorder is, who holds it, how it is).
CHANGES = frozenset({
    EntryType.SESSION_STARTED, EntryType.SESSION_STOPPED, EntryType.DEVICE_AUTHENTICATED,
    EntryType.DEVICE_REMOVED, EntryType.ASSIGNED, EntryType.RETURNED, EntryType.OVERDUE,
})
SETTLE_S = 0.5


def _utc_now() -> datetime:
    return datetime.now(UTC)


def fleet_policy(config: StationConfig) -> FleetPolicy:
    equipment = config.equipment
    return FleetPolicy(timedelta(hours=equipment.overdue_after_h), equipment.min_battery_percent)


class FleetMonitor:
    """``config``: the station configuration now (a reloaded allow-list applies from the next check);
    ``live``: the recorders the agent sees in a bay now, by device serial; ``on_fleet``: each fresh view
    (on the loop); ``alive``: liveness for the supervisor."""

    def __init__(self, store: StationStore, *, config: Callable[[], StationConfig],
                 live: Callable[[], Mapping[str, LiveBay]],
                 on_fleet: Callable[[Fleet], None] = lambda fleet: None,
                 alive: Callable[[], None] = lambda: None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.store = store
        self._config = config
        self._live = live
        self._on_fleet = on_fleet
        self._alive = alive
        self._clock = clock
        self._reader = FleetRecordsReader(store.layout.root)
        self.fleet: Fleet | None = None
        self._summary: dict[str, Any] | None = None
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_change = float("-inf")  # loop time the last change was told (taken on the loop)

    def ledger_entry(self, entry: LedgerEntry) -> None:
        """A ledger listener (any thread, possibly before the entry commits): a change brings the next
        read forward."""
        loop = self._loop
        if entry.type not in CHANGES or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the station is stopping
            loop.call_soon_threadsafe(self._change)

    def _change(self) -> None:
        # On the loop, after the listener was called (inside the entry's transaction): a later time
        # than the append, never an earlier one.
        assert self._loop is not None
        self._last_change = self._loop.time()
        self._changed.set()

    def summary(self) -> dict[str, Any] | None:
        """The latest view as JSON (:func:`edge.equipment.fleet.fleet_summary`), None before the first
        check: what the status board, the local API and the central get. Made once per check (the board
        reads it for every snapshot); callers must not change it."""
        return self._summary

    async def check(self) -> Fleet:
        config = self._config()
        policy = fleet_policy(config)
        now = self._clock()
        for entry in raise_overdue_alerts(self.store, now=now, overdue_after=policy.overdue_after):
            log.warning("recorder %s overdue: checked out to %s at %s, due back %s",
                        entry.data.get("device_serial"), entry.data.get("officer_no"),
                        entry.data.get("checked_out"), entry.data.get("due_at"))
        allowed = [entry.device_serial for entry in config.recorders.allow]
        records = await asyncio.to_thread(self._reader.read, allowed)
        fleet = build_fleet(records, self._live(), policy, now)
        self.fleet = fleet
        self._summary = fleet_summary(fleet, station_id=config.station.id)
        self._on_fleet(fleet)
        return fleet

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            began = loop.time()
            await self.check()
            self._alive()
            if self._last_change > began - SETTLE_S:
                # A change told during the settle pause, just before this read: its transaction may not
                # have committed when read, and clearing the event above forgot it. Read once more.
                self._changed.set()
            await wait_event(self._changed, self._config().equipment.overdue_check_s)
            if self._changed.is_set():
                await self._settle()

    async def _settle(self) -> None:
        """The pause between a change and the read it brings forward."""
        await asyncio.sleep(SETTLE_S)

    def close(self) -> None:
        """At the agent's stop: waits for a read under way, then closes the reader for good."""
        self._reader.close()
