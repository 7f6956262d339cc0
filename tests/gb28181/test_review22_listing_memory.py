"""Review 22: one channel's recording list grows without a bound in memory.

An answer is bounded (40 000 items, 32 MiB: `MAX_ITEMS_PER_ANSWER`), but `_list_recordings` asks an
incomplete answer's range again in halves, down to an hour, up to 10 levels deep, and keeps every item of
every answer in one dict (`listed`) until the channel's pass has it all: a 7-day lookback is up to ~500
questions, each free to bring another 40 000 distinct recordings (a device that answers at its answer
bound with SumNum one higher, distinct FilePaths inside each asked range). The bound on one answer does not
bound the listing: a device in the field (its own password is all it needs) makes the agent hold tens of
millions of `RecordingRef`s, gigabytes, and the agent is killed for memory (DESIGN invariant 5: memory is
bounded whatever the input).

The platform is a stand-in that answers RecordInfo with AssembledAnswers as the real assembler hands
them out at its item bound (complete False); to keep the test light it does so for 5 questions and
answers the rest empty. The listing holds 200 000 recordings of one channel (about 0.9 KiB each as
measured here: 20 million would be some 18 GiB). Control: a device with one complete answer of 40 000 is
listed whole, 40 000."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import MAX_ITEMS_PER_ANSWER, AssembledAnswer, RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import scheduler as scheduler_module
from edge.sources.gb28181.scheduler import GbDownloadScheduler

DEVICE = "34020000001320000091"
CHANNEL = "34020000001310000091"
START = datetime(2026, 11, 28, tzinfo=UTC)
END = datetime(2026, 12, 5, tzinfo=UTC)


class Flooding:
    """Answers `full_answers` questions with MAX_ITEMS_PER_ANSWER distinct recordings inside the asked
    range, handed out incomplete (one more was announced); the rest with nothing."""

    def __init__(self, full_answers: int, complete: bool) -> None:
        self.full_answers = full_answers
        self.complete = complete
        self.questions = 0
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        self.questions += 1
        items: tuple[RecordItem, ...] = ()
        if self.questions <= self.full_answers:
            at = start.replace(tzinfo=None)
            items = tuple(RecordItem(device_id=CHANNEL, name="", file_path=f"/q{self.questions}/{n}",
                                     address="", start_time=at, end_time=at + timedelta(seconds=1),
                                     secrecy=0, type="time") for n in range(MAX_ITEMS_PER_ANSWER))
        return AssembledAnswer(source=device_id, sn=self.questions, cmd_type="RecordInfo",
                               device_id=channel_id, name="cam", sum_num=len(items) + (not self.complete),
                               items=items, complete=self.complete or not items, parts=1, duplicates=0)


async def _listed(tmp_path: Path, device: Flooding) -> int:
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
        scheduler = GbDownloadScheduler(device, policy, lambda: pipeline,  # type: ignore[arg-type]
                                        spool=tmp_path / "spool", station_id="TEST-STATION", case={})
        listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, START, END)
        return len(listing.recordings)
    finally:
        store.close()


async def test_one_channels_listing_is_bounded_in_memory(tmp_path: Path) -> None:
    device = Flooding(full_answers=5, complete=False)
    listed = await _listed(tmp_path, device)
    assert listed <= 2 * MAX_ITEMS_PER_ANSWER, (
        f"{device.questions} questions, {listed} recordings of one channel held at once (each answer is "
        f"bounded to {MAX_ITEMS_PER_ANSWER}; the halving went on, and would have for ~500 questions)")


async def test_control_one_complete_answer_is_listed_whole(tmp_path: Path) -> None:
    device = Flooding(full_answers=1, complete=True)
    assert await _listed(tmp_path, device) == MAX_ITEMS_PER_ANSWER and device.questions == 1


class Hourly:
    """A recording every hour; a range longer than a day is answered incomplete (too many to say), so the
    listing asks day by day."""

    def __init__(self) -> None:
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        if end - start > timedelta(days=1):
            return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                                   name="cam", sum_num=10**6, items=(), complete=False, parts=1, duplicates=0)
        hours = int((end - start).total_seconds() // 3600)
        at = start.replace(tzinfo=None)
        starts = [at + timedelta(hours=n) for n in range(hours)]
        items = tuple(RecordItem(device_id=CHANNEL, name="", file_path=f"/{t.isoformat()}", address="",
                                 start_time=t, end_time=t + timedelta(minutes=5), secrecy=0, type="time")
                      for t in starts)
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=len(items), items=items, complete=True, parts=1,
                               duplicates=0)


async def test_a_channel_over_the_bound_is_listed_over_passes_each_from_where_the_last_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound does not make the rest unreachable: the next pass begins where the last one stopped, so
    every recording is listed within a few passes, each pass holding at most one answer beyond the bound,
    and the stop is on the ledger. (Bound lowered to 30 here: 4 days of hourly recordings, 24 an answer.)"""
    monkeypatch.setattr(scheduler_module, "MAX_LISTED_PER_PASS", 30)
    start, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
        scheduler = GbDownloadScheduler(Hourly(), policy, lambda: pipeline,  # type: ignore[arg-type]
                                        spool=tmp_path / "spool", station_id="TEST-STATION", case={})
        seen: set[str] = set()
        for _ in range(2):
            listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, start, end)
            assert len(listing.recordings) <= 30 + 24 and not listing.complete
            seen |= {ref.start_time for ref in listing.recordings}
        assert len(seen) == 4 * 24, f"{len(seen)} of 96 hourly recordings listed over two passes"
        stops = [e.data for e in store.ledger.entries() if e.type == "error"
                 and "the next pass" in str(e.data.get("reason"))]
        day3 = datetime(2026, 12, 3, tzinfo=UTC)
        assert stops and stops[0]["ranges_left_for_next_pass"] == [f"{day3.isoformat()} to {end.isoformat()}"]
    finally:
        store.close()
