"""Review 17: the media a download had received when the station crashed (power cut, kill -9, OOM) is
deleted at the next start (`GbDownloadScheduler._clear_spool`) with a log line and nothing on the ledger.
A download cut short by the device going offline is sealed as it came ("what came is evidence of what
came", marked interrupted); one cut short by the station's own crash is discarded and the record never
says it existed: which recording, how many bytes, that they were removed. The recording is usually still
on the recorder, but not always (a loop-recording recorder overwrites its oldest files), and DESIGN's
"every arrow is a ledger event" holds for every other removal of received media.

Real scheduler start (`run`), real store, pipeline and files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.gb28181.policy import DownloadPolicy
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import GB28181_SPOOL_DIR, GbDownloadScheduler

STEM = "download-0123456789abcdef0123456789abcdef"
RECEIVED = 256 * 1024


class Platform:
    def __init__(self) -> None:
        self.registry: dict[str, Any] = {}

    def add_online_listener(self, _callback: Any) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _start_after_a_crash(store: StationStore, tmp_path: Path) -> Path:
    spool = tmp_path / "store" / GB28181_SPOOL_DIR
    spool.mkdir(mode=0o700, exist_ok=True)
    raw = spool / f"{STEM}.ps"
    raw.write_bytes(b"\x00\x00\x01\xba" + b"\x55" * (RECEIVED - 4))  # what had come when the power went
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                            media_transport="udp", utc_offset_minutes=480)
    scheduler = GbDownloadScheduler(Platform(), policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=spool, station_id="TEST-STATION", case={})
    task = asyncio.ensure_future(scheduler.run())
    try:
        async with asyncio.timeout(10):
            while raw.exists():
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # anything the start writes after the removal
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return raw


async def test_received_media_removed_at_start_is_on_the_ledger(store: StationStore, tmp_path: Path) -> None:
    await _start_after_a_crash(store, tmp_path)
    every = list(store.ledger.entries())
    entries = [e for e in every if STEM in str(e.data) or "spool" in str(e.data)]
    assert entries, ("the raw PS of a download the crash interrupted (its received media) was deleted at "
                     f"start; the ledger has {len(every)} entries, none says so")


async def test_control_the_start_does_remove_it(store: StationStore, tmp_path: Path) -> None:
    raw = await _start_after_a_crash(store, tmp_path)
    assert not raw.exists()
