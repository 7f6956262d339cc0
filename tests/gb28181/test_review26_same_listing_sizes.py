"""Review 26: README (known limits) says only two recordings listed with the same channel, start, end, file
path *and FileSize* (or without one) are taken for one; since reviews 22/24 another FileSize tells a
recording apart (a recorder whose clock restarts at its epoch at every power-on lists a new recording
under an old one's times; devices that put the channel id or nothing in FilePath give every such
recording the same path). But when both recordings are in the same RecordInfo answer -- which is where
they are, both still on the card -- the scheduler's listing keeps one item per `identity()`
(`listed.setdefault`), which does not include the FileSize: the second recording is dropped silently (no
ledger entry), pass after pass, and never downloaded.

The scheduler's real pass, a real store and pipeline; the platform seam lists the two recordings (the
multi-part assembler keeps both: they differ in FileSize) and refuses every download (the test counts
what was asked for). Control: the same two recordings with different start times are both asked for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

DEVICE = "34020000001320000026"
CHANNEL = "34020000001310000026"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RECORDED_LOCAL = (NOW + timedelta(minutes=480) - timedelta(hours=2)).replace(tzinfo=None)


class Platform(ListingPlatform):
    """Lists `listed` for the channel; refuses every download (kept in `downloads`)."""

    def __init__(self, listed: tuple[RecordItem, ...]) -> None:
        super().__init__({DEVICE: CHANNEL})
        self.listed = listed

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return self.listed


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _asked(store: StationStore, tmp_path: Path, listed: tuple[RecordItem, ...]) -> int:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    platform = Platform(listed)
    scheduler = GbDownloadScheduler(platform, open_policy(), lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    await scheduler._pass(DEVICE, DeviceProgress())
    return len(platform.downloads)


def _first() -> RecordItem:
    item = record_item(CHANNEL, RECORDED_LOCAL, RECORDED_LOCAL + timedelta(minutes=10), file_path=CHANNEL)
    return replace(item, file_size_bytes=52_428_800)


async def test_two_recordings_listed_together_told_apart_by_file_size_are_both_asked_for(
        store: StationStore, tmp_path: Path) -> None:
    first = _first()
    second = replace(first, file_size_bytes=31_457_280)  # another recording, same times and path
    asked = await _asked(store, tmp_path, (first, second))
    assert asked == 2, (
        f"two recordings listed in one answer with the same channel, times and path but FileSize "
        f"{first.file_size_bytes} and {second.file_size_bytes}: {asked} download(s) asked for; the other "
        "was dropped by the listing without a word")


async def test_control_two_recordings_at_different_times_are_both_asked_for(
        store: StationStore, tmp_path: Path) -> None:
    first = _first()
    second = replace(first, start_time=first.start_time + timedelta(minutes=20),
                     end_time=first.end_time + timedelta(minutes=20), file_size_bytes=31_457_280)
    assert await _asked(store, tmp_path, (first, second)) == 2
