"""Review 22: a RecordInfo item the codec cannot read is left out of the listing silently: the recording
is never downloaded, and neither the ledger nor the status says so.

drivers/gb28181/manscdp.py leaves out one unreadable item of a part (a FileSize of `-1`, which firmware
uses for "unknown"; a FileSize in 19+ digits, such as 2**64-1; a non-numeric Secrecy; an hour 24; an
EndTime before its StartTime) and describes it in `item_problems` / `items_left_out`, counting it towards
SumNum so that the answer still completes. Nothing in edge/ reads `item_problems`, and the scheduler's
`_list_recordings` uses `items_left_out` only for an answer that is incomplete: a complete answer with
items left out gives a listing marked whole, and the recording is neither downloaded nor named anywhere
(README: "a recording that was never listed is never missing silently", review 14).

Real codec: the device's XML as built by the codec, one item's FileSize changed to what the device wrote,
parsed and joined by the real MultipartAssembler; the scheduler's real listing. Control: the same answer
with a readable FileSize lists both recordings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import (
    AssembledAnswer,
    MultipartAssembler,
    RecordItem,
    build_record_info_responses,
    parse_message,
)
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import GbDownloadScheduler

DEVICE = "34020000001320000061"
CHANNEL = "34020000001310000061"
START = datetime(2026, 12, 4, tzinfo=UTC)
END = datetime(2026, 12, 5, tzinfo=UTC)


def _recording(n: int) -> RecordItem:
    start = datetime(2026, 12, 4, 9) + timedelta(minutes=10 * n)
    return RecordItem(device_id=CHANNEL, name=f"rec{n}", file_path=f"/sd/{n}.mp4", address="",
                      start_time=start, end_time=start + timedelta(minutes=5), secrecy=0, type="time",
                      file_size_bytes=1000 + n)


class Platform:
    """Answers RecordInfo with the device's XML, read by the real codec and assembler."""

    def __init__(self, second_file_size: str) -> None:
        self.second_file_size = second_file_size
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        body = build_record_info_responses(5, channel_id, "cam", [_recording(0), _recording(1)],
                                           per_message=10)[0]
        body = body.replace(b"<FileSize>1001</FileSize>",
                            f"<FileSize>{self.second_file_size}</FileSize>".encode())
        answer = MultipartAssembler(timeout_s=30).add(device_id, parse_message(body), now_s=0.0)
        assert answer is not None
        return answer


async def _listing(tmp_path: Path, second_file_size: str) -> tuple[int, bool, list[dict[str, Any]]]:
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
        scheduler = GbDownloadScheduler(Platform(second_file_size), policy,  # type: ignore[arg-type]
                                        lambda: pipeline, spool=tmp_path / "spool", station_id="TEST-STATION",
                                        case={})
        listing = await scheduler._list_recordings(pipeline, DEVICE, CHANNEL, START, END)
        said = [e.data for e in store.ledger.entries() if e.type == "error"]
        return len(listing.recordings), listing.complete, said
    finally:
        store.close()


async def test_an_unreadable_record_item_is_not_left_out_silently(tmp_path: Path) -> None:
    listed, whole, said = await _listing(tmp_path, "-1")
    assert listed == 2 or not whole or said, (
        f"the device listed 2 recordings, one with FileSize -1: {listed} listed, the listing marked "
        f"{'whole' if whole else 'incomplete'}, {len(said)} error entries")


async def test_control_a_readable_file_size_lists_both(tmp_path: Path) -> None:
    assert await _listing(tmp_path, "1001") == (2, True, [])


@pytest.mark.parametrize("file_size", ["-1", "18446744073709551615"])
async def test_the_ledger_names_the_unreadable_item_and_the_listing_is_not_whole(tmp_path: Path,
                                                                                 file_size: str) -> None:
    """What the fix does, beyond the either-or above: the readable recording is listed, the list is not
    taken as whole, and one error entry says how many were left out, over which range, and why (the
    codec's words), with the item's digest."""
    listed, whole, said = await _listing(tmp_path, file_size)
    assert (listed, whole) == (1, False)
    [entry] = said
    assert entry["items_left_out"] == 1 and entry["channel_id"] == CHANNEL
    assert entry["ranges"] == [f"{START.isoformat()} to {END.isoformat()}"]
    assert "FileSize" in entry["problems"][0]["problem"] and entry["problems"][0]["item_digest"]
