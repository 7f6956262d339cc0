"""The fleet task's reads brought forward by ledger entries (edge.equipment.fleet_monitor), with the store's
records faked: when an entry is told and when it commits are the test's to choose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.equipment import fleet_monitor
from edge.equipment.fleet import DockingRecord, FleetRecords
from edge.equipment.fleet_monitor import FleetMonitor
from tests.station.harness import eventually

SERIAL = "3300002"
WAIT_S = 30.0
STARTED = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
UNDER_WAY = FleetRecords([SERIAL], {SERIAL: DockingRecord(2, STARTED, None, None)})
ENDED = FleetRecords([SERIAL], {SERIAL: DockingRecord(2, STARTED, STARTED, "done")})


class Records:
    """The store as the reader sees it: ``commit_after_read`` makes the next read miss a change that
    commits just after it began (an entry appended at the read's start, its transaction still open)."""

    def __init__(self) -> None:
        self.now = UNDER_WAY
        self.reads = 0
        self.commit_after_read: FleetRecords | None = None

    def read(self, allowed: Sequence[str]) -> FleetRecords:
        self.reads += 1
        seen = self.now
        if self.commit_after_read is not None:
            self.now, self.commit_after_read = self.commit_after_read, None
        return seen

    def close(self) -> None:
        pass


def entry(kind: EntryType) -> LedgerEntry:
    return LedgerEntry(1, "2026-01-05T08:00:00Z", kind.value, None, {}, "", "")


class LateEntryMonitor(FleetMonitor):
    """Tells a second change (``late``) at the end of the settle pause, just before the read it brings."""

    late: EntryType | None = None
    records: Records

    async def _settle(self) -> None:
        await super()._settle()
        if self.late is not None:
            kind, self.late = self.late, None
            self.records.commit_after_read = ENDED
            self.ledger_entry(entry(kind))
            await asyncio.sleep(0)  # the listener hands the change to the loop: taken before the read


@contextlib.asynccontextmanager
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LateEntryMonitor]:
    monkeypatch.setattr(fleet_monitor, "raise_overdue_alerts", lambda *args, **kwargs: [])
    config = SimpleNamespace(
        station=SimpleNamespace(id="station-1"),
        recorders=SimpleNamespace(allow=[SimpleNamespace(device_serial=SERIAL)]),
        # An hour between periodic reads: any read the test sees was brought forward.
        equipment=SimpleNamespace(overdue_check_s=3600, overdue_after_h=14, min_battery_percent=80))
    store = cast(Any, SimpleNamespace(layout=SimpleNamespace(root=tmp_path)))
    monitor = LateEntryMonitor(store, config=lambda: cast(Any, config), live=lambda: {})
    monitor.records = Records()
    monitor._reader = cast(Any, monitor.records)
    task = asyncio.create_task(monitor.run())
    try:
        await eventually(lambda: monitor.records.reads == 1, WAIT_S)  # the read at start
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ended_shown(monitor: FleetMonitor) -> bool:
    summary = monitor.summary() or {}
    return any(r["last_docking"]["ended_at"] is not None for r in summary.get("recorders", []))


async def test_a_change_told_just_before_a_read_is_read_again_not_an_hour_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, monkeypatch) as monitor:
        # A docking's session_started brings a read; its session_stopped is told as that read begins
        # and commits only after it: the read misses it, so another must follow.
        monitor.late = EntryType.SESSION_STOPPED
        monitor.ledger_entry(entry(EntryType.SESSION_STARTED))
        await eventually(lambda: ended_shown(monitor), WAIT_S)
        assert monitor.records.reads == 3  # the read at start, the one that missed it, the one after


async def test_the_control_a_change_committed_before_the_read_takes_one_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, monkeypatch) as monitor:
        monitor.records.now = ENDED  # committed already when told: nothing more to read
        monitor.ledger_entry(entry(EntryType.SESSION_STOPPED))
        await eventually(lambda: ended_shown(monitor), WAIT_S)
        await asyncio.sleep(3 * fleet_monitor.SETTLE_S)  # room for a read that should not come
        assert monitor.records.reads == 2
        # Entries of other types bring no read at all.
        monitor.ledger_entry(entry(EntryType.SEALED))
        await asyncio.sleep(3 * fleet_monitor.SETTLE_S)
        assert monitor.records.reads == 2
