"""Review 21 (#4, #5): finishing a session stopped on a full disk.

* #4: a completion cut short between its steps (its segments sealed, then a crash or the disk full again
  before the completed manifest) never wrote the completed manifest: the next start found nothing left to
  seal and took that as "nothing owed". Now the ledger decides: a segment sealed after session_stopped and
  no completed manifest sealed after it means it is owed.
* #5: a stopped session whose file is lost (deleted, or unreadable) left its leftover segments unsealed for
  ever: only session files were looked at. Now the session is rebuilt from the ledger and its leftovers
  sealed.

Real ffmpeg, service, pipeline, store and ledger; the full disk is the pipeline's free-space reserve.
Controls: the completion that is not cut short (tests/rooms/test_finish_stopped.py), and the session
file kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from edge.custody.ledger import LedgerEntry
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import running
from tests.rooms.test_finish_stopped import _item_bytes
from tests.rooms.test_review18_unsealed_at_stop import FIELDS, _service

pytestmark = pytest.mark.usefixtures("ffmpeg")


async def _stopped_on_a_full_disk(store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch) -> str:
    """A session that sealed some segments, then stopped with the disk full: leftovers and its manifest."""
    roomy = pipeline.settings
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
        pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)
        await watch.until(lambda: len(watch.of("error", stage="room segment")) >= 2)
        done = await first.stop("xw-1", by="op")
    assert done["manifest_item"] is None  # control: the stop did leave its work
    pipeline.settings = roomy
    return session


def _sealed_of(watch: LedgerWatch, role: str, session: str) -> list[str]:
    items = {e.item for e in watch.of("acquired", role=role, room_session=session)}
    return [e.item or "" for e in watch.of("sealed") if e.item in items]


async def _finish(service: RoomService) -> None:
    async with running(service):
        await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*service.finishing), 60)


async def test_a_completion_cut_short_before_its_manifest_is_finished_at_the_next_start(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    session = await _stopped_on_a_full_disk(store, pipeline, watch)
    roomy = pipeline.settings
    stop_manifests: set[str] = set()

    def disk_full_after_the_stops_manifest(entry: LedgerEntry) -> None:
        # The completion's steps: leftovers, the stop's manifest, the completed manifest. The disk fills
        # up again right after the second (a crash at that instant leaves the same ledger).
        if entry.type == "acquired" and entry.data.get("role") == "session-manifest" and entry.item:
            stop_manifests.add(entry.item)
        elif entry.type == "sealed" and entry.item in stop_manifests:
            pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)

    store.ledger.add_listener(disk_full_after_the_stops_manifest)
    await _finish(_service(store, pipeline))
    late = len(watch.of("segment_sealed", room_session=session))
    assert _sealed_of(watch, "session-manifest", session)  # control: cut short after the stop's manifest
    assert _sealed_of(watch, "session-manifest-completed", session) == []
    pipeline.settings = roomy
    store.ledger.remove_listener(disk_full_after_the_stops_manifest)
    await _finish(_service(store, pipeline))
    completed = _sealed_of(watch, "session-manifest-completed", session)
    assert len(completed) == 1, "the completed manifest the cut-short completion owed was never sealed"
    listed = [s["item"] for s in json.loads(_item_bytes(store, completed[0]))["sources"][0]["segments"]]
    assert len(listed) == late == len(watch.of("segment_sealed", room_session=session))
    assert not (SessionFiles(store.layout.root).capture_dir / session).exists()
    # Owed once: a further start seals no second completed manifest.
    await _finish(_service(store, pipeline))
    assert len(_sealed_of(watch, "session-manifest-completed", session)) == 1


@pytest.mark.parametrize("session_file", ["kept", "deleted", "corrupt"])
async def test_a_stopped_sessions_leftovers_are_sealed_even_when_its_file_is_lost(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, session_file: str
) -> None:
    session = await _stopped_on_a_full_disk(store, pipeline, watch)
    files = SessionFiles(store.layout.root)
    leftovers = sorted(p.name for p in (files.capture_dir / session).rglob("seg-*.mp4"))
    assert leftovers  # control: the stop left segments unsealed
    if session_file == "deleted":
        files.path(session).unlink()
    elif session_file == "corrupt":
        files.path(session).write_bytes(b"{not json")
    sealed_before = len(watch.of("segment_sealed", room_session=session))
    await _finish(_service(store, pipeline))
    sealed: list[dict[str, Any]] = [e.data for e in watch.of("segment_sealed", room_session=session)]
    assert len(sealed) - sealed_before >= len(leftovers), (
        f"session file {session_file}: {len(leftovers)} leftover segments, "
        f"{len(sealed) - sealed_before} sealed at the next start")
    assert len(_sealed_of(watch, "session-manifest-completed", session)) == 1
    assert not (files.capture_dir / session).exists()
    if session_file != "kept":
        assert any("rebuilt from the ledger" in e.data.get("reason", "")
                   for e in watch.of("error", room_session=session))
    if session_file == "deleted":
        assert json.loads(files.path(session).read_bytes())["state"] == "stopped"
