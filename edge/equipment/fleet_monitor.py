"""The station agent's fleet task: every `[equipment] overdue_check_s` it raises the overdue alerts that
fell due (:mod:`.overdue`), reads the fleet's records (:mod:`.fleet_records`, in a worker thread), builds
the view (:mod:`.fleet`) with what the agent sees in its bays, and hands it on (the status board's
``fleet`` part, the metrics). A supervised task (edge.runtime.supervise): a failed read or write ends
the run with its exception, for the supervisor to restart it; the last fleet stays shown meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.config.station import StationConfig
from edge.equipment.fleet import Fleet, FleetPolicy, LiveBay, build_fleet, fleet_summary
from edge.equipment.fleet_records import FleetRecordsReader
from edge.equipment.overdue import raise_overdue_alerts
from edge.ingest.store import StationStore

__all__ = ["FleetMonitor", "fleet_policy"]

log = logging.getLogger(__name__)


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
        while True:
            await self.check()
            self._alive()
            await asyncio.sleep(self._config().equipment.overdue_check_s)

    def close(self) -> None:
        """At the agent's stop: waits for a read under way, then closes the reader for good."""
        self._reader.close()
