"""Which Catalog items a pass asks for recordings (review 17 finding 13a): not those whose id's type code
(digits 11-13) holds no video (business groups, virtual organisations, alarm inputs), unless the policy
names them; video channels beyond MAX_CHANNELS are counted in the operator view and one limited ledger
error. The scheduler's real pass, a real store and pipeline; the device of test_review17_channel_cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import MAX_CHANNELS, DeviceProgress, GbDownloadScheduler, is_video_channel

from .test_review17_channel_cap import DEVICE, NOW, Platform

CAMERA = "34020000001310000001"
IPC = "34020000001320000002"
GROUP = "34020000002150000001"
VIRTUAL = "34020000002160000001"
ALARM_IN = "34020000001340000001"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass(store: StationStore, tmp_path: Path, catalog: list[str],
                configured: tuple[str, ...] = ()) -> tuple[Platform, DeviceProgress, list[dict[str, Any]]]:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    devices = {DEVICE: SimpleNamespace(channels=configured)} if configured else {}
    policy = SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (now - timedelta(days=7), now),
        channels_for=lambda _d, c: [x for x in c if not configured or x in configured],
        devices=devices, transport_for=lambda _d: "udp", speed=1, utc_offset_minutes=480)
    platform = Platform(0)
    platform.channels = catalog
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    progress = DeviceProgress()
    await scheduler._pass(DEVICE, progress)
    return platform, progress, [e.data for e in store.ledger.entries() if e.type == "error"]


def test_the_type_code_says_which_items_hold_video() -> None:
    assert is_video_channel(CAMERA) and is_video_channel(IPC)
    assert is_video_channel("34020000001380000001")  # a mobile recorder (138)
    assert not any(is_video_channel(c) for c in (GROUP, VIRTUAL, ALARM_IN))


async def test_items_that_hold_no_video_are_not_asked(store: StationStore, tmp_path: Path) -> None:
    platform, progress, errors = await _pass(store, tmp_path, [CAMERA, GROUP, VIRTUAL, ALARM_IN, IPC])
    assert platform.asked == [CAMERA, IPC] and progress.not_video_channels == 3 and errors == []


async def test_control_a_configured_alarm_input_is_asked_all_the_same(store: StationStore,
                                                                     tmp_path: Path) -> None:
    platform, progress, _ = await _pass(store, tmp_path, [CAMERA, ALARM_IN], configured=(ALARM_IN,))
    assert platform.asked == [ALARM_IN] and progress.not_video_channels == 0


async def test_video_channels_past_the_cap_are_counted_and_on_the_ledger(store: StationStore,
                                                                         tmp_path: Path) -> None:
    channels = [f"340200000013100{i:05d}" for i in range(MAX_CHANNELS + 6)]
    platform, progress, errors = await _pass(store, tmp_path, [GROUP, *channels])
    assert platform.asked == channels[:MAX_CHANNELS] and progress.channels_left_out == 6
    [entry] = errors
    assert entry["channels_left_out"] == 6 and entry["channel_ids_left_out"] == channels[MAX_CHANNELS:]
