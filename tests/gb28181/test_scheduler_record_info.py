"""The download scheduler's recording list (review 14, finding 2): a RecordInfo answer handed out
incomplete (a busy recorder's month passes one answer's bound, or parts never came) is asked again over the
two halves of its range, so every recording is listed; a list still incomplete at the smallest range is a
ledger error naming the channel and range, never a silent omission."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.queries import QueryTimeout
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import GbDownloadScheduler

DEVICE = "34020000001320000014"
CHANNEL = "34020000001310000014"
START = datetime(2026, 11, 5, tzinfo=UTC)
END = datetime(2026, 12, 5, tzinfo=UTC)


def _recording(n: int) -> RecordItem:
    start = datetime(2026, 11, 5) + timedelta(minutes=10 * n)
    return RecordItem(device_id=CHANNEL, name=f"rec{n}", file_path=f"/sd/{n}.ps", address="",
                      start_time=start, end_time=start + timedelta(minutes=5), secrecy=0, type="time")


RECORDINGS = [_recording(n) for n in range(4000)]  # one every 10 minutes for ~28 days


class Device:
    """A platform whose device lists at most `per_answer` recordings in one answer (the rest cut off,
    `complete` False), counting the questions."""

    def __init__(self, per_answer: int) -> None:
        self.per_answer = per_answer
        self.questions: list[tuple[datetime, datetime]] = []
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}

    async def query_device_status(self, device_id: str) -> Any:
        raise QueryTimeout(f"DeviceStatus of {device_id}: no answer (this device's clock is not measured)")

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        self.questions.append((start, end))
        naive_start, naive_end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        found = [r for r in RECORDINGS if r.end_time > naive_start and r.start_time < naive_end]
        items = tuple(found[: self.per_answer])
        return AssembledAnswer(source=device_id, sn=len(self.questions), cmd_type="RecordInfo",
                               device_id=channel_id, name="cam", sum_num=len(found), items=items,
                               complete=len(found) <= self.per_answer, parts=1, duplicates=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _scheduler(
    device: Device, store: StationStore, tmp_path: Path
) -> tuple[GbDownloadScheduler, IngestPipeline]:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
    scheduler = GbDownloadScheduler(device, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={})
    return scheduler, pipeline


async def test_an_answer_cut_short_is_asked_again_over_halves_until_every_recording_is_listed(
    store: StationStore, tmp_path: Path
) -> None:
    device = Device(per_answer=1000)
    scheduler, pipeline = _scheduler(device, store, tmp_path)
    listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, START, END)
    refs, whole = listing.recordings, listing.complete
    assert whole
    assert sorted(ref.file_path for ref in refs) == sorted(r.file_path for r in RECORDINGS)
    assert len(refs) == len(RECORDINGS)  # a recording across a middle is listed once
    assert len(device.questions) > 1
    assert not [e for e in store.ledger.entries() if e.type == "error"]
    # Control: a device that answers whole is asked once.
    once = Device(per_answer=10_000)
    scheduler, pipeline = _scheduler(once, store, tmp_path)
    listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, START, END)
    refs, whole = listing.recordings, listing.complete
    assert whole and len(refs) == len(RECORDINGS) and len(once.questions) == 1


async def test_a_list_still_incomplete_at_the_smallest_range_is_a_ledger_error(
    store: StationStore, tmp_path: Path
) -> None:
    device = Device(per_answer=0)  # never lists anything whole
    scheduler, pipeline = _scheduler(device, store, tmp_path)
    listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, START, END)
    refs, whole = listing.recordings, listing.complete
    assert not whole and refs == []
    errors = [e for e in store.ledger.entries() if e.type == "error"]
    assert len(errors) == 1  # one entry for the channel, however many ranges stayed incomplete
    error = errors[0].data
    assert (error["stage"], error["channel_id"]) == ("record-info", CHANNEL)
    assert "stayed incomplete" in error["reason"] and error["ranges"]
    assert len(error["ranges"]) + error["ranges_not_listed"] > 1
    # Bounded: a range of an hour or less is never split, and at most 2**10 leaves.
    assert all(end - start >= timedelta(minutes=30) for start, end in device.questions)
    assert len(device.questions) <= 2 ** 11
