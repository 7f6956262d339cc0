"""Review 27: `edge verify` passes a joined file that leaves out a segment the source sealed, as long as
the `joined` entry leaves it out too.

edge.verify.joined.joined_entry_problems checks each segment the entry names (sealed, same hash, same
session and source, in order) and the packet counts of those named; nothing checks that the entry names
every segment the source sealed in the session (its `segment_sealed` entries, which the signed session
manifest lists). A joiner that skips a segment (here: handed the manifest's source with its middle
segment left out, as a bug in edge.rooms.products or join_source would) writes a joined file one second
short, with no gap saying so, and the station verifies clean. The joined file is what goes on the disc.

Control: tests/rooms/test_verify_joined.py::test_a_true_join_verifies_packet_for_packet."""

from __future__ import annotations

from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import joined, products
from edge.verify.station import verify_store
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_verify_joined import _session_with_three_segments


@pytest.mark.usefixtures("ffmpeg")
async def test_a_join_that_names_fewer_segments_than_were_sealed_is_a_problem(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    true_join = joined.join_source

    async def join_skipping_one(pipeline: IngestPipeline, session: Any, manifest: Any, source: Any,
                                **options: Any) -> Any:
        segments = list(source.get("segments", []))
        fewer = {**source, "segments": segments[:1] + segments[2:]}
        return await true_join(pipeline, session, manifest, fewer, **options)

    monkeypatch.setattr(products, "join_source", join_skipping_one)
    session = await _session_with_three_segments(store, pipeline, watch)
    (entry,) = watch.of("joined", room_session=session)
    sealed = watch.of("segment_sealed", room_session=session, source="a")
    # Control: the source sealed more segments than the entry names (the join left one out).
    assert len(entry.data["segments"]) == len(sealed) - 1 >= 2, (entry.data["segments"], len(sealed))
    report = verify_store(store.layout.root)
    # FAILS today: verify finds nothing wrong with the joined file.
    assert any(p.where == f"ledger seq {entry.seq} (joined)" for p in report.problems), report.problems
