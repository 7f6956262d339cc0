"""Review 17: review 16 made a pass's listing problems loud (failing Catalog/RecordInfo, malformed channel
ids, items of other channels, all on the ledger), but the channel cap stayed silent: `_channels` keeps the
first MAX_CHANNELS (64) of the Catalog's 20-digit ids and drops the rest without a word. A Catalog lists
more than video channels (the device itself, business groups and virtual organisations, alarm inputs:
all 20-digit ids), so on a 64-channel recorder (or a larger NVR) the channels past the cap are never asked
for recordings, at any pass, and neither the ledger nor the operator view says so.

The scheduler's real pass, a real store and pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer
from edge.gb28181.sessions import SessionError
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import open_policy

DEVICE = "34020000001320000026"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _channels(count: int) -> list[str]:
    return [f"340200000013100{i:05d}" for i in range(count)]


class Platform:
    def __init__(self, channels: int) -> None:
        self.channels = _channels(channels)
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=0.0)}
        self.asked: list[str] = []

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(device_id=c) for c in self.channels]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        self.asked.append(channel_id)
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=0, items=(), complete=True, parts=1, duplicates=0)

    async def download(self, *_a: Any, **_kw: Any) -> Any:
        raise SessionError("not reached")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass(store: StationStore, tmp_path: Path, channels: int) -> tuple[Platform, int]:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    platform = Platform(channels)
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    await scheduler._pass(DEVICE, DeviceProgress())
    errors = sum(1 for e in store.ledger.entries() if e.type == "error")
    return platform, errors


async def test_channels_past_the_cap_are_asked_or_said_to_be_left_out(store: StationStore,
                                                                      tmp_path: Path) -> None:
    platform, errors = await _pass(store, tmp_path, 70)
    left_out = set(platform.channels) - set(platform.asked)
    assert not left_out or errors >= 1, (
        f"{len(left_out)} of the Catalog's {len(platform.channels)} channels were never asked for "
        "recordings and no ledger entry says so")


async def test_control_a_catalog_within_the_cap_is_asked_whole(store: StationStore, tmp_path: Path) -> None:
    platform, errors = await _pass(store, tmp_path, 8)
    assert platform.asked == platform.channels and errors == 0
