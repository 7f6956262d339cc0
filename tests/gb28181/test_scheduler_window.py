"""The schedule's download window (edge.gb28181.policy `may_download_now`, `when = "schedule"`) as the
download scheduler keeps it: a device coming online outside the window gets no pass, the window opening
starts one for the devices online, and a pass that outlasts the window starts no more downloads. The real
policy (window in the devices' local time, wrapping midnight), real pipeline and store; the platform is a
seam. Each refusal beside its control."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.policy import DevicePolicy, DownloadPolicy
from edge.gb28181.sessions import SessionError
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import GbDownloadScheduler

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000001"
# Beijing time 22:00-06:00 is UTC 14:00-22:00.
INSIDE = datetime(2026, 12, 5, 15, 0, tzinfo=UTC)  # 23:00 local
OUTSIDE = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)  # 12:00 local


def _policy(when: str = "schedule") -> DownloadPolicy:
    return DownloadPolicy(enabled=True, when=when, window=(22 * 60, 6 * 60), lookback_days=7, speed=1,
                          media_transport="udp", utc_offset_minutes=480, devices={DEVICE: DevicePolicy()})


class Registry:
    def __init__(self) -> None:
        self.device = SimpleNamespace(device_id=DEVICE, online=True, clock_offset_s=0.0)

    def get(self, device_id: str) -> Any:
        return self.device if device_id == DEVICE else None

    def devices(self) -> list[Any]:
        return [self.device]


class Platform:
    def __init__(self, clock: Clock, recordings: int = 2, *, closes_window: bool = False) -> None:
        self.clock = clock
        self.registry = Registry()
        local = (OUTSIDE + timedelta(hours=8)).replace(tzinfo=None) - timedelta(hours=3)
        self.items = tuple(RecordItem(device_id=CHANNEL, name=f"rec {i}", file_path=f"/sd/{i}.ps", address="",
                                      start_time=local + timedelta(minutes=10 * i),
                                      end_time=local + timedelta(minutes=10 * i + 5), secrecy=0, type="time")
                           for i in range(recordings))
        self.closes_window = closes_window
        self.downloads: list[str] = []

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(device_id=CHANNEL)]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=len(self.items), items=self.items, complete=True, parts=1,
                               duplicates=0)

    def device_time_to_unix(self, moment: str) -> int:
        return int((datetime.fromisoformat(moment).replace(tzinfo=UTC) - timedelta(hours=8)).timestamp())

    async def download(self, device_id: str, channel_id: str, start: str, *_a: Any, **_kw: Any) -> Any:
        self.downloads.append(start)
        if self.closes_window:
            self.clock.now = OUTSIDE  # the window closes while this one downloads
        raise SessionError("the test's device does not stream")


class Clock:
    """The scheduler's UTC clock; `read` is set each time the scheduler reads it (the run loop's tick)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.reads = 0
        self.read = asyncio.Event()

    def __call__(self) -> datetime:
        self.reads += 1
        self.read.set()
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _scheduler(platform: Platform, policy: DownloadPolicy, store: StationStore,
               tmp_path: Path) -> GbDownloadScheduler:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    return GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                               spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                               now=platform.clock, check_interval_s=0.001)


async def _one_pass(scheduler: GbDownloadScheduler) -> None:
    async with asyncio.timeout(30):
        async with scheduler.pass_ended:
            await scheduler.pass_ended.wait_for(lambda: scheduler.passes_done >= 1)


def test_the_policy_window_wraps_midnight_in_the_devices_zone() -> None:
    policy = _policy()
    assert policy.may_download_now(INSIDE) and not policy.may_download_now(OUTSIDE)
    assert policy.may_download_now(datetime(2026, 12, 5, 21, 59, tzinfo=UTC))  # 05:59 local
    assert not policy.may_download_now(datetime(2026, 12, 5, 22, 0, tzinfo=UTC))  # 06:00 local
    assert _policy("on-registration").may_download_now(OUTSIDE)  # the control: no window


async def test_a_device_online_outside_the_window_gets_no_pass(store: StationStore, tmp_path: Path) -> None:
    platform = Platform(Clock(OUTSIDE))
    scheduler = _scheduler(platform, _policy(), store, tmp_path)
    scheduler.device_online(DEVICE)
    assert scheduler._runs == {} and platform.downloads == []


@pytest.mark.parametrize("policy, now", [(_policy(), INSIDE), (_policy("on-registration"), OUTSIDE)])
async def test_control_a_device_online_inside_the_window_or_without_one_is_downloaded(
        store: StationStore, tmp_path: Path, policy: DownloadPolicy, now: datetime) -> None:
    platform = Platform(Clock(now))
    scheduler = _scheduler(platform, policy, store, tmp_path)
    scheduler.device_online(DEVICE)
    await _one_pass(scheduler)
    assert len(platform.downloads) == 2


async def test_a_pass_asked_for_outside_the_window_downloads_nothing(store: StationStore,
                                                                    tmp_path: Path) -> None:
    platform = Platform(Clock(OUTSIDE))
    scheduler = _scheduler(platform, _policy(), store, tmp_path)
    scheduler.request(DEVICE)  # a device that came back during a pass: `again`, at any time
    await _one_pass(scheduler)
    assert platform.downloads == []
    assert "window" in (scheduler.snapshot()[DEVICE]["last_problem"] or "")


async def test_the_window_opening_starts_a_pass_for_the_devices_online(store: StationStore,
                                                                      tmp_path: Path) -> None:
    clock = Clock(OUTSIDE)
    platform = Platform(clock)
    scheduler = _scheduler(platform, _policy(), store, tmp_path)
    runner = asyncio.ensure_future(scheduler.run())
    try:
        for _ in range(3):  # the run loop looked at the clock three times, outside the window
            clock.read.clear()
            await asyncio.wait_for(clock.read.wait(), 10)
        assert scheduler.passes_done == 0 and platform.downloads == []
        clock.now = INSIDE
        await _one_pass(scheduler)
        assert len(platform.downloads) == 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


@pytest.mark.parametrize("closes, downloads", [(True, 1), (False, 2)])
async def test_a_pass_that_outlasts_the_window_starts_no_more_downloads(
        store: StationStore, tmp_path: Path, closes: bool, downloads: int) -> None:
    platform = Platform(Clock(INSIDE), closes_window=closes)
    scheduler = _scheduler(platform, _policy(), store, tmp_path)
    scheduler.device_online(DEVICE)
    await _one_pass(scheduler)
    assert len(platform.downloads) == downloads
    view = scheduler.snapshot()[DEVICE]
    assert view["failed"] == downloads  # the test's device streams nothing: each one tried is a failure
