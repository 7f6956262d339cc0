"""Review 16: the scheduler hands every listed recording to the downloads, whatever its times. A recording
the device lists as ending in the future (a segment still being recorded, a device clock far ahead, or an
EndTime of 2099: RecordItem only checks end >= start) is downloaded as if finished: its expected length
(from its time range) can never be met, so it is sealed incomplete and fetched again three times, each
session bounded by nothing but idle and max_recording_bytes (8 GiB by default), and its range is
stamped in the manifests as the recording's though most of it does not exist."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000001"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ZONE = timedelta(minutes=480)  # the devices' configured zone: UTC+8, device-local naive times
LOCAL_NOW = (NOW + ZONE).replace(tzinfo=None)


class Platform(ListingPlatform):
    """Lists one recording of the given times."""

    def __init__(self, start: datetime, end: datetime) -> None:
        super().__init__({DEVICE: CHANNEL})
        self.item = record_item(CHANNEL, start, end)

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return (self.item,)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass(platform: Platform, store: StationStore, tmp_path: Path) -> None:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    await scheduler._pass(DEVICE, DeviceProgress())


@pytest.mark.parametrize("end", [LOCAL_NOW + timedelta(days=1), datetime(2099, 1, 1)])
async def test_a_recording_listed_as_ending_in_the_future_is_not_downloaded_as_finished(
        store: StationStore, tmp_path: Path, end: datetime) -> None:
    platform = Platform(LOCAL_NOW - timedelta(hours=1), end)
    await _pass(platform, store, tmp_path)
    assert platform.downloads == [], platform.downloads


async def test_control_a_recording_that_ended_before_now_is_downloaded(store: StationStore,
                                                                      tmp_path: Path) -> None:
    platform = Platform(LOCAL_NOW - timedelta(hours=1), LOCAL_NOW - timedelta(minutes=30))
    await _pass(platform, store, tmp_path)
    assert len(platform.downloads) == 1
