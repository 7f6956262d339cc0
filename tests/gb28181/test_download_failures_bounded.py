"""Failed downloads (no session, no byte) are bounded on the ledger (review 17 finding 8): per device and
pass the first MAX_FAILURES_NAMED named, the rest one summary entry; a recording failing so at
MAX_FAILED_PASSES passes is given up (one entry) and not asked for again. The scheduler's real passes, a
real store and pipeline; the device of test_review17_failed_download_flood (every INVITE refused)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import downloads as downloads_module
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler

from .test_review17_failed_download_flood import DEVICE, NOW, RECORDINGS, Platform


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _scheduler(store: StationStore, tmp_path: Path, platform: Platform) -> GbDownloadScheduler:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (now - timedelta(days=7), now),
        channels_for=lambda _d, catalog: list(catalog),
        devices={}, transport_for=lambda _d: "udp", speed=1, utc_offset_minutes=480)
    return GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                               spool=tmp_path / "spool", station_id="TEST-STATION", case={}, now=lambda: NOW)


def _errors(store: StationStore) -> list[dict[str, Any]]:
    return [e.data for e in store.ledger.entries() if e.type == "error"]


async def test_past_the_named_few_a_pass_summarises_and_a_recording_is_given_up_after_its_passes(
        store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "MAX_FAILURES_NAMED", 5)
    monkeypatch.setattr(downloads_module, "MAX_FAILED_PASSES", 3)
    platform = Platform()
    scheduler = _scheduler(store, tmp_path, platform)
    progress = DeviceProgress()
    await scheduler._pass(DEVICE, progress)
    first = _errors(store)
    named = [e for e in first if "passes_failed" in e]
    [summary] = [e for e in first if "failures_not_named" in e]
    assert len(named) == 5 and len(first) == 6
    assert summary["failures_not_named"] == RECORDINGS - 5 and "488" in summary["reason"]
    await scheduler._pass(DEVICE, progress)  # the next five named, the rest summarised
    assert len(_errors(store)) == 12
    assert platform.downloads == 2 * RECORDINGS
    await scheduler._pass(DEVICE, progress)  # the third failed pass: given up, five named, one summary
    third = _errors(store)[12:]
    given_up = [e for e in third if e.get("stage") == "given-up"]
    assert len(given_up) == 5 and all("failed at 3 passes" in e["reason"] for e in given_up)
    assert [e["given_up_not_named"] for e in third if "failures_not_named" in e] == [RECORDINGS - 5]
    await scheduler._pass(DEVICE, progress)  # given up: not asked for again, nothing more on the ledger
    assert platform.downloads == 3 * RECORDINGS and len(_errors(store)) == 18


async def test_control_below_the_passes_every_recording_is_asked_again(
        store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "MAX_FAILED_PASSES", 5)
    platform = Platform()
    scheduler = _scheduler(store, tmp_path, platform)
    for _ in range(4):
        await scheduler._pass(DEVICE, DeviceProgress())
    assert platform.downloads == 4 * RECORDINGS
    assert not [e for e in _errors(store) if e.get("stage") == "given-up"]
