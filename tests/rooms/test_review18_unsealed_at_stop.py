"""Review 18: segments ffmpeg recorded but the station could not seal before the session stopped (the
store's disk at its reserve: the pipeline refuses to copy while ffmpeg, writing into the same disk's
capture directory, still has room) are never sealed afterwards, and neither is the session manifest the
stop could not seal. `session_stopped` says `manifest_item: null`; the segments and the signed manifest
stay in the capture directory of a stopped session, which nothing looks at again (RoomService.load
resumes recording sessions only; `edge verify` skips rooms/): once space is back, the last minutes of the
proceeding and its manifest never reach the store, the uplink or the central.

Real ffmpeg, service, pipeline, store and ledger; the full disk is the pipeline's reserve
(min_free_bytes). Control: the segments sealed before the disk filled are sealed and on the ledger.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程"}


def _service(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    return service


async def test_what_a_full_disk_left_unsealed_at_the_stop_is_sealed_once_there_is_space(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    roomy = pipeline.settings
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
        pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)  # the disk is "full"
        await watch.until(lambda: len(watch.of("error", stage="room segment")) >= 3)
        done = await first.stop("xw-1", by="op")
    sealed_before = {e.data["segment"] for e in watch.of("segment_sealed", room_session=session)}
    unsealed = sorted({e.data["segment"] for e in watch.of("error", stage="room segment")} - sealed_before)
    assert len(sealed_before) >= 2 and unsealed  # control: sealed while there was space; then not
    left = sorted(p.name for p in (SessionFiles(store.layout.root).capture_dir / session).rglob("*")
                  if p.is_file() and p.suffix in (".mp4", ".json"))
    assert done["manifest_item"] is None and set(unsealed) <= set(left)
    # Space again (the operator cleared the disk); the agent runs on, or starts again.
    pipeline.settings = roomy
    again = _service(store, pipeline)
    async with running(again):
        try:
            await watch.until(lambda: set(unsealed) <= {
                e.data["segment"] for e in watch.of("segment_sealed", room_session=session)}, timeout_s=20)
        except TimeoutError:
            pytest.fail(f"session {session} stopped on a full disk: {unsealed} and its manifest ({left}) "
                        "stay unsealed in the capture directory once there is space again")
