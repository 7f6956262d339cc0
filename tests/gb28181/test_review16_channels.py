"""Review 16: the scheduler takes a RecordInfo item's own DeviceID as the recording's channel, never
checking it against the channel it asked about. A device (or an answer assembled for it) listing items of
another channel under the channel the policy allows gets that other channel's recordings downloaded and
sealed, though the policy's `channels` excludes it; and the item's DeviceID is unvalidated text (any
characters) that the downloads print raw into the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.queries import QueryTimeout
from edge.gb28181.sessions import SessionError
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler

DEVICE = "34020000001320000016"
ALLOWED = "34020000001310000001"
EXCLUDED = "34020000001310000002"


def _item(channel: str) -> RecordItem:
    return RecordItem(device_id=channel, name="rec", file_path=f"/sd/{channel[-4:]}.ps", address="",
                      start_time=datetime(2026, 12, 5, 9, 0), end_time=datetime(2026, 12, 5, 9, 5),
                      secrecy=0, type="time")


class Platform:
    """A device with channels ALLOWED and EXCLUDED whose RecordInfo for any channel lists `listed`."""

    def __init__(self, listed: list[str]) -> None:
        self.listed = listed
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}
        self.downloads: list[str] = []

    async def query_device_status(self, device_id: str) -> Any:
        raise QueryTimeout(f"DeviceStatus of {device_id}: no answer (this device's clock is not measured)")

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(device_id=ALLOWED), SimpleNamespace(device_id=EXCLUDED)]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        items = tuple(_item(c) for c in self.listed)
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam",
                               sum_num=len(items), items=items, complete=True, parts=1, duplicates=0)

    async def download(self, device_id: str, channel_id: str, *_args: Any, **_kw: Any) -> Any:
        self.downloads.append(channel_id)
        raise SessionError("the test's device does not stream")


def _policy() -> SimpleNamespace:
    return SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (datetime(2026, 12, 5, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC)),
        channels_for=lambda _d, catalog: [c for c in catalog if c == ALLOWED],  # the configured channels
        devices={}, transport_for=lambda _d: "udp", speed=1, utc_offset_minutes=480)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass(platform: Platform, store: StationStore, tmp_path: Path) -> None:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    scheduler = GbDownloadScheduler(platform, _policy(), lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={})
    await scheduler._pass(DEVICE, DeviceProgress())


async def test_an_excluded_channels_recording_listed_under_an_allowed_channel_is_not_downloaded(
        store: StationStore, tmp_path: Path) -> None:
    platform = Platform([ALLOWED, EXCLUDED])
    await _pass(platform, store, tmp_path)
    assert platform.downloads == [ALLOWED], platform.downloads


async def test_control_the_allowed_channels_own_recording_is_downloaded(
        store: StationStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    platform = Platform([ALLOWED])
    with caplog.at_level(logging.INFO):
        await _pass(platform, store, tmp_path)
    assert platform.downloads == [ALLOWED]
    messages = [r.getMessage() for r in caplog.records]
    assert any(ALLOWED in m for m in messages) and not any("\n" in m for m in messages)


async def test_an_items_device_id_is_never_logged_raw(store: StationStore, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    forged = ALLOWED + "\n2026-12-05 09:00:00 INFO edge: forged line"
    platform = Platform([forged])
    with caplog.at_level(logging.INFO):
        await _pass(platform, store, tmp_path)
    assert platform.downloads == [] or "\n" not in "".join(r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records if "\n" in r.getMessage()]
