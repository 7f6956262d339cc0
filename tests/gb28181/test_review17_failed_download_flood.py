"""Review 17: review 16 limited the recurring download problems on the ledger (edge.custody.entry_limits:
first, then once in 6 h, a budget over all keys), but not the commonest one: a download that brings no
byte, or whose session cannot be made (the device answers every INVITE with an error, a carrier NAT
that gives the media another address so every download ends idle with nothing: README's own "known
limit"), is one `error` entry per listed recording at every pass (`GbDownloads._failed`), unlimited, and
such a recording is never given up (nothing was sealed). A device that lists many recordings (an answer
may hold 10000) and refuses every INVITE writes that many entries per pass, and a pass comes with every
registration (which the device drives) or window: the ledger grows without bound.

The scheduler's real passes, a real store and pipeline."""

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

DEVICE = "34020000001320000020"
CHANNEL = "34020000001310000020"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LOCAL_NOW = (NOW + timedelta(minutes=480)).replace(tzinfo=None)
RECORDINGS = 50
PASSES = 4


class Platform(ListingPlatform):
    """Lists RECORDINGS finished recordings; answers every Download INVITE with an error."""

    download_error = "INVITE answered 488 Not Acceptable Here"

    def __init__(self) -> None:
        super().__init__({DEVICE: CHANNEL})

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return tuple(record_item(CHANNEL, LOCAL_NOW - timedelta(hours=2, minutes=i),
                                 LOCAL_NOW - timedelta(hours=1, minutes=i), f"/sd/{i}.ps")
                     for i in range(RECORDINGS))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _error_entries_per_pass(store: StationStore, tmp_path: Path) -> list[int]:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    platform = Platform()
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    counts = []
    for _ in range(PASSES):  # one pass per registration of the device (it re-registers at will)
        before = sum(1 for e in store.ledger.entries() if e.type == "error")
        await scheduler._pass(DEVICE, DeviceProgress())
        counts.append(sum(1 for e in store.ledger.entries() if e.type == "error") - before)
    assert len(platform.downloads) == RECORDINGS * PASSES  # each recording is tried at each pass
    return counts


async def test_a_device_refusing_every_download_does_not_write_an_entry_per_recording_per_pass(
        store: StationStore, tmp_path: Path) -> None:
    counts = await _error_entries_per_pass(store, tmp_path)
    assert counts[0] >= 1  # never silent: the first pass says so
    assert sum(counts[1:]) <= PASSES, (
        f"error entries per pass {counts}: every pass writes one per recording again, unlimited (the "
        "other recurring download problems are limited to one per 6 h)")


async def test_control_the_first_pass_names_each_failing_recording(store: StationStore,
                                                                  tmp_path: Path) -> None:
    counts = await _error_entries_per_pass(store, tmp_path)
    assert counts[0] == RECORDINGS
    named = [e for e in store.ledger.entries() if e.type == "error" and e.data.get("stage") == "download"]
    assert all("488" in str(e.data.get("reason")) for e in named)
