"""Review 20 (MEDIUM): a genuine recording is given up for the rest of the run after 8 passes whose
download failed for a passing reason, however far apart the passes and however long ago.

Review 17's fix (finding 8) bounds the ledger of failed downloads (good) and gives a recording up once its
download failed with no session or no byte at `MAX_FAILED_PASSES` (8) passes (`FailedPasses`, in memory,
no clock: "not asked for again until the station restarts"). The causes that fail a download at every pass
are mostly transient: a recorder answering 486 Busy Here while the command centre watches it live (devices
serve one or two sessions), a firewall or NAT dropping the media for a day, a device's SD card busy. With a
pass at each registration or window, 8 failing passes are two days of a busy device; the fault ends, and the
recording, complete on the device, is never asked for again: the recorder's loop overwrites it. Only a
restart (which nothing tells the operator to make, and which forgets every give-up at once) asks again. A
failed download sealed nothing, so unlike the incomplete copies there is no copy of it at all.

The scheduler's real passes, a real store and pipeline; the platform seam answers INVITE 486 while busy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.downloads import MAX_FAILED_PASSES
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

DEVICE = "34020000001320000025"
CHANNEL = "34020000001310000025"
START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RECORDED_LOCAL = (START + timedelta(minutes=480) - timedelta(hours=2)).replace(tzinfo=None)
PASS_EVERY = timedelta(hours=6)


class Platform(ListingPlatform):
    """Lists one finished recording; answers its Download INVITE 486 Busy Here while `busy`."""

    def __init__(self) -> None:
        super().__init__({DEVICE: CHANNEL})
        self.busy = True

    @property
    def download_error(self) -> str:  # type: ignore[override]
        return ("INVITE answered 486 Busy Here" if self.busy
                else "the test ends here: the recording was asked for again")

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return (record_item(CHANNEL, RECORDED_LOCAL, RECORDED_LOCAL + timedelta(minutes=10)),)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _asked_after_busy_passes(store: StationStore, tmp_path: Path, busy_passes: int) -> bool:
    """`busy_passes` passes 6 h apart fail with 486; then the device is free: whether the next pass (6 h
    later) asks for the recording again."""
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    platform = Platform()
    now = [START]
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: now[0])
    for _ in range(busy_passes):
        await scheduler._pass(DEVICE, DeviceProgress())
        now[0] += PASS_EVERY
    assert len(platform.downloads) == busy_passes  # asked at each busy pass
    platform.busy = False
    await scheduler._pass(DEVICE, DeviceProgress())
    return len(platform.downloads) == busy_passes + 1


async def test_a_recording_the_device_was_too_busy_to_send_for_two_days_is_asked_again(
        store: StationStore, tmp_path: Path) -> None:
    assert await _asked_after_busy_passes(store, tmp_path, MAX_FAILED_PASSES), (
        f"after {MAX_FAILED_PASSES} passes over two days whose INVITE was answered 486 Busy, the recording "
        "(complete on the device) is never asked for again in this run, whatever time passes")


async def test_control_one_busy_pass_fewer_and_it_is_asked_again(store: StationStore, tmp_path: Path) -> None:
    assert await _asked_after_busy_passes(store, tmp_path, MAX_FAILED_PASSES - 1)
