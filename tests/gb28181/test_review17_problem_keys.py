"""Review 17: the limiter of recurring download problems (edge.custody.entry_limits) keeps, in memory,
every key it let through, up to MAX_PROBLEM_KEYS (4096), whole. The key of a recording listed as ending
far in the future is `device|RecordingRef.identity()`, and the identity holds the item's FilePath: device
text of any length (a RecordInfo body may be 8 MiB). A device that lists recordings ending in 2099 with
long FilePaths makes the station keep every one of those paths (256 new keys per 6 h pass the budget,
4096 kept), so what the station holds grows with what the device writes: memory is not bounded
(invariant 5), though the ledger entries themselves are (the path is shortened there).

The scheduler's real pass (`_pass`, `_finished`), a real store and pipeline; the device's listing is made
afresh at each query and dropped, so what stays in memory after the pass is what the station kept."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

DEVICE = "34020000001320000019"
CHANNEL = "34020000001310000019"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LOCAL_NOW = (NOW + timedelta(minutes=480)).replace(tzinfo=None)
ITEMS = 200
LONG_PATH = 100_000  # characters of FilePath per item: 20 MB over the listing
RETAINED_BOUND = 4 * 1024 * 1024


class Platform(ListingPlatform):
    """A device that lists ITEMS recordings ending in 2099, each with its own FilePath of `path_chars`."""

    def __init__(self, path_chars: int) -> None:
        super().__init__({DEVICE: CHANNEL})
        self.path_chars = path_chars

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return tuple(record_item(CHANNEL, LOCAL_NOW - timedelta(hours=1), datetime(2099, 1, 1),
                                 f"/sd/{i:04d}/" + "x" * self.path_chars) for i in range(ITEMS))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _retained_after_a_pass(store: StationStore, tmp_path: Path, path_chars: int) -> int:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    platform = Platform(path_chars)
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await scheduler._pass(DEVICE, DeviceProgress())
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert platform.downloads == []
    errors = [e for e in store.ledger.entries() if e.type == "error" and "2099" in str(e.data.get("reason"))]
    assert len(errors) == ITEMS  # each recording's problem reached the ledger (bounded text there)
    assert max(len(str(e.data)) for e in errors) < 10_000
    return retained


async def test_what_the_station_keeps_of_a_listing_does_not_grow_with_the_devices_file_paths(
        store: StationStore, tmp_path: Path) -> None:
    retained = await _retained_after_a_pass(store, tmp_path, LONG_PATH)
    assert retained < RETAINED_BOUND, (
        f"{retained} bytes kept after one pass over {ITEMS} recordings with {LONG_PATH}-character "
        "FilePaths: the problem limiter keeps each key (the whole FilePath); 4096 kept at most")


async def test_control_short_file_paths_leave_little(store: StationStore, tmp_path: Path) -> None:
    retained = await _retained_after_a_pass(store, tmp_path, 10)
    assert retained < RETAINED_BOUND
