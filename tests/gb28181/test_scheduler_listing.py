"""What the download scheduler does with a device's listing (edge.sources.gb28181.scheduler), beyond review
16's cases: recurring problems (a failing RecordInfo or Catalog, items of other channels, recordings ending
in 2099) reach the ledger once per period and their recovery too; recordings ending in the future are left
for a later pass by the device's clock (zone and measured offset), with a margin. Real pipeline and store;
the platform is a seam. Each refusal beside its control."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.custody.entry_limits import PROBLEM_REPEAT_S, LimitedEntries
from edge.gb28181.queries import QueryError, QueryTimeout
from edge.gb28181.sessions import SessionError
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000001"
OTHER = "34020000001310000002"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LOCAL_NOW = (NOW + timedelta(hours=8)).replace(tzinfo=None)


def _item(channel: str, start: datetime, end: datetime, path: str = "/sd/1.ps") -> RecordItem:
    return RecordItem(device_id=channel, name="rec", file_path=path, address="", start_time=start,
                      end_time=end, secrecy=0, type="time")


class Platform:
    def __init__(self, items: list[RecordItem], *, channels: tuple[str, ...] = (CHANNEL,),
                 clock_offset_s: float | None = 0.0) -> None:
        self.items = items
        self.channels = channels
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=clock_offset_s)}
        self.catalog_fails = False
        self.record_info_fails = False
        self.downloads: list[tuple[str, str]] = []
        self.asked: list[str] = []

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_device_status(self, device_id: str) -> Any:
        raise QueryTimeout(f"DeviceStatus of {device_id}: no answer (this device's clock is not measured)")

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        if self.catalog_fails:
            raise QueryError(f"Catalog of {device_id}: no answer within 30 s")
        return [SimpleNamespace(device_id=c) for c in self.channels]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        self.asked.append(channel_id)
        if self.record_info_fails:
            raise QueryError(f"RecordInfo of {channel_id}: no answer within 30 s")
        items = tuple(self.items) if channel_id == CHANNEL else ()
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=len(items), items=items, complete=True, parts=1,
                               duplicates=0)

    async def download(self, device_id: str, channel_id: str, start: str, *_a: Any, **_kw: Any) -> Any:
        self.downloads.append((channel_id, start))
        raise SessionError("the test's device does not stream")


class Clocks:
    def __init__(self) -> None:
        self.now = NOW
        self.monotonic = 1000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _scheduler(platform: Platform, store: StationStore, tmp_path: Path, clocks: Clocks,
               configured: tuple[str, ...] = (), every_channel: bool = False) -> GbDownloadScheduler:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    devices = {DEVICE: SimpleNamespace(channels=configured)} if configured else {}
    policy = SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (now - timedelta(days=7), now),
        channels_for=lambda _d, catalog: [c for c in catalog if every_channel or c in (CHANNEL, OTHER)],
        devices=devices, transport_for=lambda _d: "udp", speed=1, utc_offset_minutes=480)
    return GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                               spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                               now=lambda: clocks.now, monotonic=lambda: clocks.monotonic)


def _errors(store: StationStore, stage: str) -> list[dict[str, Any]]:
    return [e.data for e in store.ledger.entries() if e.type == "error" and e.data.get("stage") == stage]


# -- the limiter ---------------------------------------------------------------------------------------


def test_a_problem_is_recorded_first_then_once_a_period_with_the_repeats_counted() -> None:
    now = [0.0]
    problems = LimitedEntries(lambda: now[0], repeat_s=100, budget=10)
    assert problems.seen("k", "a") == {}
    assert problems.seen("k", "a") is None and problems.seen("k", "a") is None
    assert problems.seen("k", "b") == {}  # the control: another key is not held back
    now[0] = 100
    assert problems.seen("k", "a") == {"repeats_not_recorded": 2}
    assert problems.cleared("k", "a") == 0 and problems.cleared("k", "a") is None
    assert problems.seen("k", "a") == {}  # after its recovery, a new occurrence is recorded at once


def test_the_budget_bounds_entries_over_all_keys() -> None:
    problems = LimitedEntries(lambda: 0.0, repeat_s=100, budget=3)
    admitted = [problems.seen("k", str(i)) for i in range(10)]
    assert sum(a is not None for a in admitted) == 3
    assert problems.cleared("k", "5") is None  # never on the ledger: no recovery to record


def test_each_device_has_its_own_budget_and_the_station_a_cap() -> None:
    problems = LimitedEntries(lambda: 0.0, repeat_s=100, budget=3, station_budget=5)
    noisy = [problems.seen("future", str(i), "noisy") for i in range(10)]
    assert sum(a is not None for a in noisy) == 3
    assert problems.seen("record-info", "q", "quiet") == {}  # the noisy device spent only its own budget
    assert problems.seen("record-info", "r", "other") == {}
    assert problems.seen("record-info", "s", "third") is None  # the station's cap (5) reached
    assert problems.seen("record-info", "q2", "quiet") is None


# -- RecordInfo and Catalog failing --------------------------------------------------------------------


async def test_a_failing_record_info_is_on_the_ledger_once_a_period_and_its_recovery_too(
        store: StationStore, tmp_path: Path) -> None:
    clocks = Clocks()
    platform = Platform([_item(CHANNEL, LOCAL_NOW - timedelta(hours=2), LOCAL_NOW - timedelta(hours=1))])
    platform.record_info_fails = True
    scheduler = _scheduler(platform, store, tmp_path, clocks)
    for _ in range(3):
        await scheduler._pass(DEVICE, DeviceProgress())
    [failed] = _errors(store, "record-info")
    assert failed["channel_id"] == CHANNEL and "RecordInfo failed" in failed["reason"]
    clocks.monotonic += PROBLEM_REPEAT_S
    await scheduler._pass(DEVICE, DeviceProgress())
    assert _errors(store, "record-info")[-1]["repeats_not_recorded"] == 2
    platform.record_info_fails = False
    await scheduler._pass(DEVICE, DeviceProgress())
    await scheduler._pass(DEVICE, DeviceProgress())
    entries = _errors(store, "record-info")
    assert len(entries) == 3 and entries[-1]["resolved"] is True and "answers again" in entries[-1]["reason"]
    assert len(platform.downloads) == 2  # listed again: downloaded (refused by the test's device) each pass


async def test_a_failing_catalog_with_configured_channels_asks_them_and_is_no_error(
        store: StationStore, tmp_path: Path) -> None:
    platform = Platform([])
    platform.catalog_fails = True
    scheduler = _scheduler(platform, store, tmp_path, Clocks(), configured=(CHANNEL,))
    await scheduler._pass(DEVICE, DeviceProgress())
    assert platform.asked == [CHANNEL] and _errors(store, "catalog") == []
    unconfigured = Platform([])
    unconfigured.catalog_fails = True
    scheduler = _scheduler(unconfigured, store, tmp_path, Clocks())
    await scheduler._pass(DEVICE, DeviceProgress())
    await scheduler._pass(DEVICE, DeviceProgress())
    [entry] = _errors(store, "catalog")  # the control: nothing to ask, on the ledger (once)
    assert entry["device_id"] == DEVICE and unconfigured.asked == []
    unconfigured.catalog_fails = False
    await scheduler._pass(DEVICE, DeviceProgress())
    assert _errors(store, "catalog")[-1]["resolved"] is True and unconfigured.asked == [CHANNEL]


# -- items of other channels ---------------------------------------------------------------------------


async def test_an_item_of_another_allowed_channel_is_downloaded_under_its_own_id(
        store: StationStore, tmp_path: Path) -> None:
    start = LOCAL_NOW - timedelta(hours=2)
    platform = Platform([_item(OTHER, start, start + timedelta(minutes=5))], channels=(CHANNEL, OTHER))
    progress = DeviceProgress()
    await _scheduler(platform, store, tmp_path, Clocks())._pass(DEVICE, progress)
    assert platform.downloads == [(OTHER, start.isoformat())] and progress.wrong_channel == 0
    assert _errors(store, "record-info") == []


async def test_items_of_other_channels_are_counted_and_on_the_ledger_once_escaped(
        store: StationStore, tmp_path: Path) -> None:
    start = LOCAL_NOW - timedelta(hours=2)
    hostile = "3402000000131000000\u202e9\x1b[2J"
    platform = Platform([_item("34020000001310000009", start, start + timedelta(minutes=5)),
                         _item(hostile, start, start + timedelta(minutes=5), "/sd/2.ps")])
    scheduler = _scheduler(platform, store, tmp_path, Clocks())
    progress = DeviceProgress()
    await scheduler._pass(DEVICE, progress)
    await scheduler._pass(DEVICE, progress)
    assert platform.downloads == [] and progress.wrong_channel == 4
    [entry] = [e for e in _errors(store, "record-info") if "DeviceID" in e["reason"]]
    assert entry["recordings"] == 2 and "34020000001310000009" in entry["device_ids_listed"]
    assert "\u202e" not in str(entry) and "\x1b" not in str(entry)


# -- recordings ending in the future -------------------------------------------------------------------


@pytest.mark.parametrize("ahead, offset_s, downloaded", [
    (timedelta(seconds=-30), 0.0, True),
    (timedelta(seconds=30), 0.0, True),  # within the margin
    (timedelta(minutes=10), 0.0, False),
    (timedelta(hours=1), 7200.0, True),  # the device's clock runs 2 h ahead: its recording has ended
    (timedelta(hours=1), None, False),  # unmeasured offset: the station's clock in the devices' zone
    (timedelta(minutes=-10), -1200.0, False),  # the device's clock 20 min behind: not yet ended for it
])
async def test_the_end_is_judged_by_the_devices_clock(store: StationStore, tmp_path: Path, ahead: timedelta,
                                                      offset_s: float | None, downloaded: bool) -> None:
    end = LOCAL_NOW + ahead
    platform = Platform([_item(CHANNEL, end - timedelta(minutes=30), end)], clock_offset_s=offset_s)
    progress = DeviceProgress()
    await _scheduler(platform, store, tmp_path, Clocks())._pass(DEVICE, progress)
    assert bool(platform.downloads) is downloaded and progress.future == (0 if downloaded else 1)
    assert _errors(store, "record-info") == []  # a recording in progress is no error


async def test_a_recording_left_for_later_is_downloaded_once_it_has_ended(store: StationStore,
                                                                          tmp_path: Path) -> None:
    clocks = Clocks()
    end = LOCAL_NOW + timedelta(minutes=10)
    platform = Platform([_item(CHANNEL, end - timedelta(minutes=30), end)])
    scheduler = _scheduler(platform, store, tmp_path, clocks)
    await scheduler._pass(DEVICE, DeviceProgress())
    assert platform.downloads == []
    clocks.now += timedelta(minutes=15)
    await scheduler._pass(DEVICE, DeviceProgress())
    assert len(platform.downloads) == 1


async def test_an_absurd_end_is_on_the_ledger_once_per_recording(store: StationStore, tmp_path: Path) -> None:
    start = LOCAL_NOW - timedelta(hours=1)
    platform = Platform([_item(CHANNEL, start, datetime(2099, 1, 1)),
                         _item(CHANNEL, start, datetime(2098, 1, 1), "/sd/2.ps")])
    scheduler = _scheduler(platform, store, tmp_path, Clocks())
    progress = DeviceProgress()
    for _ in range(3):
        await scheduler._pass(DEVICE, progress)
    entries = [e for e in _errors(store, "record-info") if "after its clock's now" in e["reason"]]
    assert len(entries) == 2 and progress.future == 6 and platform.downloads == []
    assert {e["recording"]["end_time"] for e in entries} == {"2099-01-01T00:00:00", "2098-01-01T00:00:00"}


async def test_a_catalog_channel_whose_id_is_not_20_digits_is_not_asked(store: StationStore,
                                                                         tmp_path: Path) -> None:
    hostile = "3402000000131000000\n1"
    platform = Platform([], channels=(hostile, CHANNEL))
    scheduler = _scheduler(platform, store, tmp_path, Clocks(), every_channel=True)  # no channels configured
    await scheduler._pass(DEVICE, DeviceProgress())
    await scheduler._pass(DEVICE, DeviceProgress())
    assert platform.asked == [CHANNEL, CHANNEL]  # the control: the well-formed channel is asked
    [entry] = _errors(store, "catalog")
    assert entry["channel_ids_listed"] == ["3402000000131000000\\u000a1"]
