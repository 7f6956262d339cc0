"""A session stopped on a full disk is finished at the next start (review 18 #8): its leftover segments,
the stop's own manifest (the hash session_stopped names) and a completed manifest listing every segment
are sealed, and its capture directory goes. Real ffmpeg, service, pipeline, store and ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import running
from tests.rooms.test_review18_unsealed_at_stop import FIELDS, _service

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _item_bytes(store: StationStore, item: str) -> bytes:
    record = IngestRepository(store).item(item)
    assert record is not None and record.path is not None
    return (store.layout.root / record.path).read_bytes()


async def test_the_stops_manifest_and_a_completed_one_are_sealed_once_there_is_space(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    roomy = pipeline.settings
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
        pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)
        await watch.until(lambda: len(watch.of("error", stage="room segment")) >= 2)
        done = await first.stop("xw-1", by="op")
    assert done["manifest_item"] is None
    pipeline.settings = roomy
    again = _service(store, pipeline)
    async with running(again):
        def sealed_of(role: str) -> list[str]:
            items = {e.item for e in watch.of("acquired", role=role, room_session=session)}
            return [e.item or "" for e in watch.of("sealed") if e.item in items]
        completed_item = (await watch.until(lambda: sealed_of("session-manifest-completed")))[0]
        await asyncio.wait_for(asyncio.gather(*again.finishing), 30)
    stops = sealed_of("session-manifest")
    assert [hashlib.sha256(_item_bytes(store, item)).hexdigest() for item in stops] == [
        done["manifest_sha256"]], "the stop's own manifest was not sealed (once)"
    completed = json.loads(_item_bytes(store, completed_item))
    listed = [s["item"] for s in completed["sources"][0]["segments"]]
    assert sorted(listed) == sorted(str(e.item) for e in watch.of("segment_sealed", room_session=session))
    assert not (SessionFiles(store.layout.root).capture_dir / session).exists()
