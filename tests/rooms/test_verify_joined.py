"""`edge verify` of joined files (edge.verify.joined): the entry's claims against the store's sealed
records (pure), and, with real ffmpeg, a joiner that leaves a segment out is caught by the packet counts
while a true join verifies (the control)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import joined as joined_module
from edge.rooms.service import RoomService
from edge.verify.joined import SealedFacts, joined_entry_problems
from edge.verify.room_products import left_out_problems
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

FIELDS: dict[str, Any] = {"case_number": "A3301062026000778", "collector": "张三", "collector_no": "012345",
                          "subject": "询问过程"}

SEALED = {
    "j": SealedFacts(30, "f" * 64, "items/j.mp4", "s1", "a"),
    "s1": SealedFacts(10, "1" * 64, "items/1.mp4", "s1", "a"),
    "s2": SealedFacts(20, "2" * 64, "items/2.mp4", "s1", "a"),
    "other": SealedFacts(15, "3" * 64, "items/3.mp4", "s1", "b"),
}


def _entry(*segments: tuple[str, str], sha: str = "f" * 64) -> dict[str, Any]:
    return {"item": "j", "sha256": sha, "room_session": "s1", "source": "a",
            "segments": [{"item": i, "sha256": h} for i, h in segments]}


def test_a_joined_entry_must_agree_with_what_was_sealed() -> None:
    def problems(data: dict[str, Any], seq: int = 40) -> str:
        return " | ".join(p.what for p in joined_entry_problems(seq, "j", data, SEALED.get))

    good = _entry(("s1", "1" * 64), ("s2", "2" * 64))
    assert problems(good) == ""  # the control: the same checks pass on a true entry
    assert "sealed with hash" in problems(_entry(("s1", "1" * 64), ("s2", "9" * 64)))
    assert "joined item j is sealed with hash" in problems({**good, "sha256": "e" * 64})
    assert "out of the order" in problems(_entry(("s2", "2" * 64), ("s1", "1" * 64)))
    assert "never sealed" in problems(_entry(("s1", "1" * 64), ("ghost", "4" * 64)))
    assert "not of session s1 source a" in problems(_entry(("s1", "1" * 64), ("other", "3" * 64)))
    assert "sealed after the join" in problems(good, seq=15)
    assert "lists no segments" in problems({**good, "segments": []})
    assert "another item" in problems({**good, "item": "s1"})


def test_every_segment_sealed_must_be_in_the_newest_join() -> None:
    """The join checked is the one of the session's newest products (edge.rooms.product_sets): a
    segment held only by an older, superseded join is on no disc (review 29)."""
    sealed = [(10, "s1"), (20, "s2"), (30, "s3")]
    whole = (40, {"segments": [{"item": "s1"}, {"item": "s2"}, {"item": "s3"}]})
    assert left_out_problems(whole, sealed) == []  # the control: all named
    # A source joined twice (products made again): the newest join alone must hold every one; the
    # older join that held s1 is superseded and proves nothing about the disc.
    newest = (60, {"segments": [{"item": "s2"}, {"item": "s3"}]})
    (problem,) = left_out_problems(newest, sealed)
    assert problem.where == "ledger seq 60 (joined)" and "s1" in problem.what and "after" not in problem.what
    skipped = (40, {"segments": [{"item": "s1"}, {"item": "s3"}]})
    (problem,) = left_out_problems(skipped, sealed)
    assert problem.where == "ledger seq 40 (joined)" and "s2" in problem.what and "after" not in problem.what
    # One sealed after the join (review 28: the next start sealed it) with no set made since: on no disc.
    (problem,) = left_out_problems(whole, [*sealed, (50, "late")])
    assert "late" in problem.what and "1 sealed after this join" in problem.what
    # A newer join that holds it (the products made again from the completed manifest): all named.
    again = (60, {"segments": [{"item": "s1"}, {"item": "s2"}, {"item": "late"}, {"item": "s3"}]})
    assert left_out_problems(again, [*sealed, (50, "late")]) == []


def test_a_segment_sealed_late_stands_where_it_was_recorded() -> None:
    """Review 28: joins follow recording order (run, then index), as the session manifest lists them; a
    segment whose first seal failed (a full disk) is sealed after those recorded after it."""
    sealed = {
        "j": SealedFacts(90, "f" * 64, "items/j.mp4", "s1", "a"),
        "r1-0": SealedFacts(10, "1" * 64, "items/1.mp4", "s1", "a", "run1", 0),
        "r1-1": SealedFacts(50, "2" * 64, "items/2.mp4", "s1", "a", "run1", 1),  # sealed late
        "r1-2": SealedFacts(20, "3" * 64, "items/3.mp4", "s1", "a", "run1", 2),
        "r2-0": SealedFacts(30, "4" * 64, "items/4.mp4", "s1", "a", "run2", 0),
    }

    def problems(*order: str) -> str:
        data = {"item": "j", "sha256": "f" * 64, "room_session": "s1", "source": "a",
                "segments": [{"item": i, "sha256": sealed[i].sha256} for i in order]}
        return " | ".join(p.what for p in joined_entry_problems(100, "j", data, sealed.get))

    assert problems("r1-0", "r1-1", "r1-2", "r2-0") == ""  # recording order
    assert "out of the order" in problems("r1-0", "r1-2", "r1-1", "r2-0")  # a swap within a run
    assert "out of the order" in problems("r2-0", "r1-0", "r1-1", "r1-2")  # runs swapped


async def _session_with_three_segments(store: StationStore, pipeline: IngestPipeline,
                                       watch: LedgerWatch) -> str:
    service = RoomService(rooms_config(lavfi_source("a", audio=True)), store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 3, timeout_s=120)
        await service.stop("xw-1", by="op")
    return session.session


@pytest.mark.usefixtures("ffmpeg")
async def test_a_join_that_left_a_segment_out_is_named_by_verify(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    true_concat = joined_module.concat_list

    def faulty_concat(parts: list[tuple[Path, float | None]]) -> str:
        return true_concat(parts[:-1])  # a joiner that drops the last segment but says it joined all

    monkeypatch.setattr(joined_module, "concat_list", faulty_concat)
    session = await _session_with_three_segments(store, pipeline, watch)
    (entry,) = watch.of("joined", room_session=session)
    report = verify_store(store.layout.root)
    assert report.checked["joined"] == 1
    found = [p for p in report.problems if p.where == f"ledger seq {entry.seq} (joined)"]
    assert len(found) == 1 and "packets, its segments together" in found[0].what, report.problems
    assert [p for p in report.problems if p not in found] == []  # everything else about the store holds


@pytest.mark.usefixtures("ffmpeg")
async def test_a_true_join_verifies_packet_for_packet(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    session = await _session_with_three_segments(store, pipeline, watch)
    assert len(watch.of("joined", room_session=session)) == 1
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    assert report.checked["joined"] == 1
    assert not [n for n in report.notes if "ffprobe was not found" in n]
