"""Failed downloads (no session, no byte) are bounded on the ledger (review 17 finding 8): per device and
pass the first MAX_FAILURES_NAMED named, the rest one summary entry; a recording failing so at
MAX_FAILED_PASSES passes over FAILED_GIVE_UP_AFTER_S is given up (one entry) and not asked for again until
GIVEN_UP_RETRY_S later (review 20: nothing of it is sealed, so not for ever). The scheduler's real passes,
a real store and pipeline, its clock stepped by the test; the device of test_review17_failed_download_flood
(every INVITE refused)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import downloads as downloads_module
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import open_policy

from .test_review17_failed_download_flood import DEVICE, NOW, RECORDINGS, Platform


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _scheduler(store: StationStore, tmp_path: Path, platform: Platform,
               now: list[datetime] | None = None) -> GbDownloadScheduler:
    """The scheduler on the wall clock `now`; its monotonic clock runs with it while it goes forward
    (the give-up's spans must pass on both, review 21) and stands still when it is stepped back."""
    clock = now if now is not None else [NOW]
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = open_policy()
    furthest = [NOW]

    def monotonic() -> float:
        furthest[0] = max(furthest[0], clock[0])
        return (furthest[0] - NOW).total_seconds()

    return GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                               spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                               now=lambda: clock[0], monotonic=monotonic)


def _errors(store: StationStore) -> list[dict[str, Any]]:
    return [e.data for e in store.ledger.entries() if e.type == "error"]


async def test_past_the_named_few_a_pass_summarises_and_a_recording_is_given_up_after_its_passes(
        store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "MAX_FAILURES_NAMED", 5)
    monkeypatch.setattr(downloads_module, "MAX_FAILED_PASSES", 3)
    platform = Platform()
    now = [NOW]
    scheduler = _scheduler(store, tmp_path, platform, now)
    progress = DeviceProgress()
    await scheduler._pass(DEVICE, progress)
    first = _errors(store)
    named = [e for e in first if "passes_failed" in e]
    [summary] = [e for e in first if "failures_not_named" in e]
    assert len(named) == 5 and len(first) == 6
    assert summary["failures_not_named"] == RECORDINGS - 5 and "488" in summary["reason"]
    now[0] += timedelta(hours=1)
    await scheduler._pass(DEVICE, progress)  # the next five named, the rest summarised
    assert len(_errors(store)) == 12
    assert len(platform.downloads) == 2 * RECORDINGS
    now[0] += timedelta(hours=1)
    await scheduler._pass(DEVICE, progress)  # the third failed pass, but within two hours: not given up
    assert len(platform.downloads) == 3 * RECORDINGS
    assert not [e for e in _errors(store) if e.get("stage") == "given-up"]
    before = len(_errors(store))
    now[0] = NOW + timedelta(seconds=downloads_module.FAILED_GIVE_UP_AFTER_S)
    await scheduler._pass(DEVICE, progress)  # the fourth, two days after the first: given up
    fourth = _errors(store)[before:]
    given_up = [e for e in fourth if e.get("stage") == "given-up"]
    assert len(given_up) == 5 and all("failed at 4 passes over 48 h" in e["reason"] for e in given_up)
    assert all(e["tries_since_given_up"] == 0 and "asked for again at the first pass 24 h from now"
               in e["reason"] for e in given_up)
    assert [e["given_up_not_named"] for e in fourth if "failures_not_named" in e] == [RECORDINGS - 5]
    after_give_up = len(_errors(store))
    now[0] += timedelta(seconds=downloads_module.GIVEN_UP_RETRY_S - 1)
    await scheduler._pass(DEVICE, progress)  # given up: not asked for again within the day, nothing written
    assert len(platform.downloads) == 4 * RECORDINGS and len(_errors(store)) == after_give_up
    now[0] += timedelta(seconds=1)
    await scheduler._pass(DEVICE, progress)  # a day later: asked again, failed again, given up again
    assert len(platform.downloads) == 5 * RECORDINGS
    retried = _errors(store)[after_give_up:]
    again = [e for e in retried if e.get("stage") == "given-up"]
    assert len(again) == 5 and all(e["tries_since_given_up"] == 1 for e in again)
    assert [e["given_up_not_named"] for e in retried if "failures_not_named" in e] == [RECORDINGS - 5]
    now[0] += timedelta(hours=1)
    await scheduler._pass(DEVICE, progress)  # the next try is a day after that one
    assert len(platform.downloads) == 5 * RECORDINGS and len(_errors(store)) == after_give_up + 6


async def test_a_station_clock_stepped_back_asks_a_given_up_recording_again(
        store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The give-up's day is read on the station's clock; stepped back (an operator or NTP correcting it),
    the recording is asked again at once rather than waiting for the clock to reach the give-up again."""
    monkeypatch.setattr(downloads_module, "MAX_FAILED_PASSES", 2)
    platform = Platform()
    now = [NOW]
    scheduler = _scheduler(store, tmp_path, platform, now)
    await scheduler._pass(DEVICE, DeviceProgress())
    now[0] += timedelta(seconds=downloads_module.FAILED_GIVE_UP_AFTER_S)
    await scheduler._pass(DEVICE, DeviceProgress())  # given up
    await scheduler._pass(DEVICE, DeviceProgress())
    assert len(platform.downloads) == 2 * RECORDINGS  # control: given up, not asked within the day
    now[0] = NOW  # two days back (the recordings still ended before it)
    await scheduler._pass(DEVICE, DeviceProgress())
    assert len(platform.downloads) == 3 * RECORDINGS


async def test_control_below_the_passes_every_recording_is_asked_again(
        store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "MAX_FAILED_PASSES", 5)
    platform = Platform()
    scheduler = _scheduler(store, tmp_path, platform)
    for _ in range(4):
        await scheduler._pass(DEVICE, DeviceProgress())
    assert len(platform.downloads) == 4 * RECORDINGS
    assert not [e for e in _errors(store) if e.get("stage") == "given-up"]
