"""Fixtures of the room tests: a real station store and pipeline, lavfi sources, a ledger watch."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.custody.ledger import LedgerEntry
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from tests.prerequisites import require

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
STATION = "ROOM-PC-1"


def lavfi_source(source_id: str, *, size: str = "160x120", rate: int = 25, audio: bool = False,
                 codec: str = "encode") -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {"format": "lavfi", "url": f"testsrc2=size={size}:rate={rate}", "realtime": True}]
    if audio:
        inputs.append({"format": "lavfi", "url": "sine=frequency=440:sample_rate=48000", "realtime": True})
    return {"id": source_id, "name": f"source {source_id}", "codec": codec, "input": inputs}


def rooms_config(*sources: dict[str, Any], **settings: Any) -> RoomsSection:
    return RoomsSection.model_validate({
        "segment_time_s": 1.0, "stale_margin_s": 2.0, "stop_timeout_s": 3.0,
        "restart_backoff_initial_s": 0.2, "restart_backoff_max_s": 0.5, "start_min_free_bytes": 0,
        # A source's start on a loaded test machine (ffmpeg's own start, a probe, a GB INVITE) may take
        # seconds: the tests of the late-start gap set their own threshold (test_review21_late_start).
        "late_start_gap_s": 10.0,
        # The tests' disks are small (a 64 MiB tmpfs): the least margin the sources' default ceiling allows.
        "record_margin_bytes": 5 << 20, **settings,
        "room": [{"id": "xw-1", "name": "第一询问室", "address": "文三路 100 号",
                  "source": list(sources) or [lavfi_source("a")]}],
    })


@pytest.fixture
def ffmpeg() -> None:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", STATION)
    yield s
    s.close()


class LedgerWatch:
    """Every ledger entry as it is appended (from any thread); `until` awaits a condition on them."""

    def __init__(self, store: StationStore) -> None:
        self.entries: list[LedgerEntry] = []
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        store.ledger.add_listener(self._seen)

    def _seen(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        self.loop.call_soon_threadsafe(self.changed.set)

    def of(self, type_: str, **match: Any) -> list[LedgerEntry]:
        return [e for e in self.entries
                if e.type == type_ and all(e.data.get(k) == v for k, v in match.items())]

    async def until(self, condition: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        async with asyncio.timeout(timeout_s):
            while not (found := condition()):
                self.changed.clear()
                await self.changed.wait()
        return found


@pytest.fixture
async def watch(store: StationStore) -> AsyncIterator[LedgerWatch]:
    yield LedgerWatch(store)


class UploadsSeen:
    """The pipeline's seam to the uplink (its `UploadQueue` protocol): which items it was told of."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def item_sealed(self, item: str) -> None:
        self.items.append(item)


@pytest.fixture
def uploads() -> UploadsSeen:
    return UploadsSeen()


@pytest.fixture
def pipeline(store: StationStore, uploads: UploadsSeen) -> IngestPipeline:
    return IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=256 * 1024), uploads=uploads)


def ffprobe_json(path: Path) -> dict[str, Any]:
    entries = "stream=codec_type,nb_read_frames:format=duration:format_tags"
    done = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", entries, "-of", "json",
                           str(path)], capture_output=True, text=True, check=True, timeout=30)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc
