"""Review 29 (HIGH): `edge verify` took a sealed segment held by *any* joined file of its source as on the
disc, but the disc carries one set of products: the one made from the session's newest sealed manifest
(edge.rooms.product_sets). A re-made join that drops a segment the stop's join held (a joiner bug, a
manifest read back wrong) was named by nothing, and the disc lacked the segment.

The rule now: the newest set must be complete (every sealed segment of each source in its joined file,
in recording order, hashes as sealed); older sets are superseded (checked by hash, noted, not required
complete); the disc export carries exactly the newest set, and verify checks each export by that rule.
Pure tests of the rule, then the split case end to end (real ffmpeg, service, store, ledger, xorriso).
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import joined, products
from edge.rooms.product_sets import product_sets
from edge.rooms.reconcile import COMPLETED_MANIFEST_ROLE, STOP_MANIFEST_ROLE
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from edge.verify.joined import SealedFacts
from edge.verify.room_products import export_problems, session_set_findings
from edge.verify.station import verify_store
from tests.prerequisites import require_tool
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running, sealed_manifest
from tests.rooms.test_verify_joined import _session_with_three_segments

A, B, C = "seg-a", "seg-b", "seg-c"


def _e(seq: int, type_: str, item: str | None = None, **data: Any) -> LedgerEntry:
    return LedgerEntry(seq, "2026-12-06T00:00:00Z", type_, item, data, "", "")


def _products(seq: int, manifest: str, join: str | None, **more: Any) -> LedgerEntry:
    return _e(seq, EntryType.ROOM_PRODUCTS, None, room_session="S", manifest_item=manifest,
              manifest_sha256=f"h-{manifest}", statement_item=f"st-{seq}", statement_sha256="hs",
              joined=[{"source": "cam", "item": join, "sha256": f"h-{join}", **more}])


def _ledger(*, newest_join: list[str]) -> tuple[list[LedgerEntry], dict[str, tuple[int, dict[str, Any]]]]:
    """The stop's manifest m1 and its products (join j1: A, B); C sealed at the next start, a completed
    manifest m2 and its products (join j2: `newest_join`)."""
    entries = [
        _e(3, EntryType.ACQUIRED, "m1", room_session="S", role=STOP_MANIFEST_ROLE, sha256="h-m1"),
        _e(4, EntryType.SEALED, "m1"),
        _products(10, "m1", "j1"),
        _e(16, EntryType.ACQUIRED, "m2", room_session="S", role=COMPLETED_MANIFEST_ROLE, sha256="h-m2"),
        _e(17, EntryType.SEALED, "m2"),
        _products(20, "m2", "j2"),
    ]
    joins = {"j1": (9, {"source": "cam", "sha256": "h-j1", "segments": [{"item": A}, {"item": B}]}),
             "j2": (19, {"source": "cam", "sha256": "h-j2", "segments": [{"item": i} for i in newest_join]})}
    return entries, joins


SEALED_SEGMENTS = {"cam": [(1, A), (2, B), (15, C)]}  # C sealed at the next start (a full disk at the stop)


def _statement(item: str) -> SealedFacts:
    return SealedFacts(30, "hs", f"items/{item}", "S", None)


def _findings(entries: list[LedgerEntry], joins: dict[str, Any]) -> tuple[str, list[str]]:
    (known,) = product_sets(entries).values()
    problems, notes = session_set_findings(known, joins, SEALED_SEGMENTS, _statement)
    return " | ".join(f"{p.where}: {p.what}" for p in problems), notes


def test_control_the_newest_set_complete_verifies_and_the_older_join_is_superseded() -> None:
    problems, notes = _findings(*_ledger(newest_join=[A, B, C]))
    assert problems == ""
    assert any("1 joined file(s) superseded" in n and "seq 9" in n for n in notes), notes


def test_a_segment_in_an_old_join_but_missing_from_the_newest_one_fails() -> None:
    # The stop's join held A and B; the re-made join (the one on the disc) holds B and C only.
    problems, _ = _findings(*_ledger(newest_join=[B, C]))
    assert "ledger seq 19 (joined)" in problems and A in problems, problems


def test_the_newest_manifest_without_products_is_owed() -> None:
    entries, joins = _ledger(newest_join=[A, B, C])
    problems, notes = _findings(entries[:-1], {"j1": joins["j1"]})  # m2 sealed, its products not made
    assert "has no products made from it" in problems and "m2" in problems, problems
    assert any("superseded" in n for n in notes)
    # None made yet (the stop making them now): owed, a note; nothing the ledger claims is untrue.
    problems, notes = _findings(entries[:2], {})
    assert problems == "" and any("m1" in n and "has no products made from it" in n for n in notes), notes


def test_a_disc_must_carry_the_newest_set_of_its_time() -> None:
    entries, _ = _ledger(newest_join=[A, B, C])
    sets = product_sets(entries)

    def disc(join: str, manifest: str, statement: str) -> LedgerEntry:
        return _e(30, EntryType.EXPORTED, None, room_session="S", files=[
            {"path": "recordings/cam.mp4", "item": join}, {"path": "session-manifest.json", "item": manifest},
            {"path": "statement-相关说明.txt", "item": statement}])

    assert export_problems(disc("j2", "m2", "st-20"), sets["S"], sets["S"]) == ([], [])  # control
    problems, _ = export_problems(disc("j1", "m1", "st-10"), sets["S"], sets["S"])  # the superseded set
    assert len(problems) == 1 and "recordings/cam.mp4: j1 (newest set: j2)" in problems[0].what, problems
    # A disc of the first set, exported before the second was made: right then, superseded now.
    then = product_sets(entries[:3])
    problems, notes = export_problems(disc("j1", "m1", "st-10"), then["S"], sets["S"])
    assert problems == [] and any("export it again" in n for n in notes), notes


async def _products_made_again(store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
                               session_id: str) -> RoomService:
    """Seal a completed manifest of the stopped session (as the next start does after a late segment),
    then start the service: it makes the products owed from that newest manifest (its catch-up)."""
    sessions, _ = SessionFiles(store.layout.root).load()
    (session,) = [s for s in sessions if s.session == session_id]
    item = await sealed_manifest(store, pipeline, session, role=COMPLETED_MANIFEST_ROLE,
                                 name="completed-manifest.json")
    service = RoomService(rooms_config(lavfi_source("a", audio=True)), store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        await watch.until(lambda: len(watch.of("room_products", room_session=session_id)) >= 2,
                          timeout_s=180)
    (made,) = [e for e in watch.of("room_products", room_session=session_id)
               if e.data["manifest_item"] == item]
    assert made.data["statement_item"] and made.data["joined"][0]["item"], made.data  # made in full
    return service


@pytest.mark.parametrize("remade", ["complete", "dropping-first"])
@pytest.mark.usefixtures("ffmpeg")
async def test_the_newest_join_must_hold_every_segment_and_the_disc_carries_it(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch,
    remade: str
) -> None:
    session = await _session_with_three_segments(store, pipeline, watch)
    assert verify_store(store.layout.root).ok  # the stop's products alone
    if remade == "dropping-first":
        true_join = joined.join_source

        async def join_dropping_first(pipeline: IngestPipeline, session: Any, manifest: Any, source: Any,
                                      **options: Any) -> Any:
            return await true_join(pipeline, session, manifest,
                                   {**source, "segments": list(source["segments"])[1:]}, **options)

        monkeypatch.setattr(products, "join_source", join_dropping_first)
    service = await _products_made_again(store, pipeline, watch, session)
    first, newest = watch.of("joined", room_session=session)
    sealed = watch.of("segment_sealed", room_session=session, source="a")
    assert len(first.data["segments"]) == len(sealed)  # the stop's join held every segment
    report = verify_store(store.layout.root)
    found = [p for p in report.problems if p.where == f"ledger seq {newest.seq} (joined)"]
    if remade == "complete":  # the control: the newest set complete passes, the old join superseded
        assert report.ok, report.problems
        assert any("superseded" in n and f"seq {first.seq}" in n for n in report.notes), report.notes
    else:
        assert len(found) == 1 and str(sealed[0].item) in found[0].what, report.problems
    # The disc carries exactly the newest set: its joined file, never the superseded one.
    require_tool("xorriso")
    disc = await service.export(session, by="op")
    disc.path.unlink()
    on_disc = {f.path: f.item for f in disc.files}
    assert on_disc["recordings/a.mp4"] == newest.item != first.item, on_disc
    report = verify_store(store.layout.root)
    assert not [p for p in report.problems if "(exported)" in p.where], report.problems
