"""Review 17: the budget of the recurring download problems (PROBLEM_BUDGET entries per 6 h) is one for the
whole station, and a recording ending in the future is its own key: one device that lists 300 recordings
ending in 2099 (a wrong clock, or on purpose) spends the whole budget in one pass, and for the next six
hours every other device's problem is held back: a real recorder whose RecordInfo fails (its recordings
are not listed, not downloaded) leaves nothing on the ledger. "Limited, yet never silent"
(edge.custody.entry_limits) does not hold across devices: one device silences the others.

The scheduler's real passes, a real store and pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.queries import QueryTimeout
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

NOISY = "34020000001320000024"
QUIET = "34020000001320000025"
CHANNEL = {NOISY: "34020000001310000024", QUIET: "34020000001310000025"}
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LOCAL_NOW = (NOW + timedelta(minutes=480)).replace(tzinfo=None)


class Platform(ListingPlatform):
    """NOISY lists 300 recordings ending in 2099; QUIET's RecordInfo never answers."""

    def __init__(self) -> None:
        super().__init__(CHANNEL)

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return tuple(record_item(channel_id, LOCAL_NOW - timedelta(hours=1), datetime(2099, 1, 1, 0, i % 60),
                                 f"/sd/{i}.ps") for i in range(300))

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        if device_id == QUIET:
            raise QueryTimeout(f"RecordInfo of {channel_id}: no answer in 10 s")
        return await super().query_record_info(device_id, channel_id, start, end)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _quiet_devices_entries(store: StationStore, tmp_path: Path, noisy_first: bool) -> int:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    scheduler = GbDownloadScheduler(Platform(), policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    if noisy_first:
        await scheduler._pass(NOISY, DeviceProgress())
    await scheduler._pass(QUIET, DeviceProgress())
    return sum(1 for e in store.ledger.entries() if e.type == "error"
               and e.data.get("device_id") == QUIET and e.data.get("stage") == "record-info")


async def test_one_devices_listing_does_not_silence_another_devices_failing_record_info(
        store: StationStore, tmp_path: Path) -> None:
    assert await _quiet_devices_entries(store, tmp_path, noisy_first=True) >= 1, (
        "a device's failing RecordInfo left no entry: another device's 300 recordings ending in 2099 spent "
        "the station's budget of problem entries for six hours")


async def test_control_alone_its_failing_record_info_is_on_the_ledger(store: StationStore,
                                                                       tmp_path: Path) -> None:
    assert await _quiet_devices_entries(store, tmp_path, noisy_first=False) == 1
